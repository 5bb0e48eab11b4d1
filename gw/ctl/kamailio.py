"""Kamailio through its control socket (kamcmd): the RPC printout parsed, and
the WebSocket connections it holds (ws.dump)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

from gw.ctl.common import ROOT, GwctlError

_WS_LINE = re.compile(r"^(?P<remote>\S+) -> (?P<local>\S+) \(state: (?P<state>[^,]+),\s*"
                      r"last used (?P<idle>-?\d+)s ago, sub-protocol: (?P<proto>[^)]*)\)")


def ctl_socket(arg: Optional[str], env: dict[str, str]) -> str:
    """kamcmd's -s value: --ctl (unix:PATH, tcp:HOST:PORT or a path), else
    $GW_RUN_DIR/kamailio_ctl, else <repo>/.run/kamailio_ctl (gw.run's choice)."""
    if arg:
        return arg if re.match(r"^(unix|tcp|udp):", arg) else f"unix:{arg}"
    run_dir = Path(env.get("GW_RUN_DIR") or ROOT / ".run")
    return f"unix:{run_dir.resolve() / 'kamailio_ctl'}"


def parse_kamcmd(text: str) -> list[Any]:
    """kamcmd's printout: each value of the RPC reply in turn, a struct as a
    '{' ... '}' block of 'key: value' lines (a nested struct as 'key: {' ... '}').
    Returns the values: dicts for structs (repeated keys become lists), strings otherwise."""
    lines = text.splitlines()
    pos = 0

    def block() -> dict:
        nonlocal pos
        out: dict[str, Any] = {}
        repeated: set[str] = set()
        while pos < len(lines):
            line = lines[pos].strip()
            pos += 1
            if line == "}":
                return out
            if not line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            item: Any = block() if value == "{" else value
            if name in repeated:
                out[name].append(item)
            elif name in out:
                out[name] = [out[name], item]
                repeated.add(name)
            else:
                out[name] = item
        return out

    values: list[Any] = []
    while pos < len(lines):
        line = lines[pos].strip()
        pos += 1
        if line == "{":
            values.append(block())
        elif line:
            values.append(line)
    return values


class Kamailio:
    """Kamailio's RPC over its ctl socket, through kamcmd."""

    def __init__(self, ctl: str, timeout: float = 5.0) -> None:
        self.ctl = ctl
        self.timeout = timeout

    def rpc(self, *command: str) -> list[Any]:
        kamcmd = shutil.which("kamcmd") or ("/usr/sbin/kamcmd" if Path("/usr/sbin/kamcmd").exists() else None)
        if kamcmd is None:
            raise GwctlError("kamcmd not found (Debian package kamailio): cannot reach Kamailio's ctl socket")
        if self.ctl.startswith("unix:") and not Path(self.ctl[5:]).exists():
            raise GwctlError(f"no Kamailio control socket at {self.ctl[5:]}: is the gateway running? "
                             "(pass --ctl, or set GW_RUN_DIR as for the gateway)")
        try:
            proc = subprocess.run([kamcmd, "-s", self.ctl, *command], capture_output=True, text=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise GwctlError(f"kamcmd {' '.join(command)}: no answer on {self.ctl} "
                             f"within {self.timeout}s") from None
        out = proc.stdout.strip()
        if proc.returncode != 0 or out.startswith("error:"):
            reason = (out or proc.stderr.strip() or f"exit {proc.returncode}").splitlines()[-1]
            raise GwctlError(f"kamcmd -s {self.ctl} {' '.join(command)}: {reason}")
        return parse_kamcmd(proc.stdout)


def ws_dump(kam: Kamailio) -> dict:
    """ws.dump: one row per WebSocket connection (ordered by id), and Kamailio's counters."""
    dump = kam.rpc("ws.dump")
    data = dump[0] if dump and isinstance(dump[0], dict) else {}
    conns = data.get("connections") or {}
    info = data.get("info") or {}
    rows = []
    for conid, text in (conns.items() if isinstance(conns, dict) else []):
        m = _WS_LINE.match(text if isinstance(text, str) else "")
        row: dict[str, Any] = {"id": int(conid) if str(conid).isdigit() else conid}
        if m:
            row.update(remote=m["remote"], local=m["local"], state=m["state"].strip(),
                       idle_s=int(m["idle"]), subprotocol=m["proto"])
        else:
            row["raw"] = text
        rows.append(row)
    rows.sort(key=lambda r: str(r["id"]).zfill(12))
    return {"connections": rows, "truncated": info.get("truncated") == "yes",
            "total": int(info.get("wscounter", len(rows)) or 0)}
