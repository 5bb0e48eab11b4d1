"""A REGISTER storm from many WebSocket connections (issue 14): `conns` phones
connect and upgrade first, then each sends `per_conn` REGISTERs one after the
other (a different DN each time: a desk of agents behind one browser tab is
not what this models, a morning's log-in storm with re-registrations is), all
connections at once. The PBX side is SIPp's bench_registrar.xml (200 OK at
once, Contact and Path echoed), so the gateway writes every binding to Redis.

Used by `make bench` (bench/run.py, test `wsreg`: Kamailio CPU per REGISTER
from /proc, KEMI next to native) and by bench/icount.py (instructions per
REGISTER under callgrind). The generator is tests/support/wsfleet.py (raw
frames on asyncio, one process).
"""
from __future__ import annotations

import asyncio
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
    sent: int = 0
    ok: int = 0                       # REGISTERs answered 2xx
    failed: dict = field(default_factory=dict)   # status -> count (0: no answer)
    upgrade_s: float = 0.0
    storm_s: float = 0.0              # first REGISTER sent to last answer
    cpu: dict = field(default_factory=dict)      # the probe's figures over the REGISTER phase

    @property
    def rate(self) -> float:
        return self.ok / self.storm_s if self.storm_s else 0.0


def users_for(conns: int, per_conn: int, prefix: str = "8") -> list[list[str]]:
    """DNs per connection: connection i registers prefix + i*per_conn+j."""
    return [[f"{prefix}{i * per_conn + j:05d}" for j in range(per_conn)] for i in range(conns)]


async def run(ws: tuple[str, int], conns: int, per_conn: int, *, per_ip: int = 10,
              ip_base: tuple[int, int] = (120, 0), timeout: float = 10.0,
              probe: Optional[Callable[[], dict]] = None,
              before_storm: Optional[Callable[[], None]] = None) -> StormResult:
    """Connect `conns` agents (`per_ip` per 127.x source address), then the storm.
    `probe()` is read just before the first REGISTER and after the last answer
    (CPU counters); `before_storm()` runs once all are connected."""
    res = StormResult(conns, per_conn)
    dns = users_for(conns, per_conn)
    t0 = time.monotonic()
    agents = await asyncio.gather(*(wsfleet.open_agent(dns[i][0], wsfleet.source_ip(i, per_ip, ip_base),
                                                       ws, timeout=timeout) for i in range(conns)))
    res.upgrade_s = time.monotonic() - t0
    live = [(a, dns[i]) for i, a in enumerate(agents) if a.status == 101]
    res.opened = len(live)
    try:
        if before_storm is not None:
            before_storm()
        # Let the upgrades' own work (and the connection sweep) finish first.
        await asyncio.sleep(1.0)
        p0 = probe() if probe else {}
        t1 = time.monotonic()

        async def one(agent: wsfleet.Agent, users: list[str]) -> list[int]:
            out = []
            for u in users:
                # Another DN is another registration: its own Call-ID (SIPp's
                # registrar keys its scenarios on it).
                agent.user, agent.call_id = u, uuid.uuid4().hex[:22]
                out.append(await agent.register(expires=600, timeout=timeout))
            return out

        results = await asyncio.gather(*(one(a, us) for a, us in live))
        res.storm_s = time.monotonic() - t1
        p1 = probe() if probe else {}
        res.cpu = {k: p1[k] - p0[k] for k in p0}
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
    return res
