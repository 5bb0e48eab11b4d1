"""gwctl calls: live calls, Kamailio's dialogs (dlg.list) joined with rtpengine's
sessions (every GW_RTPENGINE), and sessions no dialog here owns."""
from __future__ import annotations

import argparse
import sys
import time

from gw import cnfilter
from gw.ctl.common import DOCTOR_PREFIX, GwctlError
from gw.ctl.kamailio import Kamailio
from gw.ctl.output import age, media_text, print_json, table
from kemi.ng import NgClient, NgError
from kemi.settings import Settings

HELP = "live calls (Kamailio dialogs + rtpengine sessions)"
DLG_STATES = {"1": "unconfirmed", "2": "early", "3": "answered", "4": "confirmed", "5": "ended"}


def _leg(tag: dict) -> dict:
    medias = tag.get("medias") or []
    first = medias[0] if medias else {}
    streams = first.get("streams") or []
    rtp = streams[0] if streams else {}
    endpoint = rtp.get("endpoint") or {}
    protocol = first.get("protocol", "")
    return {
        "tag": tag.get("tag", ""),
        "side": "phone" if "SAVP" in protocol else "pbx" if protocol else "?",
        "protocol": protocol,
        "peer": f"{endpoint['address']}:{endpoint['port']}" if endpoint.get("address") else "",
        "local": f"{rtp.get('local address', '')}:{rtp.get('local port', '')}",
        "packets": sum(int((s.get("stats") or {}).get("packets", 0)) for m in medias
                       for s in (m.get("streams") or [])),
    }


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
            legs = [_leg(t) for t in (q.get("tags") or {}).values() if isinstance(t, dict)]
            sessions[cid] = {"engine": f"udp:{engine}", "created": q.get("created"),
                             "legs": sorted(legs, key=lambda leg: leg["side"] != "phone")}
    return sessions, errors


def dialogs(kam: Kamailio) -> list[dict]:
    return [d for d in kam.rpc("dlg.list") if isinstance(d, dict)]


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
    ws = str(cfg.ws_listen)
    for d in dlgs:
        cid = d.get("call-id", "")
        seen.add(cid)
        caller = d.get("caller") if isinstance(d.get("caller"), dict) else {}
        start = int(d.get("start_ts") or 0) or int(d.get("init_ts") or 0)
        row = {
            "call_id": cid,
            "direction": "outbound" if str(caller.get("socket", "")).endswith(ws) else "inbound",
            "state": DLG_STATES.get(str(d.get("state")), str(d.get("state"))),
            "from": d.get("from_uri", ""),
            "to": d.get("to_uri", ""),
            "age_s": int(now - start) if start else None,
            "media": sessions.get(cid),
            "note": "" if cid in sessions else "no rtpengine session",
        }
        rows.append(row)
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
