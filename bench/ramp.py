"""Rate ramps: each flow's highest clean rate (find_peak), then the fixed-rate runs
at half the KEMI peak that give latency and CPU per call, next to a direct call."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from bench.results import Peak, Step
from bench.steps import sip_step

if TYPE_CHECKING:
    from bench.run import Bench


def peaks(bench: "Bench") -> dict:
    """(test, variant) -> Peak for each flow asked for (BENCH_TESTS out, in, reg)."""
    cfg = bench.cfg
    found: dict = {}
    order = [("out", cfg.call_start), ("in", cfg.call_start), ("reg", cfg.reg_start)]
    for test, start in order:
        if test not in cfg.tests:
            continue
        for v in cfg.variants:
            bench.log(f"=== peak {test} {v}")
            found[(test, v)] = find_peak(bench, test, v, start)
    return found


def find_peak(bench: "Bench", test: str, variant: str, start: float) -> Peak:
    """Step the rate up (x BENCH_FACTOR) until a step is not clean, a failed step
    retried BENCH_RETRY times; then BENCH_REFINE bisection steps between the highest
    clean rate and the first failing one."""
    cfg = bench.cfg
    steps: list[Step] = []

    def attempt(rate: float) -> Step:
        st = sip_step(bench, test, variant, rate)
        steps.append(st)
        for _ in range(cfg.retry):
            if st.clean:
                break
            bench.log(f"{variant} {test} {rate:.0f}/s not clean: once more")
            st = sip_step(bench, test, variant, rate)
            steps.append(st)
        return st

    best: Optional[Step] = None
    fail: Optional[float] = None
    rate = start
    for _ in range(cfg.max_steps):
        st = attempt(rate)
        if st.clean:
            best = st
            if rate >= cfg.max_rate:
                break
            rate = min(round(rate * cfg.factor / 10) * 10 or rate * cfg.factor, cfg.max_rate)
        else:
            fail = rate
            if best is None and rate > 10 and len(steps) < cfg.max_steps + 3:
                # Not even the first rate: come down until one is clean.
                rate = max(round(rate / 2), 5)
                best_down = attempt(rate)
                if best_down.clean:
                    best = best_down
                else:
                    fail = rate
            break
    for _ in range(cfg.refine):
        if best is None or fail is None:
            break
        mid = round((best.rate + fail) / 2 / 10) * 10
        if mid <= best.rate or mid >= fail:
            break
        st = attempt(mid)
        if st.clean:
            best = st
        else:
            fail = mid
    return Peak(best, fail, steps)


def half_peak(bench: "Bench", peaks_found: dict) -> dict:
    """test -> (rate, {variant or "direct": Step}) at half the KEMI peak.

    Each variant runs BENCH_LAT_ROUNDS times, the variants alternating and their
    order swapped every round (so a drift of the box weighs on both alike); its
    Step is the rounds pooled. bench.results["lat_rounds"] keeps each round's
    Steps for the report."""
    cfg = bench.cfg
    lat: dict = {}
    rounds_kept: dict = bench.results.setdefault("lat_rounds", {})
    # BENCH_TESTS=lat alone: the fixed-rate runs only, at half BENCH_CALL_START /
    # BENCH_REG_START (an A/B comparison of CPU per call without the ramps).
    lat_tests = [t for t in ("out", "in", "reg") if t in cfg.tests] or ["out", "in", "reg"]
    for test in lat_tests:
        start = cfg.reg_start if test == "reg" else cfg.call_start
        peak = peaks_found.get((test, "kemi")) or peaks_found.get((test, cfg.variants[0]))
        rate = max(round((peak.rate if peak else start) / 2), 5)
        bench.log(f"=== half-peak {test} at {rate}/s: latency and CPU per call"
                  + (f", {cfg.lat_rounds} rounds" if cfg.lat_rounds > 1 else ""))
        runs = {}
        if test != "reg":
            runs["direct"] = sip_step(bench, "direct", "direct", rate, seconds=cfg.lat_s, latency=True)
        each: dict[str, list[Step]] = {v: [] for v in cfg.variants}
        for n in range(max(cfg.lat_rounds, 1)):
            for v in (cfg.variants if n % 2 == 0 else cfg.variants[::-1]):
                each[v].append(sip_step(bench, test, v, rate, seconds=cfg.lat_s, latency=test != "reg"))
        for v in cfg.variants:
            runs[v] = Step.pooled(each[v])
        rounds_kept[test] = each
        lat[test] = (rate, runs)
    return lat
