"""Prometheus metrics for a forking server.

Per-message counts are Kamailio's own statistics, read at scrape time: its core
counts every request received by method and every reply received by class
(kex), the sl module every reply the app sends statelessly by code, and the
statistics module the answered calls and their setup times (kamailio.cfg
declares the variables, the app updates them once per answered call). Nothing
is counted in Python on the way of a message (issue 14: prometheus_client on
every message was as much CPU as the routing itself).

The rarer counters (failures, errors, refusals) stay in prometheus_client's
multiprocess mode: Kamailio forks its SIP and TCP workers from the process that
imports the app, so each worker writes its own mmap files under
PROMETHEUS_MULTIPROC_DIR and a scrape (served by whichever worker gets the HTTP
request) sums them. What lives in Redis or rtpengine is read at scrape time too.
No Kamailio import here.
"""
from __future__ import annotations

import bisect
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

if TYPE_CHECKING:
    from kemi.quality import CallQuality

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_dir(path: Optional[str] = None) -> str:
    """Called once in Kamailio's main process, before the workers fork: a
    clean directory, exported so every worker (and prometheus_client) sees it."""
    path = path or os.environ.get(ENV) or tempfile.mkdtemp(prefix="gw-metrics-")
    p = Path(path)
    if p.exists():
        for child in p.iterdir():
            if child.is_file() and child.suffix == ".db":
                child.unlink()
            elif child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
    p.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(p)
    return str(p)


# Kamailio imports the app once, in its main process, before forking: the
# directory is emptied and exported then, and prometheus_client (imported
# below) picks multiprocess mode from the environment.
prepare_dir()

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from prometheus_client import multiprocess  # noqa: E402
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,  # noqa: E402
                                    HistogramMetricFamily)
from prometheus_client.utils import floatToGoString  # noqa: E402

REGISTER_FAILURES = Counter("gateway_register_failures", "REGISTERs that did not end in a binding",
                            ["reason"])
REDIS_ERRORS = Counter("gateway_redis_errors", "Redis operations that failed")
AUTH_FAILURES = Counter("gateway_auth_failures",
                        "The PBX refused a phone's credentials "
                        "(401/407 to a request with credentials, 403)")
AUTH_BLOCKED = Counter("gateway_auth_blocked",
                       "Requests the gateway refused (403) after too many authentication failures",
                       ["scope"])
for _scope in ("dn", "ip"):      # both series from the start, at 0 (rate() needs them)
    AUTH_BLOCKED.labels(_scope)
RTPENGINE_ERRORS = Counter("gateway_rtpengine_control_errors",
                           "rtpengine offer/answer/delete commands that failed")
CONN_REFUSED = Counter("gateway_connections_refused",
                       "WebSocket-port connections refused at the upgrade (per_ip, connections, shm) "
                       "or closed for overstaying (handshake_timeout, sip_timeout)", ["reason"])
DIALOG_REROUTED = Counter("gateway_dialog_rerouted",
                          "In-dialog requests delivered over a phone's new WebSocket (or its new node)")
RECONNECT_TIMEOUTS = Counter("gateway_dialog_reconnect_timeouts",
                             "In-dialog requests that waited GW_RECONNECT_WAIT in vain for their phone (480)")

# Call quality, observed once per call that had media, from what rtpengine
# measured (RTCP reports: kemi/quality.py); a figure it did not measure is not
# observed at all, so counts can differ between the three.
CALL_MOS = Histogram("gateway_call_mos",
                     "MOS of a call's worse direction (rtpengine, from RTCP), once per call",
                     buckets=(1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.3, 4.4, 4.5))
CALL_LOSS = Histogram("gateway_call_packet_loss_ratio",
                      "Share of packets lost of what came from a leg (phone or pbx), once per call",
                      ["leg"], buckets=(0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0))
CALL_JITTER = Histogram("gateway_call_jitter_seconds",
                        "Interarrival jitter of what came from a leg (phone or pbx), once per call",
                        ["leg"], buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1,
                                          0.2, 0.5))

METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "NOTIFY", "SUBSCRIBE",
           "REFER", "INFO", "UPDATE", "PRACK", "MESSAGE", "PUBLISH")
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx")   # reply classes; the rest: "other"


def method_label(method: str) -> str:
    # Unbounded label values would let any sender blow up the series count.
    return method if method in METHODS else "other"


def code_class(code: int) -> str:
    return f"{code // 100}xx" if 100 <= code < 700 else "other"


# ------------------------------------------------- counted by Kamailio itself
# Kamailio's core counts every request it hands to the routing (kex
# core:rcv_requests_<method>) and every reply it receives (core:rcv_replies_<class>)
# before the app sees them. The app counts in statistics variables only what the
# core cannot tell apart: OPTIONS, because every run of a timer route (rtimer:
# the connection sweep, once a second) is a faked OPTIONS to the core; HTTP
# requests on the WebSocket port (in core:rcv_requests, not SIP); and its own
# stateless replies (the sl module's counters also count HTTP replies). The
# statistics module's variables (kamailio.cfg declares each, in its group
# "script"): those, answered calls by direction, and the setup-time histogram
# as one counter per bucket (not cumulative; the last one past the largest
# bound) with the sum in microseconds.
OPTIONS_STAT = "gw_requests_options"
HTTP_STAT = "gw_http_requests"
REPLY_STATS = {c: f"gw_replies_{c}" for c in (*CLASSES, "other")}
SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
CALL_STATS = {"outbound": "gw_calls_outbound", "inbound": "gw_calls_inbound"}
SETUP_STATS = tuple(f"gw_setup_b{i}" for i in range(len(SETUP_BUCKETS) + 1))
SETUP_SUM_STAT = "gw_setup_sum_us"
STAT_VARIABLES = (OPTIONS_STAT, HTTP_STAT, *REPLY_STATS.values(), *CALL_STATS.values(), *SETUP_STATS,
                  SETUP_SUM_STAT)
# What a scrape reads (jsonrpc stats.get_statistics): the core's counters and
# the variables above.
STAT_GROUPS = ("core:", "script:")


def setup_stat(seconds: float) -> str:
    """The bucket variable a call set up in `seconds` counts in (le: bound included)."""
    return SETUP_STATS[bisect.bisect_left(SETUP_BUCKETS, seconds)]


def reply_stat(code: int) -> str:
    """The variable a stateless reply of the app counts in."""
    return REPLY_STATS[code_class(code)]


def parse_statistics(result: object) -> dict[str, int]:
    """jsonrpc stats.get_statistics' result ["group:name = value", ...] as a dict."""
    out: dict[str, int] = {}
    for item in result if isinstance(result, list) else ():
        name, sep, value = str(item).partition(" = ")
        if sep:
            try:
                out[name.strip()] = int(value)
            except ValueError:
                continue
    return out


def _by_label(name: str, doc: str, label: str, values: dict[str, int], other: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in values.items():
        family.add_metric([key], n)
    family.add_metric(["other"], other)
    return family


def kamailio_families(stats: dict[str, int]) -> Iterable[object]:
    """The per-message counters and the call counters, from Kamailio's statistics."""
    def get(name: str) -> int:
        return stats.get(name, 0)

    # Kamailio counts what it received per method and reply class. OPTIONS and the
    # app's stateless replies come from the app's statistics variables: every
    # rtimer run is a faked OPTIONS to the core.
    received = {m: get(f"core:rcv_requests_{m.lower()}") for m in METHODS}
    yield _by_label("gateway_sip_requests", "SIP requests received, by method", "method",
                    {m: get(f"script:{OPTIONS_STAT}") if m == "OPTIONS" else n for m, n in received.items()},
                    max(get("core:rcv_requests") - sum(received.values()) - get(f"script:{HTTP_STAT}"), 0))
    relayed = {c: get(f"core:rcv_replies_{c}") for c in CLASSES}
    yield _by_label("gateway_sip_replies", "SIP replies sent or relayed, by class", "code_class",
                    {c: n + get(f"script:{REPLY_STATS[c]}") for c, n in relayed.items()},
                    max(get("core:rcv_replies") - sum(relayed.values()), 0)
                    + get(f"script:{REPLY_STATS['other']}"))

    calls = CounterMetricFamily("gateway_calls", "Calls answered (2xx to an initial INVITE)",
                                labels=["direction"])
    for direction, var in CALL_STATS.items():
        calls.add_metric([direction], get(f"script:{var}"))
    yield calls

    counts = [get(f"script:{v}") for v in SETUP_STATS]
    cumulative, buckets = 0, []
    for bound, n in zip((*SETUP_BUCKETS, float("inf")), counts):
        cumulative += n
        buckets.append((floatToGoString(bound), cumulative))
    yield HistogramMetricFamily("gateway_call_setup_seconds", "INVITE to 200 OK", buckets=buckets,
                                sum_value=get(f"script:{SETUP_SUM_STAT}") / 1e6)


def observe_quality(call: "CallQuality") -> None:
    if call.mos is not None:
        CALL_MOS.observe(call.mos)
    for side, figures in call.came_from.items():
        if figures.loss is not None:
            CALL_LOSS.labels(side).observe(figures.loss)
        if figures.jitter_ms is not None:
            CALL_JITTER.labels(side).observe(figures.jitter_ms / 1000)


class LiveCollector:
    """Scrape-time gauges from the dependencies themselves."""

    def __init__(self, registrations: Callable[[], Optional[int]],
                 rtpengine_stats: Callable[[], Optional[dict]],
                 connection_stats: Optional[Callable[[], dict]] = None,
                 pbx_states: Callable[[], dict[str, bool]] = dict,
                 kamailio_stats: Optional[Callable[[], dict]] = None) -> None:
        self._registrations = registrations
        self._rtpengine_stats = rtpengine_stats
        self.connection_stats = connection_stats   # set by kemi/wsguard.py
        self.pbx_states = pbx_states               # set by kemi/pbxroute.py
        self.kamailio_stats = kamailio_stats       # Kamailio's statistics (kemi/wsguard.py)

    def collect(self) -> Iterable[object]:
        if self.kamailio_stats is not None:
            yield from kamailio_families(self.kamailio_stats())
        up = GaugeMetricFamily("gateway_up", "Dependency answers (1) or not (0)",
                               labels=["dependency"])
        regs = self._registrations()
        up.add_metric(["redis"], 0 if regs is None else 1)
        if regs is not None:
            yield GaugeMetricFamily("gateway_registrations_active",
                                    "Agents registered (bindings in Redis)", value=regs)
        stats = self._rtpengine_stats()
        up.add_metric(["rtpengine"], 0 if stats is None else 1)
        if stats is not None:
            cur = stats.get("currentstatistics", {})
            tot = stats.get("totalstatistics", {})
            sessions = int(cur.get("sessionsown", 0)) + int(cur.get("sessionsforeign", 0))
            yield GaugeMetricFamily("gateway_rtpengine_sessions",
                                    "Sessions rtpengine holds", value=sessions)
            yield GaugeMetricFamily("gateway_calls_active",
                                    "Calls with media set up (rtpengine sessions)", value=sessions)
            yield CounterMetricFamily("gateway_rtpengine_packets", "Packets relayed by rtpengine",
                                      value=int(tot.get("relayedpackets", 0)))
            yield CounterMetricFamily("gateway_rtpengine_errors",
                                      "Packet relay errors reported by rtpengine",
                                      value=int(tot.get("relayedpacketerrors", 0)))
        for pbx, is_up in self.pbx_states().items():
            up.add_metric([f"pbx {pbx}"], 1 if is_up else 0)
        yield up
        if self.connection_stats is not None:
            yield from connection_gauges(self.connection_stats())


def connection_gauges(stats: dict) -> Iterable[object]:
    """Capacity from Kamailio itself: WebSockets open (and GW_MAX_AGENTS), shm used."""
    if "connections" in stats:
        yield GaugeMetricFamily("gateway_connections", "WebSocket connections open",
                                value=stats["connections"])
    if "max_agents" in stats:
        yield GaugeMetricFamily("gateway_connections_limit",
                                "WebSocket connections accepted at most (GW_MAX_AGENTS)",
                                value=stats["max_agents"])
    if "shm_used_ratio" in stats:
        yield GaugeMetricFamily("gateway_shm_used_ratio",
                                "Kamailio shared memory in use (core.shmmem real_used/total)",
                                value=stats["shm_used_ratio"])


def render(live: Optional[LiveCollector] = None) -> bytes:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if live is not None:
        registry.register(live)
    return generate_latest(registry)
