#!/usr/bin/env bash
# What the agent's side needs on Debian 12 (run as root; scripts/install-deps.sh
# calls it): Node.js + npm to build the phone bundle, chromium (headless, for
# the tests) with a font, then the JsSIP bundle itself from the npm registry
# (agent/web/package-lock.json; never a CDN).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null | grep -q "install ok installed" \
  || need+=(fonts-dejavu-core)
if ((${#need[@]})); then
  echo "agent/install.sh: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# JsSIP and the bundler, exactly as locked; again only when the lock changed.
cd web
stamp=node_modules/.agent-lock-$(sha1sum package-lock.json | cut -c1-12)
if [ ! -f "$stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi
# The bundle the bridge serves: rebuilt when a source or the lock is newer.
if [ ! -f dist/phone.js ] || [ -n "$(find src package-lock.json -newer dist/phone.js -print -quit)" ]; then
  npm run --silent build
fi
