#!/usr/bin/env bash
# What the agent's side needs on a developer's or CI's Debian 12 (run as root;
# scripts/install-deps.sh calls it): Node.js + npm to build the phone bundle,
# chromium (headless, for the tests) with a font, libnss3-tools (certutil: the
# Linux trust store `gateway-agent trust-cert` writes, tested for real), then the
# JsSIP bundle itself from the npm registry (agent/web/package-lock.json; never a
# CDN) into agent/gateway_agent/static/.
# An agent's PC needs none of this: it installs the wheel (`make agent-package`).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null | grep -q "install ok installed" \
  || need+=(fonts-dejavu-core)
if ((${#need[@]})); then
  echo "agent/install.sh: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# JsSIP and esbuild exactly as locked (npm ci only when the lock changed), and
# the bundle when a source or the lock is newer than it.
/usr/bin/python3 build.py bundle
