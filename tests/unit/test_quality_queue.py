"""kemi/qualityroute.py against the KSR double (generated from Kamailio's real API
list): the worker queues rtpengine's reply, the timer process writes the line."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from kemi import logfmt, quality
from support.ksr_double import KsrDouble, load_snapshot

REPLY = (Path(__file__).resolve().parents[1] / "data" / "rtpengine" / "query_clean_phone_to_pbx.json").read_text()


@pytest.fixture
def app(monkeypatch):
    ksr = KsrDouble(load_snapshot())
    monkeypatch.setitem(sys.modules, "KSR", ksr)
    for name in ("kemi.ksr_edge", "kemi.qualityroute"):   # imported again, against the double
        monkeypatch.delitem(sys.modules, name, raising=False)
    route = importlib.import_module("kemi.qualityroute")
    pvs = {route.DLG_CALL: quality.dlg_call("outbound", "4681", "ftag"), "$dlg(start_ts)": "1000",
           route.QUERY_VAR: json.dumps(json.loads(REPLY), separators=(",", ":"))}
    ksr.returns[("pv", "get")] = pvs.get
    ksr.returns[("pv", "sets")] = lambda name, value: pvs.__setitem__(name, value) or 1
    ksr.returns[("kx", "get_callid")] = "call-1"
    ksr.returns[("mqueue", "mq_size")] = 0
    return ksr, route, pvs


def lines(ksr, level: str) -> list[dict[str, str]]:
    return [logfmt.parse(args[0].strip()) for args in ksr.called("", level)]


def test_the_worker_queues_and_the_timer_writes_the_line(app):
    ksr, route, pvs = app
    route.QualityReport._call_quality(answered=True)
    (queue, key, reply), = ksr.called("mqueue", "mq_add")
    assert queue == route.QUEUE and reply == pvs[route.QUERY_VAR]
    assert pvs[route.DLG_CALL] == quality.REPORTED and lines(ksr, "info") == []
    fetched = iter([1, -1])
    ksr.returns[("mqueue", "mq_fetch")] = lambda q: next(fetched)
    pvs.update({f"$mqk({route.QUEUE})": key, f"$mqv({route.QUEUE})": reply})
    route.QualityReport().ksr_quality_timer(None)
    (line,) = lines(ksr, "info")
    assert line["event"] == "call.quality" and line["call_id"] == "call-1"
    assert (line["dn"], line["direction"], line["mos"]) == ("4681", "outbound", "4.4")


def test_a_reported_call_is_not_queried_again(app):
    ksr, route, pvs = app
    pvs[route.DLG_CALL] = quality.REPORTED
    route.QualityReport._call_quality(answered=True)
    assert ksr.called("rtpengine", "rtpengine_query_v") == [] and ksr.called("mqueue", "mq_add") == []


def test_a_full_queue_costs_this_call_its_line_with_a_reason(app):
    ksr, route, pvs = app
    ksr.returns[("mqueue", "mq_size")] = route.QUEUE_MAX
    route.QualityReport._call_quality(answered=True)
    assert ksr.called("mqueue", "mq_add") == []
    (line,) = lines(ksr, "err")
    assert line["event"] == "call.quality_dropped" and line["call_id"] == "call-1"
    assert pvs[route.DLG_CALL] == quality.REPORTED
