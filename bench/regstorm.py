"""A REGISTER storm from many WebSocket connections (issue 14): `conns` phones
connect, upgrade and register first; then each sends `per_conn` REGISTERs one
after the other (a different DN each time), all connections at once: what a
node sees when a contact centre's agents log in and re-register together. CPU
is read per phase: per connection (connect, upgrade, first REGISTER, and the
connection guard's sweeps that new connections cause) and per REGISTER of the
storm on open connections. The PBX side is SIPp's bench_registrar.xml (200 OK at
once, Contact and Path echoed), so the gateway writes every binding to Redis.

Used by `make bench` (bench/run.py, test `wsreg`: Kamailio CPU per REGISTER
from /proc, KEMI next to native) and by bench/icount.py (instructions per
REGISTER under callgrind). The generator is tests/support/wsfleet.py (raw
frames on asyncio, one process).
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from support import wsfleet  # noqa: E402


@dataclass
class StormResult:
    conns: int
    per_conn: int
    opened: int = 0                   # upgraded (101)
    first_ok: int = 0                 # connections whose first REGISTER got a 2xx
    sent: int = 0                     # storm REGISTERs
    ok: int = 0                       # storm REGISTERs answered 2xx
    failed: dict = field(default_factory=dict)   # status -> count (0: no answer)
    connect_s: float = 0.0            # connect, upgrade and first REGISTER of all
    storm_s: float = 0.0              # first storm REGISTER sent to last answer
    cpu_connect: dict = field(default_factory=dict)   # the probe's deltas over the connect phase
    cpu: dict = field(default_factory=dict)           # ... over the storm

    @property
    def rate(self) -> float:
        return self.ok / self.storm_s if self.storm_s else 0.0


def users_for(conns: int, per_conn: int, prefix: str = "8") -> list[list[str]]:
    """DNs per connection: connection i registers prefix + i*(per_conn+1)+j; j = 0
    is its first REGISTER (the connect phase), the rest the storm."""
    n = per_conn + 1
    return [[f"{prefix}{i * n + j:05d}" for j in range(n)] for i in range(conns)]


async def run(ws: tuple[str, int], conns: int, per_conn: int, *, per_ip: int = 10,
              ip_base: tuple[int, int] = (120, 0), timeout: float = 10.0, settle_s: float = 2.5,
              probe: Optional[Callable[[str], dict]] = None) -> StormResult:
    """Phase 1, connect: `conns` agents (`per_ip` per 127.x source address)
    connect, upgrade and REGISTER once; then `settle_s` for the connection
    guard's sweep (kemi/conns.py) to see them all. Phase 2, the storm: every
    connection sends `per_conn` more REGISTERs back to back, all at once.
    `probe(label)` is read at "connect_start", "connect_end", "storm_start" and
    "storm_end" (CPU counters); the result holds the deltas of each phase."""
    res = StormResult(conns, per_conn)
    dns = users_for(conns, per_conn)
    marks: dict[str, dict] = {}

    def mark(label: str) -> None:
        marks[label] = probe(label) if probe else {}

    async def register(agent: wsfleet.Agent, user: str) -> int:
        # Another DN is another registration: its own Call-ID (SIPp's registrar
        # keys its scenarios on it).
        agent.user, agent.call_id = user, uuid.uuid4().hex[:22]
        return await agent.register(expires=600, timeout=timeout)

    async def first(i: int) -> wsfleet.Agent:
        src = wsfleet.source_ip(i, per_ip, ip_base)
        agent = await wsfleet.open_agent(dns[i][0], src, ws, timeout=timeout)
        if agent.status == 101 and 200 <= await register(agent, dns[i][0]) < 300:
            res.first_ok += 1
        return agent

    mark("connect_start")
    t0 = time.monotonic()
    agents = await asyncio.gather(*(first(i) for i in range(conns)))
    res.connect_s = time.monotonic() - t0
    live = [(a, dns[i][1:]) for i, a in enumerate(agents) if a.status == 101]
    res.opened = len(live)
    try:
        await asyncio.sleep(settle_s)
        mark("connect_end")
        mark("storm_start")
        t1 = time.monotonic()

        async def storm(agent: wsfleet.Agent, users: list[str]) -> list[int]:
            return [await register(agent, u) for u in users]

        results = await asyncio.gather(*(storm(a, us) for a, us in live))
        res.storm_s = time.monotonic() - t1
        mark("storm_end")
        for statuses in results:
            for st in statuses:
                res.sent += 1
                if 200 <= st < 300:
                    res.ok += 1
                else:
                    res.failed[st] = res.failed.get(st, 0) + 1
    finally:
        wsfleet.close_all(a for a in agents)
        await asyncio.sleep(0.3)
    for phase, (a, b) in (("cpu_connect", ("connect_start", "connect_end")),
                          ("cpu", ("storm_start", "storm_end"))):
        if a in marks and b in marks:
            setattr(res, phase, {k: marks[b][k] - marks[a][k] for k in marks[a] if k in marks[b]})
    return res


# ------------------------------------------------------------ make bench
def settings_from_env(mode: str) -> tuple[int, int, int]:
    """(connections, REGISTERs per connection in the storm, storms per variant):
    BENCH_WSREG ("100x10"), BENCH_WSREG_RUNS (2; 1 quick)."""
    conns, per = (int(x) for x in os.environ.get("BENCH_WSREG", "20x5" if mode == "smoke" else "100x10")
                  .lower().split("x"))
    runs = int(os.environ.get("BENCH_WSREG_RUNS", "2" if mode == "full" else "1"))
    return conns, per, runs


def bench_storms(bench) -> dict:
    """`make bench` test wsreg: the storm on each variant's stack (fresh connections
    each time), Kamailio's CPU per REGISTER of the storm and per connecting agent,
    from /proc, less the stack's idle rate. The best (least CPU) of the runs."""
    from bench import sipp, stacks   # noqa: PLC0415 - the harness's, not regstorm's own
    conns, per, runs = settings_from_env(bench.cfg.mode)
    out: dict = {"conns": conns, "per_conn": per, "results": {}}
    for k, (v, s) in enumerate(bench.stacks.items()):
        best: Optional[StormResult] = None
        for i in range(runs):
            uas = sipp.uas(f"{v}_wsreg_{i}_uas", "bench_registrar.xml", s.pbx.host, s.pbx.port,
                           stacks.free_ports(s.pbx.host, 4), conns * (per + 1), bench.work)
            uas.start()
            time.sleep(0.3)
            idle = bench.idle.get(v, {})

            def probe(label: str) -> dict:
                return {**s.cpu(), "t": time.monotonic()}

            res = asyncio.run(run((s.cfg.ws_listen.host, s.cfg.ws_listen.port), conns, per,
                                  ip_base=(120 + k * 2 + i % 2, 0), probe=probe))
            for phase in ("cpu_connect", "cpu"):
                d = getattr(res, phase)
                secs = d.pop("t", 0.0)
                setattr(res, phase, {c: max(x - idle.get(c, 0.0) * secs, 0.0) for c, x in d.items()})
            if not uas.wait(5):
                uas.stop()
            bench.log(f"{v:6} wsreg {conns}x{per}: {res.ok}/{conns * per} storm REGISTERs ok in "
                      f"{res.storm_s:.2f} s ({res.rate:,.0f}/s), Kamailio "
                      f"{per_unit(res, 'kamailio'):.0f} us per REGISTER, "
                      f"{per_conn(res, 'kamailio'):.0f} us per connecting agent")
            cheaper = best is None or per_unit(res, "kamailio") < per_unit(best, "kamailio")
            if res.ok == conns * per and cheaper:
                best = res
            elif best is None and i == runs - 1:
                best = res
            time.sleep(bench.cfg.pause)
        out["results"][v] = best
    return out


def per_unit(res: StormResult, comp: Optional[str] = None) -> float:
    """Microseconds of CPU per storm REGISTER (all components when comp is None)."""
    if not res.ok:
        return 0.0
    total = sum(res.cpu.values()) if comp is None else res.cpu.get(comp, 0.0)
    return total / res.ok * 1e6


def per_conn(res: StormResult, comp: Optional[str] = None) -> float:
    """Microseconds of CPU per connecting agent (connect, upgrade, first REGISTER)."""
    if not res.first_ok:
        return 0.0
    total = sum(res.cpu_connect.values()) if comp is None else res.cpu_connect.get(comp, 0.0)
    return total / res.first_ok * 1e6
