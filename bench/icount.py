"""Instructions per call and per REGISTER, KEMI next to native, under callgrind.

CPU time on a shared 2-core box moves with whatever else runs; the number of
instructions a Kamailio process executes for one call does not. This runs both
gateways (bench/stacks.py, exactly as `make bench` starts them) under valgrind
(callgrind, every Kamailio process), drives a fixed number of calls or
REGISTERs through each at a low rate, and reads the instructions executed
(Ir, user space only: syscalls and the kernel's share are the same for both
variants, one SIP message in, one out) over that window:

    Ir per call = (Ir over the flow - idle Ir per second x the flow's seconds) / calls

`python -m bench.icount` (bench/NOTES.md has its figures).
Settings: ICOUNT_FLOWS (out,in,reg,wsreg), ICOUNT_CALLS (200), ICOUNT_RATE (calls/s,
4: valgrind runs Kamailio ~50x slower), ICOUNT_WS (connections x REGISTERs each for
wsreg, "50x10"), ICOUNT_VARIANTS (kemi,native), ICOUNT_DUMP=1 (callgrind files of each
flow for callgrind_annotate, in the run directory); experiments: ICOUNT_APP (a KEMI
entry file counted instead of kemi/app.py), BENCH_KEMI_CFG (a kamailio.cfg to run it).
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import regstorm, sipp, stacks  # noqa: E402
from bench.stacks import PBX_IP, PHONE_IP, BenchStack  # noqa: E402

FLOWS = ("out", "in", "reg", "wsreg")
LABELS = {"out": "call phone->PBX", "in": "call PBX->phone (Redis lookup)",
          "reg": "REGISTER, UDP (Redis read + write)", "wsreg": "REGISTER, storm over WebSockets"}


@dataclass
class FlowCount:
    flow: str
    variant: str
    units: int = 0                    # successful calls / REGISTERs
    asked: int = 0
    seconds: float = 0.0
    ir: int = 0                       # all Kamailio processes, idle removed
    by_process: dict = field(default_factory=dict)   # pid -> Ir (not idle-corrected)
    note: str = ""

    @property
    def per_unit(self) -> float:
        return self.ir / self.units if self.units else 0.0


# --------------------------------------------------------------- callgrind
def _control(pids: list[int], *args: str) -> str:
    r = subprocess.run(["callgrind_control", *args, *map(str, pids)], capture_output=True,
                       text=True, timeout=120)
    return r.stdout


_PID = re.compile(r"^PID (\d+):")
_TH = re.compile(r"^\s*Th\s+\d+\s+([\d,]+)")


def read_ir(pids: list[int]) -> dict[int, int]:
    """Instructions executed since the last zeroing, per process (live counters)."""
    out: dict[int, int] = {}
    pid = None
    for line in _control(pids, "-e", "Ir").splitlines():
        m = _PID.match(line)
        if m:
            pid = int(m.group(1))
            out.setdefault(pid, 0)
            continue
        m = _TH.match(line)
        if m and pid is not None:
            out[pid] += int(m.group(1).replace(",", ""))
    return out


class Counted:
    """One variant's stack under callgrind, instrumentation switched on after start."""

    def __init__(self, variant: str, base: Path, rtp, ng, media_ports, children: int = 4) -> None:
        self.variant = variant
        self.base = base
        # ICOUNT_APP: another KEMI entry file (an experiment), KEMI variant only.
        app_py = Path(os.environ["ICOUNT_APP"]) if os.environ.get("ICOUNT_APP") else None
        wrap = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no",
                f"--callgrind-out-file={base}/callgrind.out.%p"]
        self.s: BenchStack = stacks.start(variant, base, children=children, shm_mb=0, log_level="info",
                                          rtpengine=rtp, ng=ng, media_ports=media_ports, wrapper=wrap,
                                          ready_s=300, app_py=app_py)
        self.pids = [self.s.kamailio.pid] + self.s.kamailio_workers()

    def instrument(self) -> None:
        _control(self.pids, "-i", "on")

    def zero(self) -> None:
        _control(self.pids, "-z")

    def dump(self, label: str) -> None:
        _control(self.pids, f"--dump={label}")

    def stop(self) -> None:
        self.s.kamailio.stop(120)
        self.s.redis.stop()


# ------------------------------------------------------------------ flows
def sipp_flow(c: Counted, flow: str, n: int, rate: float, work: Path, inf: Path) -> int:
    s = c.s
    tag = f"ic_{c.variant}_{flow}_{int(time.time() * 1000) % 100000}"
    if flow == "reg":
        uas = sipp.uas(f"{tag}_uas", "bench_registrar.xml", s.pbx.host, s.pbx.port,
                       stacks.free_ports(s.pbx.host, 4), n, work)
        uac = sipp.uac(f"{tag}_uac", "bench_register.xml", str(s.pbx), PHONE_IP,
                       stacks.free_ports(PHONE_IP, 1), stacks.free_ports(PHONE_IP, 4), rate, n, work,
                       inf=inf, rsa=str(s.sip), timeout_s=int(n / rate + 120))
    else:
        if flow == "out":
            uas_ip, uas_port, uac_ip, remote, rsa = s.pbx.host, s.pbx.port, PHONE_IP, str(s.pbx), str(s.sip)
        else:
            uas_ip, uas_port, uac_ip, remote, rsa = PHONE_IP, s.phone_port, PBX_IP, str(s.sip), None
        uas = sipp.uas(f"{tag}_uas", "bench_uas.xml", uas_ip, uas_port, stacks.free_ports(uas_ip, 4), n, work)
        uac = sipp.uac(f"{tag}_uac", "bench_uac.xml", remote, uac_ip, stacks.free_ports(uac_ip, 1),
                       stacks.free_ports(uac_ip, 4), rate, n, work, inf=inf, rsa=rsa, hold_ms=200,
                       timeout_s=int(n / rate + 120))
    uas.start()
    time.sleep(0.3)
    uac.start()
    uac.wait(n / rate + 120)
    uac.stop()
    if not uas.wait(3):
        uas.stop()
    return uac.result(n).successful


def ws_flow(c: Counted, conns: int, per_conn: int, work: Path) -> tuple[int, float, float]:
    """The storm on open connections (bench/regstorm.py), counted from its first
    REGISTER: the connect phase is zeroed away."""
    s = c.s
    n = conns * (per_conn + 1)
    uas = sipp.uas(f"ic_{c.variant}_wsreg_uas", "bench_registrar.xml", s.pbx.host, s.pbx.port,
                   stacks.free_ports(s.pbx.host, 4), n, work)
    uas.start()
    time.sleep(0.3)
    marks: dict[str, float] = {}

    def probe(label: str) -> dict:
        if label == "connect_end":      # the background's rate, right before the storm
            marks["idle"] = idle_rate(c)
        if label == "storm_start":
            c.zero()
            marks["t0"] = time.monotonic()
        return {}

    res = asyncio.run(regstorm.run((s.cfg.ws_listen.host, s.cfg.ws_listen.port), conns, per_conn,
                                   timeout=60.0, settle_s=6.0, probe=probe))
    if not uas.wait(5):
        uas.stop()
    return res.ok, time.monotonic() - marks.get("t0", time.monotonic()), marks.get("idle", 0.0)


def idle_rate(c: Counted, seconds: float = 4.0) -> float:
    """Instructions per second with no traffic (timers, the connection sweep, the
    reconnect timer), measured right before a flow and subtracted from it."""
    c.zero()
    time.sleep(seconds)
    return sum(read_ir(c.pids).values()) / seconds


# ------------------------------------------------------------------- run
def measure(variant: str, flows: list[str], base: Path, rtp, ng, media_ports, *, n: int, rate: float,
            ws: tuple[int, int], dump: bool, log=print) -> list[FlowCount]:
    work = base / "sipp"
    work.mkdir(parents=True, exist_ok=True)
    dns = 1000
    infs = {"out": sipp.write_inf(work / "pbx_users.csv", [f"2{i:04d}" for i in range(dns)]),
            "in": sipp.write_inf(work / "agents.csv", [f"5{i:04d}" for i in range(dns)]),
            "reg": sipp.write_inf(work / "reg_users.csv", [f"7{i:04d}" for i in range(dns)])}
    c = Counted(variant, base / variant, rtp, ng, media_ports)
    out: list[FlowCount] = []
    try:
        stacks.write_bindings(c.s, [f"5{i:04d}" for i in range(dns)], stacks.free_ports(PHONE_IP, 1))
        # Warm up every worker uninstrumented (Python's first-use work, Redis
        # connections), then count.
        for flow in flows:
            if flow != "wsreg":
                sipp_flow(c, flow, 20, 10, work, infs[flow])
        c.instrument()
        time.sleep(1.0)
        for flow in flows:
            time.sleep(6.0)   # tm's wait timers of the previous flow
            fc = FlowCount(flow, variant)
            if flow == "wsreg":
                fc.asked = ws[0] * ws[1]
                fc.units, fc.seconds, idle = ws_flow(c, ws[0], ws[1], work)
                time.sleep(6.0)
                fc.seconds += 6.0
            else:
                fc.asked = n
                idle = idle_rate(c)
                c.zero()
                t0 = time.monotonic()
                fc.units = sipp_flow(c, flow, n, rate, work, infs[flow])
                time.sleep(6.0)   # its transactions freed (tm wait timer 5 s)
                fc.seconds = time.monotonic() - t0
            fc.by_process = read_ir(c.pids)
            fc.ir = int(sum(fc.by_process.values()) - idle * fc.seconds)
            log(f"icount {variant} {flow}: background {idle / 1e6:.2f} M instructions/s subtracted")
            if fc.units < fc.asked:
                # Failed calls leave retransmissions behind: the figure is not one call's.
                fc.note = f"{fc.asked - fc.units} of {fc.asked} failed: figure not valid"
            log(f"icount {variant} {flow}: {fc.units}/{fc.asked} ok in {fc.seconds:.0f} s, "
                f"{fc.per_unit / 1e6:.3f} M instructions each")
            out.append(fc)
            if dump:
                c.dump(flow)
    finally:
        c.stop()
    return out


def rows(counts: list[FlowCount]) -> list[list[str]]:
    """flow | KEMI M instr | native M instr | KEMI/native"""
    by = {(fc.flow, fc.variant): fc for fc in counts}
    out = []
    for flow in FLOWS:
        k, nat = by.get((flow, "kemi")), by.get((flow, "native"))
        if k is None and nat is None:
            continue
        kv = k.per_unit if k else 0.0
        nv = nat.per_unit if nat else 0.0
        note = "; ".join(f"{fc.variant}: {fc.note}" for fc in (k, nat) if fc and fc.note)
        out.append([LABELS[flow], f"{kv / 1e6:.3f}" if kv else "n/a", f"{nv / 1e6:.3f}" if nv else "n/a",
                     f"{kv / nv:.2f}" if kv and nv else "n/a", note])
    return out


HEADER = ["per unit (M instructions, all Kamailio processes)", "KEMI", "native", "KEMI/native", "note"]


def run(base: Path, rtp=None, ng=None, media_ports=None, log=print) -> list[FlowCount]:
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("bench.icount: valgrind is not installed (apt-get install valgrind)")
    flows = [f for f in os.environ.get("ICOUNT_FLOWS", ",".join(FLOWS)).split(",") if f]
    variants = [v for v in os.environ.get("ICOUNT_VARIANTS", "kemi,native").split(",") if v]
    n = int(os.environ.get("ICOUNT_CALLS", "200"))
    rate = float(os.environ.get("ICOUNT_RATE", "4"))
    conns, per = (int(x) for x in os.environ.get("ICOUNT_WS", "50x10").split("x"))
    dump = os.environ.get("ICOUNT_DUMP") == "1"
    own = rtp is None
    if own:
        media_ports = stacks.media_range()
        rtp, ng = stacks.start_rtpengine(base / "rtpengine", media_ports)
    counts: list[FlowCount] = []
    try:
        for v in variants:
            counts += measure(v, flows, base, rtp, ng, media_ports, n=n, rate=rate, ws=(conns, per),
                              dump=dump, log=log)
    finally:
        if own:
            rtp.stop()
    return counts


def main() -> int:
    from bench.report import table_text  # noqa: PLC0415 - the report's table style
    base = ROOT / "bench" / "_runs" / f"icount-{time.strftime('%Y%m%d-%H%M%S')}"
    base.mkdir(parents=True, exist_ok=True)
    counts = run(base)
    print(table_text(HEADER, rows(counts)))
    print(f"bench.icount: run directory {base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
