"""Prometheus metrics for a forking server (prometheus_client multiprocess mode).

Kamailio forks its SIP and TCP workers from the process that imports the app,
so each worker writes its own mmap files under PROMETHEUS_MULTIPROC_DIR and a
scrape (served by whichever worker gets the HTTP request) sums them. What lives
in Redis or rtpengine is read at scrape time instead of being counted.
No Kamailio import here.
"""
from __future__ import annotations

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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: E402

SIP_REQUESTS = Counter("gateway_sip_requests", "SIP requests received, by method", ["method"])
SIP_REPLIES = Counter("gateway_sip_replies", "SIP replies sent or relayed, by class", ["code_class"])
CALLS = Counter("gateway_calls", "Calls answered (2xx to an initial INVITE)", ["direction"])
CALL_SETUP = Histogram("gateway_call_setup_seconds", "INVITE to 200 OK",
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60))
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

METHODS = {"INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "NOTIFY", "SUBSCRIBE",
           "REFER", "INFO", "UPDATE", "PRACK", "MESSAGE", "PUBLISH"}


def method_label(method: str) -> str:
    # Unbounded label values would let any sender blow up the series count.
    return method if method in METHODS else "other"


def code_class(code: int) -> str:
    return f"{code // 100}xx" if 100 <= code < 700 else "other"


# Per-message counters: the labelled children, looked up once per worker
# (labels() validates, builds a key and takes a lock on every call).
_REQUEST_CHILDREN: dict = {}
_REPLY_CHILDREN: dict = {}


def _inc(children: dict, counter, label: str) -> None:
    child = children.get(label)
    if child is None:
        child = children[label] = counter.labels(label)
    child.inc()


def count_request(method: str) -> None:
    _inc(_REQUEST_CHILDREN, SIP_REQUESTS, method_label(method))


def count_reply(code: int) -> None:
    _inc(_REPLY_CHILDREN, SIP_REPLIES, code_class(code))


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
                 pbx_states: Callable[[], dict[str, bool]] = dict) -> None:
        self._registrations = registrations
        self._rtpengine_stats = rtpengine_stats
        self.connection_stats = connection_stats   # set by kemi/wsguard.py
        self.pbx_states = pbx_states               # set by kemi/pbxroute.py

    def collect(self) -> Iterable[object]:
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
