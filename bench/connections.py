"""`make bench`, connections (issue 19): one node full of WebRTC agents.

1. storm: BENCH_CONN_AGENTS (10,000) phones connect and REGISTER, each on its
   own WebSocket, BENCH_CONN_CONCURRENCY (200) at a time, 500 behind each
   127.x source address (a contact centre's NAT); the PBX emulator is the
   registrar (tests/support/fakepbx.py). Kamailio is sized by GW_MAX_AGENTS
   = the agent count, exactly as `make run` sizes it.
2. memory per connected agent: Kamailio's PSS (all its processes, from
   /proc/<pid>/smaps_rollup) and its shared memory in use (core.shmmem
   real_used), after minus before, over the agents registered; next to it,
   Kamailio's own per-connection allocations from `mod.stats` (websocket
   module and core), measured in the same run.
3. idle: with everyone connected and quiet, Kamailio's CPU over
   BENCH_CONN_IDLE_S (60 s), starting once the connections are idle long enough
   for the WebSocket keepalive Pings (keepalive_timeout 30 s) to flow.
4. calls: BENCH_CONN_CALLS PBX -> agent calls to agents picked at random
   (INVITE/200/ACK/BYE through rtpengine), BENCH_CONN_CALL_CONCURRENCY at a time.

The generator (tests/support/wsfleet.py) runs in this process on asyncio: one
file descriptor per agent, so it raises its own RLIMIT_NOFILE first and says so
when the hard limit cuts the agent count.
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from bench import stacks  # noqa: E402
from kemi import sizing  # noqa: E402
from support import wsfleet  # noqa: E402
from support.fakepbx import FakePbx  # noqa: E402

TARGETS = {"kb_per_agent": 64, "idle_pct": 5.0}


@dataclass
class ConnResult:
    agents: int                       # asked for
    registered: int = 0
    refused: dict = field(default_factory=dict)
    storm_s: float = 0.0
    p99_s: float = 0.0                # connect + upgrade + REGISTER, per agent
    pss_kb: float = 0.0               # per registered agent
    shm_kb: float = 0.0
    ws_module_kb: float = 0.0         # websocket module's shm per connection (mod.stats)
    tcp_core_kb: float = 0.0          # core tcpconn_new per connection (mod.stats)
    pss_total_mb: float = 0.0
    shm_total_mb: float = 0.0
    shm_size_mb: int = 0
    idle_s: float = 0.0
    idle_pct: float = 0.0             # Kamailio, % of one core
    idle_generator_pct: float = 0.0
    pings: int = 0                    # keepalive Pings the agents answered in the window
    calls: int = 0
    calls_failed: int = 0
    call_failures: list = field(default_factory=list)
    setup_p50_ms: float = 0.0
    setup_p99_ms: float = 0.0
    nofile_note: str = ""
    log_errors: list = field(default_factory=list)


# ------------------------------------------------------------------ /proc, kamcmd
def pss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def kamcmd(s: stacks.BenchStack, *cmd: str) -> str:
    r = subprocess.run(["kamcmd", "-s", f"unix:{s.run_dir}/kamailio_ctl", *cmd],
                       capture_output=True, text=True, timeout=30)
    return r.stdout


def shm_used(s: stacks.BenchStack) -> int:
    m = re.search(r"real_used:\s*(\d+)", kamcmd(s, "core.shmmem"))
    return int(m.group(1)) if m else 0


def mod_stat(s: stacks.BenchStack, module: str, func: str) -> int:
    """Bytes of shm allocated now from `func` (mod.stats; kamailio.cfg memdbg)."""
    m = re.search(rf"{re.escape(func)}\(\d+\):\s*(\d+)", kamcmd(s, "mod.stats", module, "shm"))
    return int(m.group(1)) if m else 0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


# ------------------------------------------------------------------ the run
def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def settings_from_env(mode: str) -> dict:
    """full / quick / smoke (BENCH_SMOKE: the harness check, 200 agents)."""
    def pick(full: int, quick: int, smoke: int) -> int:
        return {"full": full, "quick": quick, "smoke": smoke}[mode]
    return {
        "agents": _env_int("BENCH_CONN_AGENTS", pick(10000, 10000, 200)),
        "concurrency": _env_int("BENCH_CONN_CONCURRENCY", 200),
        "calls": _env_int("BENCH_CONN_CALLS", pick(500, 100, 20)),
        "call_concurrency": _env_int("BENCH_CONN_CALL_CONCURRENCY", 10),
        "idle_s": _env_int("BENCH_CONN_IDLE_S", pick(60, 30, 3)),
        "settle_s": _env_int("BENCH_CONN_SETTLE_S", pick(35, 35, 2)),
    }


def run(base: Path, rtpengine, ng, media_ports: tuple[int, int], *, agents: int = 10000,
        concurrency: int = 200, calls: int = 500, call_concurrency: int = 10, idle_s: int = 60,
        settle_s: int = 35, children: int = 4, log: print = print) -> ConnResult:
    soft = wsfleet.raise_nofile()
    res = ConnResult(agents=agents)
    if soft < agents + 256:
        res.nofile_note = (f"generator open-files limit {soft}: {agents} agents need {agents + 256}; "
                           f"ran {soft - 256}")
        agents = res.agents = soft - 256
        log(f"conn: {res.nofile_note}")
    os.environ["GW_MAX_AGENTS"] = str(agents)
    try:
        s = stacks.start("kemi", base, children=children, shm_mb=0, log_level="warning",
                         rtpengine=rtpengine, ng=ng, media_ports=media_ports)
    finally:
        os.environ.pop("GW_MAX_AGENTS", None)
    res.shm_size_mb = sizing.plan(agents).shm_mb
    pbx = FakePbx(s.pbx.host, s.pbx.port)
    try:
        asyncio.run(_measure(s, pbx, res, concurrency, calls, call_concurrency, idle_s, settle_s, log))
    finally:
        pbx.close()
        errors = [ln for ln in s.kamailio.log_text().splitlines()
                  if re.search(r"ERROR|CRITICAL|shared memory|no more shm|out of mem", ln)]
        res.log_errors = errors[:20]
        s.stop()
    return res


async def _measure(s, pbx: FakePbx, res: ConnResult, concurrency: int, calls: int,
                   call_concurrency: int, idle_s: int, settle_s: int, log) -> None:
    pids = [s.kamailio.pid] + s.kamailio_workers()
    await asyncio.sleep(1.0)
    pss0, shm0 = pss_kb(pids), shm_used(s)
    ws0, tcp0 = mod_stat(s, "websocket", "wsconn_add"), mod_stat(s, "core", "tcpconn_new")
    ws = (s.cfg.ws_listen.host, s.cfg.ws_listen.port)
    users = [f"6{i:05d}" for i in range(res.agents)]
    log(f"conn: storm: {res.agents} agents, {concurrency} at a time, 500 per source address")
    t0 = time.monotonic()
    outcomes = await wsfleet.storm(users, ws, per_ip=500, concurrency=concurrency, ip_base=(110, 0))
    res.storm_s = time.monotonic() - t0
    agents = [o.agent for o in outcomes if o.register == 200]
    try:
        res.registered = len(agents)
        res.refused = {k: v for k, v in wsfleet.http_status_counts(outcomes).items() if k != 101}
        res.p99_s = _pct([o.seconds for o in outcomes], 0.99)
        log(f"conn: {res.registered}/{res.agents} registered in {res.storm_s:.1f} s "
            f"(p99 {res.p99_s * 1000:.0f} ms per agent)")
        await asyncio.sleep(settle_s)       # REGISTER transactions gone, connections idle
        n = max(res.registered, 1)
        pss1, shm1 = pss_kb(pids), shm_used(s)
        res.pss_total_mb, res.shm_total_mb = pss1 / 1024, shm1 / 2**20
        res.pss_kb = (pss1 - pss0) / n
        res.shm_kb = (shm1 - shm0) / 1024 / n
        res.ws_module_kb = (mod_stat(s, "websocket", "wsconn_add") - ws0) / 1024 / n
        res.tcp_core_kb = (mod_stat(s, "core", "tcpconn_new") - tcp0) / 1024 / n
        log(f"conn: per agent PSS {res.pss_kb:.1f} kB, shm {res.shm_kb:.1f} kB "
            f"(websocket module {res.ws_module_kb:.1f} kB, TCP connection {res.tcp_core_kb:.1f} kB)")
        for a in agents:
            a.pings = 0
        c0 = stacks.tree_cpu(s.kamailio.pid)
        g0 = time.process_time()
        t1 = time.monotonic()
        await asyncio.sleep(idle_s)
        res.idle_s = time.monotonic() - t1
        res.idle_pct = 100 * (stacks.tree_cpu(s.kamailio.pid) - c0) / res.idle_s
        res.idle_generator_pct = 100 * (time.process_time() - g0) / res.idle_s
        res.pings = sum(getattr(a, "pings", 0) for a in agents)
        log(f"conn: idle {res.idle_pct:.2f} % of a core over {res.idle_s:.0f} s, "
            f"{res.pings} keepalive Pings answered")
        await _calls(s, pbx, agents, res, calls, call_concurrency)
        log(f"conn: {res.calls - res.calls_failed}/{res.calls} calls to random agents "
            f"(setup p50 {res.setup_p50_ms:.0f} ms, p99 {res.setup_p99_ms:.0f} ms)")
    finally:
        wsfleet.close_all(o.agent for o in outcomes)
        await asyncio.sleep(0.5)


async def _calls(s, pbx: FakePbx, agents: list, res: ConnResult, n: int, concurrency: int) -> None:
    if not agents:
        return
    sem = asyncio.Semaphore(concurrency)
    setups: list[float] = []

    async def one() -> None:
        agent = random.choice(agents)
        async with sem:
            t0 = time.monotonic()
            call = await asyncio.to_thread(pbx.call, (s.sip.host, s.sip.port), agent.user, timeout=8.0)
            if call.status != 200:
                res.call_failures.append(f"{agent.user}: INVITE {call.status or 'timeout'}")
                return
            setups.append(time.monotonic() - t0)
            bye = await asyncio.to_thread(call.bye, 8.0)
            if bye != 200:
                res.call_failures.append(f"{agent.user}: BYE {bye or 'timeout'}")

    await asyncio.gather(*(one() for _ in range(n)))
    res.calls, res.calls_failed = n, len(res.call_failures)
    res.setup_p50_ms, res.setup_p99_ms = 1000 * _pct(setups, 0.5), 1000 * _pct(setups, 0.99)


# ------------------------------------------------------------------ report
def rows(r: ConnResult) -> list[list[str]]:
    """metric | value | target | met"""
    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"
    kb = TARGETS["kb_per_agent"]
    return [
        [f"WebSocket agents registered ({r.agents} at {_storm_rate(r)})",
         f"{r.registered:,} in {r.storm_s:.1f} s", f"all {r.agents:,}", met(r.registered == r.agents)],
        ["Kamailio PSS per connected agent", f"{r.pss_kb:.1f} kB", f"<= {kb} kB", met(r.pss_kb <= kb)],
        ["Kamailio shm per connected agent", f"{r.shm_kb:.1f} kB", f"<= {kb} kB", met(r.shm_kb <= kb)],
        ["  of which websocket module / TCP connection (mod.stats)",
         f"{r.ws_module_kb:.1f} / {r.tcp_core_kb:.1f} kB", "", ""],
        [f"Kamailio idle CPU, all connected, keepalives ({r.pings:,} Pings in {r.idle_s:.0f} s)",
         f"{r.idle_pct:.2f} % of a core", f"< {TARGETS['idle_pct']:g} %", met(r.idle_pct < TARGETS["idle_pct"])],
        ["calls to random connected agents, failed", f"{r.calls_failed} of {r.calls}", "0",
         met(r.calls > 0 and r.calls_failed == 0)],
    ]


def _storm_rate(r: ConnResult) -> str:
    return f"{r.registered / r.storm_s:,.0f}/s" if r.storm_s else "n/a"


def markdown(r: ConnResult, concurrency: int) -> list[str]:
    from bench.report import table_md  # noqa: PLC0415 - the report's own table style
    md = ["## Connections: one node full of agents (issue 19)", "",
          table_md(["metric", "measured", "target", "met"], rows(r)), "",
          f"{r.agents:,} agents, each on its own WebSocket, {concurrency} connecting at a time, 500 per "
          f"source address; Kamailio sized by GW_MAX_AGENTS={r.agents:,} (shm {r.shm_size_mb} MB, "
          "kemi/sizing.py), as `make run` starts it. Per agent = (after - before) / registered, "
          f"measured after the REGISTER transactions had ended: Kamailio's PSS {r.pss_total_mb:.0f} MB "
          f"in all, shm in use {r.shm_total_mb:.0f} MB. Agent log-in time p99 {r.p99_s * 1000:.0f} ms. "
          f"Calls: setup p50 {r.setup_p50_ms:.0f} ms, p99 {r.setup_p99_ms:.0f} ms. Idle: the "
          f"generator itself used {r.idle_generator_pct:.2f} % of a core answering the Pings.", "",
          "Why more than 64 kB: Kamailio 5.6 gives every WebSocket a frame buffer of the core's "
          "BUF_SIZE (64 kB) in shared memory and zeroes it at the handshake (websocket module, "
          "`wsconn_add`), and every TCP connection a 16 kB read buffer (`tcp_rd_buf_size`, which "
          "bounds the largest SIP message, kemi/app.py MAX_MSG_BYTES). Both are fixed in Kamailio's "
          "code, not in the gateway's; what the gateway adds per agent is the rest of the figure.", ""]
    if r.refused:
        md += [f"Refused upgrades: {r.refused}.", ""]
    if r.call_failures:
        md += ["Failed calls: " + "; ".join(r.call_failures[:10]), ""]
    if r.nofile_note:
        md += [f"Note: {r.nofile_note}.", ""]
    if r.log_errors:
        md += ["Kamailio log errors (first 20):", "", "```"] + r.log_errors + ["```", ""]
    return md


def main() -> int:
    """`python -m bench.connections`: this section alone."""
    mode = "smoke" if os.environ.get("BENCH_SMOKE") == "1" else (
        "quick" if os.environ.get("BENCH_QUICK") == "1" else "full")
    opts = settings_from_env(mode)
    base = ROOT / "bench" / "_runs" / f"conn-{time.strftime('%Y%m%d-%H%M%S')}"
    media_ports = stacks.media_range()
    rtp, ng = stacks.start_rtpengine(base / "rtpengine", media_ports)
    try:
        r = run(base / "kemi", rtp, ng, media_ports, **opts)
    finally:
        rtp.stop()
    from bench.report import table_text  # noqa: PLC0415
    print(table_text(["metric", "measured", "target", "met"], rows(r)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
