# Two commands for a newcomer on Debian 12 (as root): `make run` and `make test`.
# Both install what is missing first (scripts/install-deps.sh).
PY := .venv/bin/python

.PHONY: run test unit deps agent bench clean

deps:
	@scripts/install-deps.sh

run: deps
	$(PY) -m gw.run

agent: deps
	$(PY) -m agent --open

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest tests/unit -q

# Capacity benchmark, KEMI vs a native-cfg baseline (not part of make test);
# BENCH_QUICK=1 for a ~3 minute run. Writes bench/RESULTS.md.
bench: deps
	$(PY) -m bench

clean:
	rm -rf .run tests/_artifacts .pytest_cache
