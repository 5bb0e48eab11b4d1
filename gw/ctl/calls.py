"""gwctl calls: live calls, Kamailio's dialogs (dlg.list) joined with rtpengine's
sessions (every GW_RTPENGINE), and sessions no dialog here owns; per leg the
packets, loss, jitter and MOS so far (kemi/quality.py reads rtpengine's query)."""
from __future__ import annotations

import argparse
import sys
import time

from gw import cnfilter
from gw.ctl.common import DOCTOR_PREFIX, GwctlError
from gw.ctl.kamailio import Kamailio
from gw.ctl.output import age, media_text, print_json, table
from kemi import quality
from kemi.ng import NgClient, NgError
from kemi.settings import Settings

HELP = "live calls (Kamailio dialogs + rtpengine sessions; per leg loss, jitter, MOS)"
DLG_STATES = {"1": "unconfirmed", "2": "early", "3": "answered", "4": "confirmed", "5": "ended"}


def leg_row(leg: quality.Leg, came: quality.Figures) -> dict:
    """One leg as gwctl shows it, with the figures of what came from it (as the
    other end reported it over RTCP; None where rtpengine measured nothing)."""
    return {
        "tag": leg.tag, "side": leg.side, "protocol": leg.protocol, "codec": leg.codec,
        "peer": leg.peer, "local": leg.local, "packets": leg.packets,
        "loss": came.loss, "jitter_ms": came.jitter_ms, "mos": came.mos,
    }


def session(q: dict, engine: str) -> dict:
    """An rtpengine query reply as gwctl calls shows it."""
    call = quality.parse(q)
    legs = [leg_row(leg, call.figures(leg.side)) for leg in call.legs]
    return {"engine": engine, "created": q.get("created"), "mos": call.mos,
            "legs": sorted(legs, key=lambda leg: leg["side"] != "phone")}


def media_sessions(cfg: Settings) -> tuple[dict[str, dict], list[str]]:
    """call-id -> rtpengine session summary, over every GW_RTPENGINE; and errors."""
    sessions: dict[str, dict] = {}
    errors = []
    for engine in cfg.rtpengines:
        ng = NgClient(engine.host, engine.port, timeout=2.0)
        try:
            ids = ng.list_calls()
        except (NgError, OSError) as exc:
            errors.append(f"rtpengine udp:{engine}: {exc}")
            continue
        for cid in ids:
            if cid.startswith((DOCTOR_PREFIX, cnfilter.PROBE_PREFIX)):
                continue
            try:
                q = ng.query(cid)
            except (NgError, OSError):
                continue          # ended meanwhile
            sessions[cid] = session(q, f"udp:{engine}")
    return sessions, errors


def dialogs(kam: Kamailio) -> list[dict]:
    return [d for d in kam.rpc("dlg.list") if isinstance(d, dict)]


def dialog_row(cfg: Settings, d: dict, now: float) -> dict:
    """One of Kamailio's dialogs (dlg.list) as gwctl shows it."""
    caller = d.get("caller") if isinstance(d.get("caller"), dict) else {}
    start = int(d.get("start_ts") or 0) or int(d.get("init_ts") or 0)
    return {
        "call_id": d.get("call-id", ""),
        "direction": "outbound" if str(caller.get("socket", "")).endswith(str(cfg.ws_listen)) else "inbound",
        "state": DLG_STATES.get(str(d.get("state")), str(d.get("state"))),
        "from": d.get("from_uri", ""),
        "to": d.get("to_uri", ""),
        "age_s": int(now - start) if start else None,
    }


def live_calls(cfg: Settings, kam: Kamailio) -> dict:
    sessions, errors = media_sessions(cfg)
    try:
        dlgs = dialogs(kam)
    except GwctlError as exc:
        errors.append(f"kamailio: {exc}")
        dlgs = []
    now = time.time()
    rows = []
    seen = set()
    for d in dlgs:
        cid = d.get("call-id", "")
        seen.add(cid)
        rows.append({**dialog_row(cfg, d, now), "media": sessions.get(cid),
                     "note": "" if cid in sessions else "no rtpengine session"})
    for cid, sess in sessions.items():
        if cid in seen:
            continue
        created = sess.get("created")
        rows.append({"call_id": cid, "direction": "", "state": "", "from": "", "to": "",
                     "age_s": int(now - created) if created else None, "media": sess,
                     "note": "media only: no dialog on this node (another node's call, or a leaked session)"})
    return {"calls": rows, "errors": errors}


def command(cfg: Settings, kam: Kamailio, args: argparse.Namespace, env: dict[str, str]) -> int:
    result = live_calls(cfg, kam)
    if args.json:
        print_json(result)
    else:
        rows = [{**c, "age": age(c["age_s"]) if c["age_s"] is not None else None,
                 "media_text": media_text(c["media"])} for c in result["calls"]]
        print(table(rows, [("CALL-ID", "call_id"), ("DIR", "direction"), ("STATE", "state"),
                           ("FROM", "from"), ("TO", "to"), ("AGE", "age"), ("MEDIA", "media_text"),
                           ("NOTE", "note")]))
        print(f"{len(rows)} call(s)")
        for err in result["errors"]:
            print(f"warning: {err}", file=sys.stderr)
    return 1 if result["errors"] else 0
