#!/usr/bin/env python3
"""Container HEALTHCHECK: GET http://<GW_WS_LISTEN>/health, exit 0 on HTTP 200.

Stdlib only; installed as /usr/local/bin/gateway-healthcheck by the Dockerfile.
A wildcard listen address (0.0.0.0 / ::) is probed on loopback.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def health_url(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"GW_WS_LISTEN={listen!r} is not HOST:PORT")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/health"


def main() -> int:
    try:
        url = health_url(os.environ.get("GW_WS_LISTEN", "127.0.0.1:8080"))
    except ValueError as exc:
        print(f"unhealthy: {exc}")
        return 1
    timeout = float(os.environ.get("GW_HEALTH_TIMEOUT", "3"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(512).decode("utf-8", "replace").strip()
            print(f"healthy: {url} {resp.status} {body}")
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} HTTP {exc.code} {exc.read(512).decode('utf-8', 'replace').strip()}")
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url} {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
