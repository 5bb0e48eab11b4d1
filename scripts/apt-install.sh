#!/usr/bin/env bash
# apt-get install the named Debian packages that are not installed yet (run as root).
# Usage: scripts/apt-install.sh WHO PACKAGE...   (WHO prefixes the one log line)
# Debian's postinst scripts must not start the daemons they ship (redis, nginx,
# docker...): the gateway and its tests run their own, so a policy-rc.d that
# forbids starts is in place during the install (an existing one is kept).
set -euo pipefail
who=$1
shift
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
echo "$who: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
own_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}"
