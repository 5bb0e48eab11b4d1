"""GW_PBX as a list in priority order (issue 13): parsing, the dispatcher list
Kamailio loads, who is trusted, when PBXs are probed, and /health's verdict."""
from __future__ import annotations

import pytest

from kemi import health, metrics, pbx, settings
from kemi.settings import HostPort


def test_one_pbx_is_as_before():
    cfg = settings.load({"GW_PBX": "127.0.0.1:5060"})
    assert cfg.pbxs == (HostPort("127.0.0.1", 5060),)
    assert cfg.pbx == HostPort("127.0.0.1", 5060)
    assert cfg.pbx_uri == "sip:127.0.0.1:5060;transport=udp"
    # A lone PBX is never probed: nothing to fail over to, and no OPTIONS it never got before.
    assert cfg.pbx_probe == 5 and cfg.pbx_probe_interval == 0
    assert "PBX_PROBE=0" in cfg.kamailio_defines()
    assert cfg.dispatcher_list().splitlines()[1:] == ["1 sip:127.0.0.1:5060;transport=udp 0 1"]


@pytest.mark.parametrize("value", ["127.0.0.1:5060,127.0.0.6:5070,sip2.example.com:5060",
                                   "127.0.0.1:5060 127.0.0.6:5070  sip2.example.com:5060",
                                   " 127.0.0.1:5060, 127.0.0.6:5070 ,SIP2.example.com:5060 "])
def test_list_in_priority_order_comma_or_space(value):
    cfg = settings.load({"GW_PBX": value})
    assert [str(p) for p in cfg.pbxs] == ["127.0.0.1:5060", "127.0.0.6:5070", "sip2.example.com:5060"]
    assert cfg.pbx == HostPort("127.0.0.1", 5060)
    # dispatcher sorts by priority, highest first: the first entry gets the highest.
    assert cfg.dispatcher_list().splitlines()[1:] == [
        "1 sip:127.0.0.1:5060;transport=udp 0 3",
        "1 sip:127.0.0.6:5070;transport=udp 0 2",
        "1 sip:sip2.example.com:5060;transport=udp 16 1",   # a name: resolved when used
    ]
    assert cfg.pbx_probe_interval == 5
    assert "PBX_PROBE=5" in cfg.kamailio_defines()


def test_every_pbx_is_trusted_to_call_agents():
    cfg = settings.load({"GW_PBX": "127.0.0.1:5060,127.0.0.6:5060,127.0.0.6:5062",
                         "GW_PBX_ALLOW": "127.0.0.9"})
    assert cfg.trusted_sources == ("127.0.0.1", "127.0.0.6", "127.0.0.9")


def test_probe_interval_setting():
    two = {"GW_PBX": "127.0.0.1:5060,127.0.0.6:5060"}
    assert settings.load({**two, "GW_PBX_PROBE": "2"}).pbx_probe_interval == 2
    assert settings.load({**two, "GW_PBX_PROBE": "0"}).pbx_probe_interval == 0


@pytest.mark.parametrize("value,words", [
    ("127.0.0.1:5060,,127.0.0.6:5060", "empty entry"),
    ("127.0.0.1:5060,", "empty entry"),
    (",127.0.0.1:5060", "empty entry"),
    ("127.0.0.1:5060, ,127.0.0.6:5060", "empty entry"),
    ("127.0.0.1:5060,127.0.0.1:5060", "listed twice"),
    ("pbx.example.com:5060 PBX.example.com:5060", "listed twice"),
    ("127.0.0.1:5060,127.0.0.6:70000", "1-65535"),
    ("127.0.0.1:5060,127.0.0.6:x", "1-65535"),
    ("127.0.0.1:5060,127.0.0.6:0", "1-65535"),
    ("127.0.0.1:5060,127.0.0.6", "HOST:PORT"),
    ("127.0.0.1:5060;127.0.0.6:5060", "host name"),
    ("127.0.0.6:5060,127.0.0.1:5070", "loop"),
])
def test_bad_lists_name_the_variable(value, words):
    with pytest.raises(settings.SettingsError) as exc:
        settings.load({"GW_PBX": value})
    assert "GW_PBX" in str(exc.value)
    assert words in str(exc.value)


@pytest.mark.parametrize("value", ["-1", "x", "3601", "1.5"])
def test_bad_probe_interval_names_the_variable(value):
    with pytest.raises(settings.SettingsError, match="GW_PBX_PROBE"):
        settings.load({"GW_PBX_PROBE": value})


def test_health_needs_one_pbx_up_not_all():
    base = {"redis": "up", "rtpengine udp:127.0.0.1:2223": "up"}
    assert health.verdict(base)
    assert health.verdict({**base, "pbx 127.0.0.1:5060": "up"})
    assert health.verdict({**base, "pbx 127.0.0.1:5060": "down", "pbx 127.0.0.6:5060": "up"})
    assert not health.verdict({**base, "pbx 127.0.0.1:5060": "down", "pbx 127.0.0.6:5060": "down"})
    assert not health.verdict({**base, "redis": "down", "pbx 127.0.0.1:5060": "up"})
    assert not health.verdict({**base, "rtpengine udp:127.0.0.1:2223": "down"})


def test_gateway_up_has_one_series_per_pbx():
    live = metrics.LiveCollector(lambda: 3, lambda: None,
                                 pbx_states=lambda: {"127.0.0.1:5060": True, "127.0.0.6:5060": False})
    up = {s.labels["dependency"]: s.value for fam in live.collect() if fam.name == "gateway_up"
          for s in fam.samples}
    assert up == {"redis": 1, "rtpengine": 0, "pbx 127.0.0.1:5060": 1, "pbx 127.0.0.6:5060": 0}


def test_failover_only_for_a_dark_pbx_or_a_5xx():
    assert pbx.failover_reason(408, timed_out=True, replied=False) == "no_answer"
    assert pbx.failover_reason(503, timed_out=False, replied=True) == "503"
    assert pbx.failover_reason(500, timed_out=False, replied=True) == "500"
    # Ringing, then no answer: the call stays where it rang.
    assert pbx.failover_reason(408, timed_out=True, replied=True) is None
    assert pbx.failover_reason(486, timed_out=False, replied=True) is None
    assert pbx.failover_reason(404, timed_out=False, replied=True) is None
    assert pbx.failover_reason(603, timed_out=False, replied=True) is None


def test_trusted_addresses_resolve_names():
    got = pbx.trusted_addresses(["127.0.0.6", "no-such-host.invalid"])
    assert got == {"127.0.0.6", "no-such-host.invalid"}
    assert pbx.trusted_addresses(["localhost"]) <= {"127.0.0.1", "::1"}

