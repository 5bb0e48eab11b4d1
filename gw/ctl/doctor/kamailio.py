"""kamailio: the gateway answers SIP OPTIONS at GW_SIP_LISTEN, and its control
socket answers (gwctl calls/ws need it)."""
from __future__ import annotations

from gw.ctl.common import GwctlError
from gw.ctl.doctor.base import Check, fail, ok, warn
from gw.ctl.doctor.sip import sip_options
from gw.ctl.kamailio import Kamailio
from kemi.settings import Settings


def kamailio_check(cfg: Settings, kam: Kamailio) -> dict:
    target = f"udp:{cfg.sip_listen}"
    status, why = sip_options(cfg.sip_listen.host, cfg.sip_listen.port, timeout=2.0)
    if status is None:
        return fail("kamailio", f"the gateway does not answer SIP OPTIONS at {cfg.sip_listen}: {why}",
                    "Start the gateway (make run / docker compose up -d gateway) and read its log; "
                    "GW_SIP_LISTEN must be the address it listens on.", target=target)
    try:
        up = kam.rpc("core.uptime")
        uptime = up[0].get("uptime") if up and isinstance(up[0], dict) else "?"
    except GwctlError as exc:
        return warn("kamailio", f"answers OPTIONS ({status}), but its control socket does not: {exc}",
                    "gwctl calls/ws need Kamailio's ctl socket: pass --ctl or set GW_RUN_DIR as for "
                    "the gateway.", target=target)
    return ok("kamailio", f"answers OPTIONS ({status}); up {uptime}s", target=target)


CHECK = Check("kamailio", lambda ctx, engine: kamailio_check(ctx.cfg, ctx.kam))
