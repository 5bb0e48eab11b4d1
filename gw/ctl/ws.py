"""gwctl ws: WebSocket connections (Kamailio ws.dump), each with the agent
registered over it on this node."""
from __future__ import annotations

import argparse
import sys

from gw.ctl.common import GwctlError
from gw.ctl.kamailio import Kamailio, ws_dump
from gw.ctl.output import print_json, table
from gw.ctl.registrations import registrations
from kemi.settings import Settings

HELP = "WebSocket connections (Kamailio ws.dump)"


def ws_connections(cfg: Settings, kam: Kamailio, with_agents: bool = True) -> dict:
    """ws.dump, each connection joined with the agent registered over it on this node."""
    dump = ws_dump(kam)
    by_conid: dict[int, str] = {}
    note = ""
    try:
        for rec in registrations(cfg) if with_agents else ():
            if rec.get("node") == str(cfg.sip_listen) and "conid" in rec:
                by_conid[int(rec["conid"])] = rec["user"]
    except GwctlError as exc:
        note = f"agents unknown: {exc}"
    for row in dump["connections"]:
        row["user"] = by_conid.get(row["id"]) if isinstance(row["id"], int) else None
    return {**dump, "note": note}


def command(cfg: Settings, kam: Kamailio, args: argparse.Namespace, env: dict[str, str]) -> int:
    result = ws_connections(cfg, kam)
    if args.json:
        print_json(result)
        return 0
    print(table(result["connections"], [("ID", "id"), ("REMOTE", "remote"), ("LOCAL", "local"),
                                        ("STATE", "state"), ("IDLE S", "idle_s"), ("AGENT", "user")]))
    more = " (list truncated by Kamailio)" if result["truncated"] else ""
    print(f"{len(result['connections'])} connection(s){more}")
    if result["note"]:
        print(f"warning: {result['note']}", file=sys.stderr)
    return 0
