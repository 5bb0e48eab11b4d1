"""gwctl doctor's capacity check: how many WebSocket connections and how much
of Kamailio's shared memory this node has left (issue 19).

Warns below 20 % left, fails when new agents are being refused (GW_MAX_AGENTS
connections open, or free shared memory down to the reserve kept for
transactions and dialogs). Shared memory "left" is counted like connections:
the part of shm that new connections may take (all but the reserve) still free. The numbers come from Kamailio itself through its
control socket: the websocket module's ws_current_connections and core.shmmem.
`assess` is pure; `check` asks Kamailio (a gw.ctl.Kamailio) and calls it.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from gw.ctl.doctor.base import Check, result
from kemi.settings import Settings

LOW = 0.20          # warn when less than this share is left
FIX = ("raise GW_MAX_AGENTS (Kamailio's memory and limits follow it; the host needs the RAM: "
       "README, Capacity) or add a gateway node on the same Redis")


def _result(status: str, detail: str, fix: str = "", data: Optional[dict] = None) -> dict:
    return result("capacity", status, detail, fix if status in ("warn", "fail") else "", data=data)


def assess(cfg: Settings, ws_connections: int, shm_total: int, shm_free: int) -> dict:
    """The verdict from the figures (pure)."""
    size = cfg.sizing
    conn_left = max(0, cfg.max_agents - ws_connections)
    conn_ratio = conn_left / cfg.max_agents
    usable = max(1, shm_total - size.shm_reserve_bytes)
    shm_ratio = max(0, shm_free - size.shm_reserve_bytes) / usable
    data = {"connections": ws_connections, "max_agents": cfg.max_agents, "connections_left": conn_left,
            "shm_total": shm_total, "shm_free": shm_free, "shm_reserve": size.shm_reserve_bytes}
    detail = (f"{ws_connections} of {cfg.max_agents} WebSocket connections in use "
              f"({conn_ratio:.0%} left); shared memory for connections {shm_ratio:.0%} left "
              f"({shm_free // (1 << 20)} of {shm_total // (1 << 20)} MB free, "
              f"{size.shm_reserve_bytes // (1 << 20)} MB kept for calls)")
    if conn_left == 0 or shm_free < size.shm_reserve_bytes:
        why = ("the node is full" if conn_left == 0 else
               "free shared memory is down to the reserve for calls")
        return _result("fail", f"{detail}: new agents are refused (503), {why}", FIX, data)
    if conn_ratio < LOW or shm_ratio < LOW:
        return _result("warn", f"{detail}: less than {LOW:.0%} left", FIX, data)
    return _result("ok", detail, data=data)


def _stat(lines: list[Any], name: str) -> Optional[int]:
    for line in lines:
        m = re.match(rf"^\S*:?{re.escape(name)}\s*=\s*(\d+)", str(line).strip())
        if m:
            return int(m.group(1))
    return None


def check(cfg: Settings, kam: Any) -> dict:
    """Ask Kamailio (gw.ctl.Kamailio: .rpc(*command) -> parsed kamcmd output)."""
    try:
        ws = _stat(kam.rpc("stats.get_statistics", "ws_current_connections"), "ws_current_connections")
        shm = kam.rpc("core.shmmem")[0]
        total, free = int(shm["total"]), int(shm["free"])
    except Exception as exc:  # kamcmd missing, socket down, odd reply: say so, do not crash doctor
        return _result("skip", f"Kamailio's control socket does not answer: {exc}")
    return assess(cfg, ws or 0, total, free)


CHECK = Check("capacity", lambda ctx, engine: check(ctx.cfg, ctx.kam))
