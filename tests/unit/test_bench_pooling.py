"""How make bench pools its repeated fixed-rate runs and side-by-side rounds."""
from __future__ import annotations

import math

from bench.abcpu import per_call
from bench.results import Step


def test_pooled_step_is_cpu_over_all_calls():
    a = Step("in", "kemi", 765, 100, successful=100, achieved=765, cpu={"kamailio": 0.06, "redis": 0.002},
             lat100=[1.0], udp_drops=1)
    b = Step("in", "kemi", 765, 300, successful=300, failed=1, achieved=760, cpu={"kamailio": 0.12, "rtpengine": 0.1},
             lat100=[2.0, 3.0], note="x")
    p = Step.pooled([a, b])
    assert (p.calls, p.successful, p.failed, p.udp_drops) == (400, 400, 1, 1)
    assert math.isclose(p.cpu_us("kamailio"), 0.18 / 400 * 1e6)
    assert math.isclose(p.cpu_us(), (0.18 + 0.002 + 0.1) / 400 * 1e6)
    assert p.lat100 == [1.0, 2.0, 3.0] and p.achieved == 760 and p.note == "x"
    assert Step.pooled([a]) is a


def test_side_by_side_per_call_pools_rounds():
    assert math.isclose(per_call([(0.5, 1000), (0.7, 1000)]), 600.0)
    assert math.isnan(per_call([])) and math.isnan(per_call([(0.1, 0)]))
