#!/usr/bin/env bash
# Install everything the gateway and its tests need on Debian 12 (run as root).
# Idempotent: does nothing that is already done.
#   scripts/install-deps.sh           the gateway, its tests and the agent
#   scripts/install-deps.sh --bench   also what only `make bench` needs (Janus, the peer it
#                                     measures the gateway against)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  kamailio kamailio-python3-modules kamailio-websocket-modules kamailio-tls-modules
  kamailio-redis-modules kamailio-extra-modules kamailio-utils-modules
  rtpengine-daemon redis-server sip-tester
  python3 python3-venv python3-redis python3-prometheus-client
  iproute2 nftables nginx coturn prometheus openssl redis-sentinel python3-dev
)
# make bench's WebRTC media section runs the same calls through Janus (SIP plugin).
# python -m bench.icount (instructions per call, issue 14) runs Kamailio under valgrind.
BENCH_APT_PACKAGES=(janus valgrind)
case "${1:-}" in
  --bench) APT_PACKAGES+=("${BENCH_APT_PACKAGES[@]}") ;;
  "") ;;
  *) echo "install-deps: unknown option $1 (expected --bench)" >&2; exit 2 ;;
esac

scripts/apt-install.sh install-deps "${APT_PACKAGES[@]}"

# The venv is built on Debian's /usr/bin/python3 (the interpreter Kamailio embeds),
# with its site packages visible (python3-redis, python3-prometheus-client), so the
# KEMI app can add it to its path for what Debian does not package (bencode.py).
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
# The agent's connector (agent/pyproject.toml, the gateway-agent command) is its
# own distribution: installed editable too, so `make agent` runs this tree.
stamp=.venv/.deps-$(cat pyproject.toml agent/pyproject.toml deploy/requirements.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  # The gateway's own packages at the image's hash-pinned versions first, so that
  # make run, the tests and the image (make image) run the same code.
  .venv/bin/pip install -q --disable-pip-version-check --require-hashes -r deploy/requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,agent]' -e ./agent
  touch "$stamp"
fi

# The agent's web phone: Node.js, chromium (tests), certutil and the JsSIP bundle.
agent/install.sh

# The connector's dependencies as wheels: the tests install the agent wheel into a
# fresh venv from here with pip alone, as an agent's PC would, without the network.
wheelhouse=.venv/wheelhouse-agent
stamp=$wheelhouse/.deps-$(sha1sum agent/pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  rm -rf "$wheelhouse"
  .venv/bin/python agent/build.py wheelhouse --dest "$wheelhouse"
  touch "$stamp"
fi
