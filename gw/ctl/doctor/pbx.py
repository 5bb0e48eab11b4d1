"""pbx: each GW_PBX entry answers SIP OPTIONS over UDP; with several, what the
gateway's own probes (Kamailio's dispatcher, `dispatcher.list`) say of each."""
from __future__ import annotations

from typing import Any, Optional

from gw.ctl.common import GwctlError
from gw.ctl.doctor.base import Check, Context, fail, ok, warn
from gw.ctl.doctor.sip import sip_options
from gw.ctl.kamailio import Kamailio
from kemi.settings import HostPort, Settings, pbx_uri

FIX = ("Check the PBX runs and listens on UDP there (Asterisk: a pjsip transport with "
       "protocol=udp and that bind address; Genesys SIP Server: its UDP listener), that "
       "GW_PBX is right, and that no firewall drops UDP between gateway and PBX.")
Answer = tuple[Optional[str], str]   # sip_options: (status line or None, why)
# dispatcher.list FLAGS: the state letter, then P (probed) or X (not probed)
STATES = {"A": "up", "T": "up, one probe failed", "I": "down", "D": "disabled"}


def pbx_check(cfg: Settings, pbx: Optional[HostPort] = None, others_up: bool = False,
              probes: Optional[str] = None, answer: Optional[Answer] = None) -> dict:
    """One PBX (the first of GW_PBX unless given). others_up: another entry answers,
    so this one being dark is a warning; probes: the gateway's view of it; answer:
    its answer to OPTIONS when already asked."""
    pbx = pbx or cfg.pbx
    target = f"udp:{pbx}"
    seen = f"; the gateway's probes: {probes}" if probes else ""
    status, why = answer or sip_options(pbx.host, pbx.port, timeout=2.0)
    if status is None:
        detail = f"GW_PBX={pbx} does not answer SIP OPTIONS over UDP: {why}{seen}"
        if others_up:
            return warn("pbx", detail, f"{FIX} Meanwhile REGISTERs and calls go to the other PBXs.",
                        target=target, data={"probes": probes})
        return fail("pbx", detail, f"{FIX} Until then REGISTERs and calls from agents time out.",
                    target=target, data={"probes": probes})
    return ok("pbx", f"answers OPTIONS: {status}{seen}", target=target, data={"probes": probes})


def pbx_checks(cfg: Settings, kam: Kamailio) -> list[dict]:
    """One result per GW_PBX entry, in priority order."""
    if len(cfg.pbxs) == 1:
        return [pbx_check(cfg)]   # a lone PBX is not probed by the gateway
    probes = dispatcher_states(kam)
    answers = {p: sip_options(p.host, p.port, timeout=2.0) for p in cfg.pbxs}
    answering = {p for p, (status, _) in answers.items() if status is not None}
    return [pbx_check(cfg, p, bool(answering - {p}), probes.get(pbx_uri(p)), answers[p])
            for p in cfg.pbxs]


def dispatcher_states(kam: Kamailio) -> dict[str, str]:
    """{destination URI: 'up' | 'down' | ...} from Kamailio's dispatcher.list; {}
    when its control socket does not answer."""
    try:
        reply = kam.rpc("dispatcher.list")
    except GwctlError:
        return {}
    sets = _as_list((reply[0] if reply and isinstance(reply[0], dict) else {}).get("RECORDS", {}))
    out = {}
    for record in sets:
        for s in _as_list(record.get("SET", {}) if isinstance(record, dict) else {}):
            for dest in _as_list(s.get("TARGETS", {}).get("DEST", []) if isinstance(s, dict) else []):
                if isinstance(dest, dict) and dest.get("URI"):
                    flags = str(dest.get("FLAGS", "?"))
                    out[str(dest["URI"])] = f"{STATES.get(flags[:1], 'unknown')} ({flags})"
    return out


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _run(ctx: Context, engine: object) -> list[dict]:
    return pbx_checks(ctx.cfg, ctx.kam)


CHECK = Check("pbx", _run)
