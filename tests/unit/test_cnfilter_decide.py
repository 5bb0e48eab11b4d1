"""gw/cnfilter.py's decision, without nft or rtpengine: what make run does with
each GW_CN_FILTER value and each probe outcome (the real thing: tests/test_cn_filter.py,
tests/test_cn_make_run.py)."""
from __future__ import annotations

import pytest

from gw import cnfilter
from kemi import settings
from kemi.media import CnBlock


def probe_result(engine, blocked: bool, error: str = "") -> cnfilter.CnProbe:
    p = cnfilter.CnProbe(engine=f"udp:{engine}", cn=CnBlock.FILTER, error=error, target="127.0.0.1:20000",
                         sent={"PT 0": 4, "PT 13": 3, "PT 13 marker": 3})
    if not error:
        p.received = {0: 4} if blocked else {0: 4, 13: 6}
    return p


@pytest.fixture
def world(monkeypatch):
    """Fake nft and rtpengine: what was installed/removed, and what the probe sees."""
    state = {"installed": [], "removed": [], "blocked": True, "install_error": None, "error": "", "pruned": 0}

    def install(ports, owner, wrap=None):
        if state["install_error"]:
            raise cnfilter.FilterError(state["install_error"])
        state["installed"].append(ports)
        return cnfilter.table_name(ports)

    monkeypatch.setattr(cnfilter, "install", install)
    monkeypatch.setattr(cnfilter, "remove", lambda ports, wrap=None: state["removed"].append(ports))
    monkeypatch.setattr(cnfilter, "prune_stale", lambda wrap=None: state.__setitem__("pruned", state["pruned"] + 1))
    monkeypatch.setattr(cnfilter, "probe", lambda engine, *a, **k: probe_result(engine, state["blocked"],
                                                                                state["error"]))
    return state


def cfg(value: str = "auto", engines: str = "udp:127.0.0.1:2223"):
    return settings.load({"GW_CN_FILTER": value, "GW_RTPENGINE": engines, "GW_MEDIA_PORTS": "20000-20099"})


def test_auto_installs_for_our_rtpengine_and_takes_the_filter_path(world):
    d = cnfilter.decide(cfg(), [(20000, 20099)], "make run pid 1")
    assert d.cn is CnBlock.FILTER and d.installed == [(20000, 20099)] and world["pruned"] == 1
    assert "PT 13 dropped in front of rtpengine" in d.message and "gw_cn_20000_20099" in d.message
    assert cnfilter.release(d) == [] and world["removed"] == [(20000, 20099)] and d.installed == []


def test_a_filter_someone_else_installed_counts(world):
    d = cnfilter.decide(cfg(), [], "make run pid 1")          # rtpengine not ours: nothing installed
    assert d.cn is CnBlock.FILTER and d.installed == [] and "already in place" in d.message
    assert world["pruned"] == 0


def test_no_cap_net_admin_falls_back_and_says_why(world):
    world["install_error"] = "nft: Operation not permitted (needs CAP_NET_ADMIN)"
    world["blocked"] = False
    d = cnfilter.decide(cfg(), [(20000, 20099)], "make run pid 1")
    assert d.cn is CnBlock.TRANSCODE and d.installed == []
    assert "CAP_NET_ADMIN" in d.message and "transcoder" in d.message and "FLAGS.md" in d.message


def test_one_rtpengine_without_the_filter_means_the_transcoder_for_all(world, monkeypatch):
    monkeypatch.setattr(cnfilter, "probe", lambda engine, *a, **k: probe_result(engine, engine.port == 2223))
    d = cnfilter.decide(cfg(engines="udp:127.0.0.1:2223 udp:127.0.0.1:2224"), [], "x")
    assert d.cn is CnBlock.TRANSCODE and "udp:127.0.0.1:2224: PT 13 came out" in d.message
    assert "udp:127.0.0.1:2223" not in d.message


def test_on_refuses_to_start_without_a_working_filter_and_cleans_up(world):
    world["blocked"] = False
    with pytest.raises(cnfilter.FilterError, match="GW_CN_FILTER=on, but .*PT 13 came out"):
        cnfilter.decide(cfg("on"), [(20000, 20099)], "make run pid 1")
    assert world["installed"] == world["removed"] == [(20000, 20099)]


def test_rtpengine_down_is_no_filter(world):
    world["error"] = "rtpengine 127.0.0.1:2223 did not answer 'offer' within 2.0s"
    d = cnfilter.decide(cfg(), [], "x")
    assert d.cn is CnBlock.TRANSCODE and "did not answer" in d.message


def test_off_never_touches_nft(world):
    d = cnfilter.decide(cfg("off"), [(20000, 20099)], "x")
    assert d.cn is CnBlock.TRANSCODE and d.installed == [] and world["installed"] == []
    assert "GW_CN_FILTER=off" in d.message and world["pruned"] == 0


def test_probe_verdicts():
    assert probe_result(settings.HostPort("127.0.0.1", 1), True).cn_blocked
    assert not probe_result(settings.HostPort("127.0.0.1", 1), False).cn_blocked
    silent = cnfilter.CnProbe(engine="udp:x", cn=CnBlock.FILTER, received={})
    assert not silent.cn_blocked and not silent.relayed           # no audio: proves nothing
    assert "PT 13: 6" in probe_result(settings.HostPort("127.0.0.1", 1), False).summary()
