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
    """What icount.sipp_flow drives: a started gateway and its label; `idle` its
    Kamailio's CPU seconds per second with no calls (the timers), taken off."""
    variant: str
    s: stacks.BenchStack
    idle: float = 0.0

    def kamailio_cpu(self) -> float:
        return self.s.cpu()["kamailio"]        # all of its processes, as make bench counts


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


def side_by_side(started: list[Stack], flow: str, inf: Path, work: Path, *, calls: int, rate: float,
                 rounds: int, log=print) -> dict[str, list[tuple[float, int]]]:
    """Each round, every stack takes `calls` calls at `rate` at the same time; per
    stack and round: (Kamailio CPU seconds, calls completed)."""
    out: dict[str, list[tuple[float, int]]] = {st.variant: [] for st in started}
    for n in range(rounds):
        time.sleep(3)          # rtpengine's deleted calls of the last round leave first
        t0 = time.monotonic()
        before = {st.variant: st.kamailio_cpu() for st in started}
        done: dict[str, int] = {}
        threads = [threading.Thread(target=lambda st=st: done.__setitem__(
            st.variant, icount.sipp_flow(st, flow, calls, rate, work, inf))) for st in started]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1.5)        # the quality timer's last batch
        seconds = time.monotonic() - t0
        for st in started:
            used = st.kamailio_cpu() - before[st.variant] - st.idle * seconds
            out[st.variant].append((max(used, 0.0), done.get(st.variant, 0)))
        log(f"{flow} round {n}: " + ", ".join(
            f"{v} {per_call(r[-1:]):.0f} us/call ({r[-1][1]} calls)" for v, r in out.items()))
    return out


def per_call(rounds: list[tuple[float, int]]) -> float:
    """Kamailio CPU microseconds per call over the rounds, pooled."""
    calls = sum(c for _, c in rounds)
    return sum(t for t, _ in rounds) * 1e6 / calls if calls else float("nan")


def bench_steps(bench, peaks_found: dict) -> dict:
    """make bench's side-by-side step (BENCH_TESTS ab): for each call flow, the KEMI
    and native stacks take calls at once, each at a quarter of the KEMI peak (the
    box carries what one stack does at half the peak, where the fixed-rate runs are),
    BENCH_AB_ROUNDS rounds of BENCH_LAT_S seconds. flow -> (rate, {variant: rounds})."""
    cfg = bench.cfg
    started = [Stack(v, bench.stacks[v], bench.idle.get(v, {}).get("kamailio", 0.0)) for v in cfg.variants]
    res = {}
    for flow, inf in (("out", bench.users_out), ("in", bench.users_in)):
        peak = peaks_found.get((flow, "kemi"))
        rate = max(round((peak.rate if peak else cfg.call_start) / 4), 5)
        bench.log(f"=== side by side {flow}: {' and '.join(cfg.variants)} at once, {rate}/s each, "
                  f"{cfg.ab_rounds} rounds (bench/abcpu.py)")
        res[flow] = (rate, side_by_side(started, flow, inf, bench.work, calls=max(int(rate * cfg.lat_s), 1),
                                        rate=rate, rounds=cfg.ab_rounds, log=bench.log))
    return res


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
    agents = [f"5{i:04d}" for i in range(DNS)]
    inf = (sipp.write_inf(work / "agents.csv", agents) if flow == "in"
           else sipp.write_inf(work / "pbx_users.csv", [f"2{i:04d}" for i in range(DNS)]))
    started: list[Stack] = []
    print(f"abcpu: {flow} at {rate:g} calls/s per stack, {calls} calls x {rounds} rounds, work dir {base}")
    try:
        for label in labels:
            st = _start(label, base, rtp, ng, media_ports, patches, os.environ.get("ABCPU_CFG", ""))
            started.append(st)
            stacks.write_bindings(st.s, agents, stacks.free_ports(PHONE_IP, 1))
            icount.sipp_flow(st, flow, 200, 100, work, inf)       # warm-up, not counted
        res = side_by_side(started, flow, inf, work, calls=calls, rate=rate, rounds=rounds)
        native = per_call(res["native"])
        print("pooled: " + ", ".join(f"{v} {per_call(r):.0f} us/call ({per_call(r) / native:.3f} x native)"
                                      for v, r in res.items()))
    finally:
        for st in started:
            st.s.kamailio.stop(20)
            st.s.redis.stop()
        rtp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
