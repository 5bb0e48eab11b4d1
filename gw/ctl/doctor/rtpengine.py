"""rtpengine: each GW_RTPENGINE answers an ng ping. The other per-rtpengine checks
run after it (gw.ctl.doctor runs it first and hands its answer to them)."""
from __future__ import annotations

from gw.ctl.doctor.base import Check, fail, ok
from kemi.ng import NgClient, NgError
from kemi.settings import HostPort


def rtpengine_check(engine: HostPort) -> dict:
    ng = NgClient(engine.host, engine.port, timeout=1.0)
    target = f"udp:{engine}"
    try:
        pong = ng.request({"command": "ping"}).get("result") == "pong"
    except (NgError, OSError) as exc:
        return fail("rtpengine", f"no answer to an ng ping: {exc}",
                    f"Start rtpengine (docker compose up -d rtpengine / systemctl start rtpengine) with "
                    f"listen-ng={engine}, or fix GW_RTPENGINE. Until it answers, calls get "
                    "503 Media Relay Unavailable.", target=target)
    if not pong:
        return fail("rtpengine", "answered ng ping without pong", "Is that port really rtpengine's "
                    "listen-ng? Fix GW_RTPENGINE.", target=target)
    sessions = None
    try:
        cur = ng.statistics().get("statistics", {}).get("currentstatistics", {})
        sessions = int(cur.get("sessionsown", 0)) + int(cur.get("sessionsforeign", 0))
    except (NgError, OSError, ValueError):
        pass
    detail = "answers ng ping" + (f"; {sessions} session(s)" if sessions is not None else "")
    return ok("rtpengine", detail, target=target, data={"sessions": sessions})


CHECK = Check("rtpengine", lambda ctx, engine: engine.up, per_engine=True)
