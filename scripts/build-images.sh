#!/usr/bin/env bash
# `make image`: webrtc-sip-gateway:latest (Dockerfile) and
# webrtc-sip-gateway-rtpengine:latest (deploy/rtpengine/Dockerfile) on a host
# with Docker but without an image registry, and without PyPI inside builds:
#   1. debian:12-slim: pulled, or made with debootstrap when no registry answers;
#   2. deploy/wheelhouse: the hash-pinned wheels of deploy/requirements.txt (pip, on the host);
#   3. both images with the classic builder, RUN steps on the host's network
#      (apt inside the build reaches Debian's mirrors; a daemon started by
#      scripts/install-docker.sh has no bridge network).
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0
PY=${PY:-.venv/bin/python}

step() {  # step NAME COMMAND...: run it, print how long it took
  local name=$1 t0=$SECONDS
  shift
  "$@"
  echo "image: $name: $((SECONDS - t0)) s"
}

build() {  # build TAG CONTEXT [DOCKERFILE]
  local log
  log=$(mktemp)
  if ! docker build --network host -t "$1" -f "${3:-$2/Dockerfile}" "$2" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -f "$log"
    echo "image: docker build of $1 failed (the last lines of its output are above)" >&2
    return 1
  fi
  rm -f "$log"
  echo "image: $1 $(docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}')"
}

t0=$SECONDS
step "base debian:12-slim" scripts/debian-base.sh debian:12-slim
step "wheelhouse" "$PY" scripts/wheelhouse.py
step "webrtc-sip-gateway:latest" build webrtc-sip-gateway:latest . Dockerfile
step "webrtc-sip-gateway-rtpengine:latest" build webrtc-sip-gateway-rtpengine:latest deploy/rtpengine
echo "image: done in $((SECONDS - t0)) s"
