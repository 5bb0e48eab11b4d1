"""pbx: GW_PBX answers SIP OPTIONS over UDP."""
from __future__ import annotations

from gw.ctl.doctor.base import Check, fail, ok
from gw.ctl.doctor.sip import sip_options
from kemi.settings import Settings


def pbx_check(cfg: Settings) -> dict:
    target = f"udp:{cfg.pbx}"
    status, why = sip_options(cfg.pbx.host, cfg.pbx.port, timeout=2.0)
    if status is None:
        return fail("pbx", f"GW_PBX={cfg.pbx} does not answer SIP OPTIONS over UDP: {why}",
                    "Check the PBX runs and listens on UDP there (Asterisk: a pjsip transport with "
                    "protocol=udp and that bind address; Genesys SIP Server: its UDP listener), that "
                    "GW_PBX is right, and that no firewall drops UDP between gateway and PBX. Until then "
                    "REGISTERs and calls from agents time out.", target=target)
    return ok("pbx", f"answers OPTIONS: {status}", target=target)


CHECK = Check("pbx", lambda ctx, engine: pbx_check(ctx.cfg))
