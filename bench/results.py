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
