"""What a run records: one Step per fixed-rate SIPp run, a Peak per ramp."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from bench.settings import FAIL_RATIO, RATE_SLACK


@dataclass
class Step:
    test: str                 # out, in, reg, direct
    variant: str              # kemi, native, direct
    rate: float
    calls: int
    successful: int = 0
    failed: int = 0
    achieved: float = 0.0     # calls/s SIPp actually launched
    retrans: int = 0
    wall: float = 0.0
    cpu: dict = field(default_factory=dict)        # seconds per component, idle removed
    sipp_cpu: dict = field(default_factory=dict)   # seconds, uac/uas
    lat100: list = field(default_factory=list)
    lat180: list = field(default_factory=list)
    lat200: list = field(default_factory=list)
    note: str = ""
    udp_drops: int = 0        # kernel UDP receive-buffer drops during the step (whole box)
    load_cores: dict = field(default_factory=dict)  # cores per component while calls were launched
    box_busy: float = 0.0     # the whole box's CPU use meanwhile, 0..1 (other programs too)

    @property
    def clean(self) -> bool:
        return (self.calls > 0 and self.failed <= FAIL_RATIO * self.calls
                and self.achieved >= RATE_SLACK * self.rate and not self.note)

    def cpu_us(self, comp: Optional[str] = None) -> float:
        if not self.successful:
            return 0.0
        total = sum(self.cpu.values()) if comp is None else self.cpu.get(comp, 0.0)
        return total / self.successful * 1e6

    @classmethod
    def pooled(cls, steps: list["Step"]) -> "Step":
        """Several runs of the same step as one: counts, CPU and latencies added up,
        so CPU per call is the total over all the rounds' calls."""
        if len(steps) == 1:
            return steps[0]
        first = steps[0]
        out = cls(first.test, first.variant, first.rate, sum(s.calls for s in steps))
        for s in steps:
            out.successful += s.successful
            out.failed += s.failed
            out.retrans += s.retrans
            out.wall += s.wall
            out.udp_drops += s.udp_drops
            for mine, theirs in ((out.cpu, s.cpu), (out.sipp_cpu, s.sipp_cpu)):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0.0) + v
            out.lat100 += s.lat100
            out.lat180 += s.lat180
            out.lat200 += s.lat200
        out.achieved = min(s.achieved for s in steps)
        out.box_busy = max(s.box_busy for s in steps)
        out.load_cores = {k: max(s.load_cores.get(k, 0.0) for s in steps) for k in first.load_cores}
        out.note = "; ".join(s.note for s in steps if s.note)
        return out

    def brief(self) -> str:
        state = "clean" if self.clean else "FAIL"
        extra = f" ({self.note})" if self.note else ""
        return (f"{self.variant:6} {self.test:4} {self.rate:7.0f}/s: {self.successful}/{self.calls} ok, "
                f"{self.failed} failed, launched {self.achieved:.0f}/s, retrans {self.retrans}, "
                f"udp drops {self.udp_drops}, "
                f"cpu/call {self.cpu_us():.0f} us (kam {self.cpu_us('kamailio'):.0f}) -> {state}{extra}")


@dataclass
class Peak:
    best: Optional[Step]
    first_fail: Optional[float]
    steps: list[Step]

    @property
    def rate(self) -> float:
        return self.best.rate if self.best else 0.0
