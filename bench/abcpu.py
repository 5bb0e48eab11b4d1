"""Kamailio CPU per call of several gateways taking the same calls at the same time.

`make bench` runs each variant alone, one after the other: on this VM one such
run's KEMI/native ratio moves by +-0.1 with whatever the box does meanwhile. Here
the stacks (the KEMI app, the native cfg, and optionally the KEMI app with a
change applied) take calls *at once*, each from its own SIPp pair at the same
rate, so drift and contention weigh on all of them alike; CPU per call is read
from /proc over all of each Kamailio's processes and pooled over the rounds.
It decides whether a change pays (bench/NOTES.md); the targets stay `make bench`'s.

    python -m bench.abcpu                                   # kemi, native; PBX->phone
    ABCPU_FLOW=out ABCPU_PATCHES=/tmp/x.diff python -m bench.abcpu

Settings: ABCPU_FLOW (in | out), ABCPU_CALLS (per round and stack, 2000),
ABCPU_RATE (calls/s per stack, 250), ABCPU_ROUNDS (4), ABCPU_PATCHES (diffs to
kemi/ for a third stack, "kemi+patch"), ABCPU_CFG (that stack's kamailio.cfg).
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import icount, sipp, stacks  # noqa: E402
from bench.stacks import PHONE_IP  # noqa: E402

DNS = 1000


@dataclass
class Stack:
    """What icount.sipp_flow drives: a started gateway and its label."""
    variant: str
    s: stacks.BenchStack

    def cpu_ticks(self) -> int:
        total = 0
        for pid in [self.s.kamailio.pid] + self.s.kamailio_workers():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])      # utime + stime
        return total


def _start(label: str, base: Path, rtp, ng, media_ports, patches: str, cfg: str) -> Stack:
    variant = "native" if label == "native" else "kemi"
    saved = {k: os.environ.get(k) for k in ("BENCH_KEMI_PATCHES", "BENCH_KEMI_CFG")}
    if label == "kemi+patch":
        os.environ["BENCH_KEMI_PATCHES"] = patches
        if cfg:
            os.environ["BENCH_KEMI_CFG"] = cfg
    else:
        os.environ.pop("BENCH_KEMI_PATCHES", None)
        os.environ.pop("BENCH_KEMI_CFG", None)
    try:
        s = stacks.start(variant, base / label.replace("+", "_"), children=4, shm_mb=0, log_level="info",
                         rtpengine=rtp, ng=ng, media_ports=media_ports)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Stack(label.replace("+", "_"), s)


def main() -> int:
    flow = os.environ.get("ABCPU_FLOW", "in")
    calls = int(os.environ.get("ABCPU_CALLS", "2000"))
    rate = float(os.environ.get("ABCPU_RATE", "250"))
    rounds = int(os.environ.get("ABCPU_ROUNDS", "4"))
    patches = os.environ.get("ABCPU_PATCHES", "")
    labels = ["kemi", "native"] + (["kemi+patch"] if patches else [])
    base = Path(tempfile.mkdtemp(prefix="abcpu-"))
    media_ports = stacks.media_range()
    rtp, ng = stacks.start_rtpengine(base / "rtpengine", media_ports)
    work = base / "sipp"
    work.mkdir()
    inf = (sipp.write_inf(work / "agents.csv", [f"5{i:04d}" for i in range(DNS)]) if flow == "in"
           else sipp.write_inf(work / "pbx_users.csv", [f"2{i:04d}" for i in range(DNS)]))
    started: list[Stack] = []
    hz = os.sysconf("SC_CLK_TCK")
    print(f"abcpu: {flow} at {rate:g} calls/s per stack, {calls} calls x {rounds} rounds, work dir {base}")
    try:
        for label in labels:
            st = _start(label, base, rtp, ng, media_ports, patches, os.environ.get("ABCPU_CFG", ""))
            started.append(st)
            stacks.write_bindings(st.s, [f"5{i:04d}" for i in range(DNS)], stacks.free_ports(PHONE_IP, 1))
            icount.sipp_flow(st, flow, 200, 100, work, inf)       # warm-up, not counted
        pooled = {st.variant: [0, 0] for st in started}
        for n in range(rounds):
            time.sleep(3)          # rtpengine's deleted calls of the last round leave first
            before = {st.variant: st.cpu_ticks() for st in started}
            done: dict[str, int] = {}
            threads = [threading.Thread(target=lambda st=st: done.__setitem__(
                st.variant, icount.sipp_flow(st, flow, calls, rate, work, inf))) for st in started]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(1.5)        # the quality timer's last batch
            per = {}
            for st in started:
                ticks = st.cpu_ticks() - before[st.variant]
                pooled[st.variant][0] += ticks
                pooled[st.variant][1] += done[st.variant]
                per[st.variant] = ticks * 1e6 / hz / max(done[st.variant], 1)
            print(f"round {n}: " + ", ".join(f"{v} {us:.0f} us/call" for v, us in per.items())
                  + " | / native: " + ", ".join(f"{v} {us / per['native']:.3f}" for v, us in per.items()),
                  flush=True)
        native = pooled["native"][0] / max(pooled["native"][1], 1)
        print("pooled: " + ", ".join(f"{v} {t * 1e6 / hz / max(c, 1):.0f} us/call "
                                      f"({t / max(c, 1) / native:.3f} x native)" for v, (t, c) in pooled.items()))
    finally:
        for st in started:
            st.s.kamailio.stop(20)
            st.s.redis.stop()
        rtp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
