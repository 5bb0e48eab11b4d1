"""gwctl call CALL-ID: one call as the rtpengine that holds it sees it (asked
in GW_RTPENGINE order until one knows the call): each leg's protocol, codec,
the address its media comes from and rtpengine's own, crypto suite and
packets, with the figures of what came from that leg so far (loss, jitter,
MOS from RTCP, kemi/quality.py), and the call's dialog on this node if any."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Optional

from gw.ctl.calls import dialog_row, dialogs
from gw.ctl.common import GwctlError
from gw.ctl.kamailio import Kamailio
from gw.ctl.output import age, figures_text, print_json, table
from kemi import quality
from kemi.ng import NgClient, NgError
from kemi.settings import Settings

HELP = "one call: its legs, addresses, codecs and quality figures (rtpengine query)"
UNKNOWN = "Unknown call-id"          # rtpengine's error-reason for a call it does not hold


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("call", parents=[common], help=HELP)
    c.add_argument("call_id", help="the call's Call-ID (as `gwctl calls` lists it)")


def find(cfg: Settings, call_id: str) -> tuple[Optional[str], Optional[dict], list[str]]:
    """(engine, query reply) from the first GW_RTPENGINE that holds the call, and
    the engines that could not say."""
    errors = []
    for engine in cfg.rtpengines:
        try:
            return f"udp:{engine}", NgClient(engine.host, engine.port, timeout=2.0).query(call_id), errors
        except NgError as exc:
            if UNKNOWN not in str(exc):
                errors.append(f"rtpengine udp:{engine}: {exc}")
        except OSError as exc:
            errors.append(f"rtpengine udp:{engine}: {exc}")
    return None, None, errors


def _leg(leg: quality.Leg, came: quality.Figures, now: float) -> dict:
    return {
        "side": leg.side, "tag": leg.tag, "protocol": leg.protocol, "codec": leg.codec,
        "peer": leg.peer, "local": leg.local, "crypto": leg.crypto, "ssrcs": list(leg.ssrcs),
        "packets": leg.packets, "errors": leg.errors,
        "last_packet_s_ago": max(int(now - leg.last_packet), 0) if leg.last_packet else None,
        # what came from this leg, as the other end reported it
        "loss": came.loss, "jitter_ms": came.jitter_ms, "mos": came.mos, "mos_lowest": came.mos_lowest,
        "reports": came.samples,
    }


def call_report(cfg: Settings, kam: Kamailio, call_id: str) -> dict:
    engine, reply, errors = find(cfg, call_id)
    now = time.time()
    dialog = None
    try:
        dialog = next((dialog_row(cfg, d, now) for d in dialogs(kam) if d.get("call-id") == call_id), None)
    except GwctlError as exc:
        errors.append(f"kamailio: {exc}")
    out: dict[str, Any] = {"call_id": call_id, "engine": engine, "dialog": dialog, "errors": errors}
    if reply is None:
        return out
    call = quality.parse(reply, call_id=call_id)
    created = reply.get("created")
    legs = [_leg(leg, call.figures(leg.side), now) for leg in call.legs]
    out.update(created=created, age_s=int(now - created) if isinstance(created, int) else None,
               mos=call.mos, rtt_ms=call.rtt_ms,
               legs=sorted(legs, key=lambda leg: leg["side"] != "phone"))
    return out


def _print(r: dict) -> None:
    d = r["dialog"]
    where = f"on rtpengine {r['engine']}"
    if r.get("age_s") is not None:
        where += f", up {age(r['age_s'])}"
    print(f"call {r['call_id']}  {where}")
    print(f"dialog: {d['direction']} {d['state']}, {d['from']} -> {d['to']}" if d else
          "dialog: none on this node (another node's call, or media only)")
    call = []
    if r["mos"] is not None:
        call.append(f"MOS {r['mos']:.1f} (the worse direction)")
    if r["rtt_ms"] is not None:
        call.append(f"round trip {r['rtt_ms']:.1f} ms (phone - rtpengine - PBX)")
    print("; ".join(call) if call else "no RTCP figures yet (rtpengine needs reports from both ends)")
    rows = [{**leg, "figures": figures_text(leg) or "-", "crypto": leg["crypto"] or None,
             "last": f"{leg['last_packet_s_ago']}s ago" if leg["last_packet_s_ago"] is not None else None}
            for leg in r["legs"]]
    print(table(rows, [("LEG", "side"), ("PROTOCOL", "protocol"), ("CODEC", "codec"),
                       ("MEDIA FROM", "peer"), ("RTPENGINE", "local"), ("CRYPTO", "crypto"),
                       ("PACKETS", "packets"), ("LAST", "last"), ("WHAT CAME FROM IT", "figures"),
                       ("REPORTS", "reports")]))


def command(cfg: Settings, kam: Kamailio, args: argparse.Namespace, env: dict[str, str]) -> int:
    r = call_report(cfg, kam, args.call_id)
    if args.json:
        print_json(r)
    elif r["engine"] is not None:
        _print(r)
    for err in r["errors"]:
        print(f"warning: {err}", file=sys.stderr)
    if r["engine"] is None:
        engines = " ".join(f"udp:{e}" for e in cfg.rtpengines)
        print(f"gwctl: no rtpengine in GW_RTPENGINE ({engines}) holds call {args.call_id}"
              + (" (but a dialog does: its media may be on another node)" if r["dialog"] else ""),
              file=sys.stderr)
        return 1
    return 0
