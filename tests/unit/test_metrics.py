"""The per-message metrics come from Kamailio's own statistics (kemi/metrics.py):
the same families, labels and meaning as the prometheus_client counters they
replace, built from a stats.get_statistics answer."""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kemi import metrics

CFG = Path(__file__).resolve().parents[2] / "kamailio.cfg"


def exposition(stats: dict[str, int]) -> dict[tuple[str, tuple], float]:
    class One:
        def collect(self):
            return metrics.kamailio_families(stats)
    reg = CollectorRegistry()
    reg.register(One())
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_statistics_variable_is_declared_in_kamailio_cfg():
    declared = set(re.findall(r'modparam\("statistics", "variable", "([^"]+)"\)', CFG.read_text()))
    assert set(metrics.STAT_VARIABLES) <= declared
    assert 'loadmodule "statistics.so"' in CFG.read_text()


def test_parse_statistics_answer():
    assert metrics.parse_statistics(["core:rcv_requests = 12", "script:gw_calls_inbound = 3",
                                     "junk", "shmem:x = n/a"]) == {
        "core:rcv_requests": 12, "script:gw_calls_inbound": 3}
    assert metrics.parse_statistics(None) == {}


def test_requests_by_method_options_and_http_apart():
    """OPTIONS from the app's own count (the core also counts the timer routes'
    faked OPTIONS); other = the rest of the core's requests less HTTP."""
    out = exposition({"core:rcv_requests": 40, "core:rcv_requests_invite": 5, "core:rcv_requests_ack": 5,
                      "core:rcv_requests_options": 9, "core:rcv_requests_register": 10,
                      "script:gw_requests_options": 2, "script:gw_http_requests": 7})
    got = {dict(k[1])["method"]: v for k, v in out.items() if k[0] == "gateway_sip_requests_total"}
    assert got["INVITE"] == 5 and got["ACK"] == 5 and got["REGISTER"] == 10
    assert got["OPTIONS"] == 2
    assert got["other"] == 40 - 29 - 7
    assert set(got) == set(metrics.METHODS) | {"other"}


def test_replies_received_plus_own_stateless():
    out = exposition({"core:rcv_replies": 20, "core:rcv_replies_1xx": 6, "core:rcv_replies_2xx": 9,
                      "core:rcv_replies_4xx": 4, "script:gw_replies_2xx": 3, "script:gw_replies_4xx": 1,
                      "script:gw_replies_other": 2})
    got = {dict(k[1])["code_class"]: v for k, v in out.items() if k[0] == "gateway_sip_replies_total"}
    assert got == {"1xx": 6, "2xx": 12, "3xx": 0, "4xx": 5, "5xx": 0, "6xx": 0, "other": 1 + 2}


def test_reply_stat_by_class():
    assert metrics.reply_stat(200) == "gw_replies_2xx"
    assert metrics.reply_stat(483) == "gw_replies_4xx"
    assert metrics.reply_stat(99) == "gw_replies_other"


def test_calls_and_setup_histogram():
    stats = {"script:gw_calls_outbound": 2, "script:gw_calls_inbound": 1}
    for seconds in (0.05, 0.3, 75.0):
        name = metrics.setup_stat(seconds)
        stats[f"script:{name}"] = stats.get(f"script:{name}", 0) + 1
    stats["script:gw_setup_sum_us"] = int((0.05 + 0.3 + 75.0) * 1e6)
    out = exposition(stats)
    assert out[("gateway_calls_total", (("direction", "outbound"),))] == 2
    assert out[("gateway_calls_total", (("direction", "inbound"),))] == 1
    bucket = {dict(k[1])["le"]: v for k, v in out.items() if k[0] == "gateway_call_setup_seconds_bucket"}
    # le includes the bound; buckets are cumulative; the le strings as prometheus_client writes them
    assert bucket["0.05"] == 1 and bucket["0.25"] == 1 and bucket["0.5"] == 2 and bucket["60.0"] == 2
    assert bucket["+Inf"] == 3
    assert out[("gateway_call_setup_seconds_count", ())] == 3
    assert abs(out[("gateway_call_setup_seconds_sum", ())] - 75.35) < 1e-6


def test_nothing_counted_yet_shows_zero_series():
    out = exposition({})
    assert out[("gateway_sip_requests_total", (("method", "INVITE"),))] == 0
    assert out[("gateway_call_setup_seconds_count", ())] == 0
