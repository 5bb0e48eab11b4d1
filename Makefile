# Two commands for a newcomer on Debian 12 (as root): `make run` and `make test`.
# Both install what is missing first (scripts/install-deps.sh).
PY := .venv/bin/python

.PHONY: run test unit deps bench-deps agent agent-package bench image deploy-test clean

deps:
	@scripts/install-deps.sh

# deps plus what only the benchmark needs (Janus, the peer of the WebRTC media section)
bench-deps:
	@scripts/install-deps.sh --bench

run: deps
	$(PY) -m gw.run

# The connector from this tree (installed editable into .venv), for developers;
# its certificate stays in .run/agent unless AGENT_CERT_DIR says otherwise.
agent: deps
	AGENT_CERT_DIR="$${AGENT_CERT_DIR:-$(CURDIR)/.run/agent}" .venv/bin/gateway-agent

# What agents' desktops get: dist/webrtc_gateway_agent-<version>-py3-none-any.whl,
# the JsSIP bundle built into it (agent/build.py; agent/README.md for the rollout).
agent-package: deps
	$(PY) agent/build.py wheel

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest tests/unit -q

# Capacity benchmark, KEMI vs a native-cfg baseline (not part of make test);
# BENCH_QUICK=1 for a ~3 minute run. Writes bench/RESULTS.md.
bench: bench-deps
	$(PY) -m bench

# The production images without an image registry or PyPI in the build (README:
# Production): webrtc-sip-gateway:latest and webrtc-sip-gateway-rtpengine:latest.
image: deps
	@scripts/install-docker.sh
	@scripts/build-images.sh

# deploy/compose.yaml brought up for real and checked (not part of make test;
# README says when to run it). Logs and figures: tests/_artifacts/deploy-stack/.
deploy-test: image
	$(PY) -m pytest -v -p no:cacheprovider tests/deploy_stack/check_image_run.py \
	  tests/deploy_stack/check_compose_stack.py $(PYTEST_ARGS)

clean:
	rm -rf .run tests/_artifacts .pytest_cache dist
