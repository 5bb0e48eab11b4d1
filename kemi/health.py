"""What /health and the scrape-time metrics report, read from the dependencies
themselves. Pure Python (no Kamailio): app.py only serves the answers.
"""
from __future__ import annotations

from typing import Iterable, Optional

from kemi.ng import NgClient, NgError
from kemi.store import BindingStore, StoreError

# nginx sends this header with every request it passes, set by nginx and never
# the client's (deploy/nginx/gateway.conf): "full" for the monitoring network,
# "brief" for the rest of the internet. Without it (loopback, Prometheus,
# gwctl, the container's healthcheck) /health is answered in full.
VIEW_HEADER = "X-Gateway-Health"


def report(store: BindingStore, engines: Iterable[NgClient], node: str,
           view: str = "", pbx: Optional[dict[str, bool]] = None) -> tuple[bool, dict]:
    """(all up?, the /health body): every dependency by name and this node's
    address, or only {"status": ...} when the view is anything but full.
    `pbx`: each GW_PBX entry, up or not, as dispatcher's probes see it."""
    deps = {"redis": "up" if store.ping() else "down"}
    for engine in engines:
        deps[f"rtpengine udp:{engine.addr[0]}:{engine.addr[1]}"] = "up" if engine.ping() else "down"
    for name, up in (pbx or {}).items():
        deps[f"pbx {name}"] = "up" if up else "down"
    ok = verdict(deps)
    status = "up" if ok else "down"
    if view.strip().lower() not in ("", "full"):
        return ok, {"status": status}
    return ok, {"dependencies": deps, "node": node, "status": status}


def verdict(deps: dict[str, str]) -> bool:
    """Up: Redis and every rtpengine up, and at least one PBX ("pbx HOST:PORT"):
    with one of several PBXs down every call still goes through the others."""
    pbx = [v == "up" for k, v in deps.items() if k.startswith("pbx ")]
    own = [v == "up" for k, v in deps.items() if not k.startswith("pbx ")]
    return all(own) and (not pbx or any(pbx))


def registrations(store: BindingStore) -> Optional[int]:
    try:
        return store.count()
    except StoreError:
        return None


def rtpengine_stats(engines: Iterable[NgClient]) -> Optional[dict]:
    """Summed over the engines that answer; None when none does."""
    total: dict = {}
    for engine in engines:
        try:
            stats = engine.statistics().get("statistics", {})
        except (NgError, OSError):
            continue
        for section in ("currentstatistics", "totalstatistics"):
            dst = total.setdefault(section, {})
            for k, v in stats.get(section, {}).items():
                if isinstance(v, int):
                    dst[k] = dst.get(k, 0) + v
    return total or None


def http_refusal(method: str, path: str) -> Optional[tuple[int, str, dict]]:
    """(code, reason, JSON body) for an HTTP request the gateway refuses; None
    for GET/HEAD of /metrics and /health."""
    if path == "/turn":
        return 404, "Not Found", {"error": "no TURN credentials here: an agent gets them in "
                                           "the X-TURN header of the 200 OK to its REGISTER"}
    if path not in ("/metrics", "/health"):
        return 404, "Not Found", {"error": f"unknown path {path}"}
    if method not in ("GET", "HEAD"):
        return 405, "Method Not Allowed", {"error": f"{method} not allowed on {path}"}
    return None
