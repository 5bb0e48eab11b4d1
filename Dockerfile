# WebRTC<->SIP gateway: Kamailio 5.6 + KEMI (Python) app. rtpengine, Redis,
# nginx (WSS), coturn and the PBX run as separate services (deploy/compose.yaml).
#
#   docker build -t webrtc-sip-gateway .     # with an image registry and PyPI
#   make image                               # without either (README: Production)
#   docker run --network host --env-file deploy/.env webrtc-sip-gateway
#
# No `# syntax=` line and no BuildKit-only flags: the classic builder (Debian's
# docker.io, no buildx) and an offline BuildKit both build this file as it is.

# --- Python packages Debian does not ship (pyproject.toml dependencies) -------
# Hash-pinned in deploy/requirements.txt. `make image` fills deploy/wheelhouse on
# the host (no PyPI inside a build there); when it is empty, pip downloads the
# same pinned files here.
FROM debian:12-slim AS pydeps
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/requirements.txt /tmp/requirements.txt
COPY deploy/wheelhouse/ /tmp/wheelhouse/
RUN if ! ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then \
      pip3 download --no-cache-dir --no-deps --only-binary=:all: --require-hashes \
        -r /tmp/requirements.txt -d /tmp/wheelhouse; \
    fi \
 && pip3 install --no-cache-dir --no-index --find-links /tmp/wheelhouse --no-deps \
      --only-binary=:all: --require-hashes --target /opt/pydeps -r /tmp/requirements.txt

# --- runtime -------------------------------------------------------------------
FROM debian:12-slim
ARG DEBIAN_FRONTEND=noninteractive
# The gateway's user, with fixed ids made before the kamailio package (whose
# postinst keeps an existing system user): compose mounts the tmpfs
# /run/gateway owned by these ids (Docker gives a tmpfs root ownership).
ARG GW_UID=999
ARG GW_GID=999
RUN groupadd --system --gid "${GW_GID}" kamailio \
 && useradd --system --uid "${GW_UID}" --gid kamailio --home-dir /run/kamailio \
      --shell /usr/sbin/nologin --comment "Kamailio SIP Server" kamailio
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      kamailio \
      kamailio-python3-modules \
      kamailio-websocket-modules \
      kamailio-tls-modules \
      kamailio-redis-modules \
      kamailio-extra-modules \
      kamailio-utils-modules \
      python3 \
      python3-redis \
      python3-prometheus-client \
      ca-certificates \
      netbase \
 && rm -rf /var/lib/apt/lists/*

# Debian's python3 (the interpreter Kamailio's app_python3 embeds) searches
# /usr/local/lib/python3.11/dist-packages.
COPY --from=pydeps /opt/pydeps/ /usr/local/lib/python3.11/dist-packages/

RUN test "$(id -u kamailio):$(id -g kamailio)" = "${GW_UID}:${GW_GID}" \
 && install -d -o kamailio -g kamailio -m 0750 /run/gateway /run/kamailio

WORKDIR /opt/gateway
COPY kamailio.cfg ./
COPY kemi/ ./kemi/
COPY gw/ ./gw/
COPY deploy/gateway-healthcheck.py /usr/local/bin/gateway-healthcheck
# gwctl, the on-call tool (gw/ctl/): docker compose exec gateway gwctl doctor
RUN printf '#!/bin/sh\nPYTHONPATH=/opt/gateway exec python3 -m gw.ctl "$@"\n' > /usr/local/bin/gwctl \
 && chmod 0755 /usr/local/bin/gwctl /usr/local/bin/gateway-healthcheck

# Fail the build, not the first call, when an import is missing.
RUN python3 -c "import bencode, redis, prometheus_client, kemi.turn, kemi.settings, gw.run, gw.ctl"

# The product's interface: GW_* settings (see README). Defaults suit host
# networking next to rtpengine/Redis on the same machine; compose overrides them.
# GW_MAX_AGENTS sizes Kamailio (shared memory, connections, open files: README
# "Capacity"); the container needs an open-files limit to match (compose ulimits).
ENV GW_WS_LISTEN=127.0.0.1:8080 \
    GW_SIP_LISTEN=127.0.0.1:5070 \
    GW_PBX=127.0.0.1:5060 \
    GW_REDIS_URL=redis://127.0.0.1:6379/0 \
    GW_RTPENGINE=udp:127.0.0.1:2223 \
    GW_MEDIA_IP=127.0.0.1 \
    GW_MEDIA_PORTS=10000-20000 \
    GW_MAX_AGENTS=10000 \
    GW_RUN_DIR=/run/gateway \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER kamailio

# 8080: SIP over WebSocket (plain ws, behind nginx WSS) + HTTP /metrics /health
# 5070: SIP toward the PBX (UDP and TCP)
EXPOSE 8080/tcp 5070/udp 5070/tcp

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["gateway-healthcheck"]

STOPSIGNAL SIGTERM
CMD ["python3", "-m", "gw.run"]
