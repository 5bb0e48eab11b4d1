"""GW_MAX_AGENTS -> Kamailio's memory, connection and file limits (kemi/sizing.py)."""
import pytest

from kemi import settings, sizing
from kemi.sizing import MB


def test_default_node_carries_10000_agents():
    s = sizing.plan(10000)
    assert s.tcp_max_connections == 12500          # agents + 25 % headroom
    # Every TCP slot taken (a half-open flood) and every agent upgraded, and the
    # reserve for transactions and dialogs is still free.
    peak = (sizing.BASE_SHM_BYTES + s.tcp_max_connections * sizing.TCP_CONN_BYTES
            + s.max_agents * sizing.WS_CONN_BYTES)
    assert s.shm_mb * MB - peak >= s.shm_reserve_bytes
    assert s.shm_mb == 1472 and s.shm_mb % 64 == 0
    assert s.nofile == 12500 + sizing.BASE_FDS
    assert 0.6 < s.shm_refuse_ratio < 0.75


@pytest.mark.parametrize("agents", [1, 300, 1000, 5000, 10000, 20000, 100000])
def test_reserve_always_survives_a_full_node(agents):
    s = sizing.plan(agents)
    used = (s.tcp_max_connections * sizing.TCP_CONN_BYTES + s.max_agents * sizing.WS_CONN_BYTES
            + sizing.BASE_SHM_BYTES)
    assert s.shm_mb * MB - used >= s.shm_reserve_bytes
    assert s.tcp_max_connections >= agents + sizing.HEADROOM_MIN
    assert s.shm_mb >= 128 and s.pkg_mb >= 16


def test_sizes_grow_with_agents():
    small, big = sizing.plan(300), sizing.plan(20000)
    assert small.shm_mb < big.shm_mb and small.tcp_max_connections < big.tcp_max_connections
    assert small.tcp_max_connections == 300 + sizing.HEADROOM_MIN


def test_media_ports_and_rtpengine_files():
    s = sizing.plan(10000)
    assert s.media_ports_wanted == 40000
    assert s.media_shortfall((10000, 20000)) == 10000 - 2500
    assert s.media_shortfall((10000, 60000)) == 0
    assert s.rtpengine_nofile((10000, 20000)) == 10001 + sizing.BASE_FDS


def test_nofile_check_names_the_fix():
    sizing.check_nofile(13524, 65536, "Kamailio")
    sizing.check_nofile(13524, -1, "Kamailio")      # RLIM_INFINITY
    with pytest.raises(sizing.SizingError, match="GW_MAX_AGENTS.*13524.*ulimit"):
        sizing.check_nofile(13524, 4096, "Kamailio")


def test_zero_agents_is_an_error():
    with pytest.raises(sizing.SizingError):
        sizing.plan(0)


def test_settings_carry_the_sizing_to_kamailio():
    cfg = settings.load({"GW_MAX_AGENTS": "300"})
    assert cfg.max_agents == 300 and cfg.sizing == sizing.plan(300)
    assert "TCP_MAX_CONNECTIONS=556" in cfg.kamailio_defines()
    assert f"OPEN_FILES={sizing.plan(300).nofile}" in cfg.kamailio_defines()


@pytest.mark.parametrize("name,value", [("GW_MAX_AGENTS", "0"), ("GW_MAX_AGENTS", "lots"),
                                        ("GW_MAX_AGENTS", "2000000"), ("GW_WS_MAX_PER_IP", "-1"),
                                        ("GW_WS_PROXIES", "nginx")])
def test_bad_capacity_settings_name_the_variable(name, value):
    with pytest.raises(settings.SettingsError, match=name):
        settings.load({name: value})


def test_capacity_defaults():
    cfg = settings.load({})
    assert (cfg.max_agents, cfg.ws_max_per_ip, cfg.ws_proxies) == (10000, 1000, ())
    cfg = settings.load({"GW_WS_PROXIES": "127.0.0.1, ::1", "GW_WS_MAX_PER_IP": "0"})
    assert cfg.ws_proxies == ("127.0.0.1", "::1") and cfg.ws_max_per_ip == 0
