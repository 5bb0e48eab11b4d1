import pytest

from kemi import settings


def test_defaults():
    cfg = settings.load({})
    assert str(cfg.ws_listen) == "127.0.0.1:8080"
    assert str(cfg.sip_listen) == "127.0.0.1:5070"
    assert str(cfg.pbx) == "127.0.0.1:5060"
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.rtpengine_sock == "udp:127.0.0.1:2223"
    assert cfg.media_ip == "127.0.0.1" and cfg.media_ports == (10000, 20000)
    assert cfg.cn_filter == "auto"
    assert cfg.kamailio_defines()[:4] == ["SIP_IP=127.0.0.1", "SIP_PORT=5070", "WS_IP=127.0.0.1",
                                         "WS_PORT=8080"]


def test_rtpengine_list():
    cfg = settings.load({"GW_RTPENGINE": "udp:127.0.0.1:2223, udp:127.0.0.2:2224"})
    assert cfg.rtpengine_sock == "udp:127.0.0.1:2223 udp:127.0.0.2:2224"


def test_pbx_may_be_a_host_name():
    assert settings.load({"GW_PBX": "sipserver.example.com:5060"}).pbx.host == "sipserver.example.com"


@pytest.mark.parametrize("name,value,words", [
    ("GW_WS_LISTEN", "8080", "HOST:PORT"),
    ("GW_SIP_LISTEN", "127.0.0.1:99999", "1-65535"),
    ("GW_SIP_LISTEN", "localhost:5070", "IP address"),
    ("GW_CN_FILTER", "yes", "auto, on or off"),
    ("GW_PBX", "bad_host!:5060", "host name"),
    ("GW_REDIS_URL", "http://x", "redis://"),
    ("GW_RTPENGINE", "tcp:127.0.0.1:2223", "udp:IP:PORT"),
    ("GW_RTPENGINE", " ", None),
    ("GW_MEDIA_IP", "nope", "IP address"),
    ("GW_MEDIA_PORTS", "20000-10000", "LOW"),
    ("GW_MEDIA_PORTS", "10000", "LOW-HIGH"),
    ("GW_LOG_LEVEL", "chatty", "debug"),
])
def test_bad_values_name_the_variable(name, value, words):
    if value.strip() == "":
        # Empty means "use the default", never an error.
        settings.load({name: value})
        return
    with pytest.raises(settings.SettingsError) as exc:
        settings.load({name: value})
    assert name in str(exc.value)
    assert words in str(exc.value)


def test_pbx_pointing_at_gateway_is_a_loop():
    with pytest.raises(settings.SettingsError, match="loop"):
        settings.load({"GW_PBX": "127.0.0.1:5070"})


def test_auth_limit_settings():
    cfg = settings.load({})
    assert (cfg.auth_fail_limit, cfg.auth_fail_ip_limit, cfg.auth_fail_window, cfg.auth_ban) == (5, 30, 600, 3600)
    assert cfg.ws_proxies == ()
    cfg = settings.load({"GW_AUTH_FAIL_LIMIT": "0", "GW_AUTH_FAIL_IP_LIMIT": "100",
                         "GW_WS_PROXIES": "127.0.0.1, ::1"})
    assert (cfg.auth_fail_limit, cfg.auth_fail_ip_limit, cfg.ws_proxies) == (0, 100, ("127.0.0.1", "::1"))


@pytest.mark.parametrize("name,value,words", [
    ("GW_AUTH_FAIL_LIMIT", "five", "whole number"),
    ("GW_AUTH_FAIL_IP_LIMIT", "-1", "whole number"),
    ("GW_AUTH_FAIL_WINDOW", "0", "seconds"),
    ("GW_AUTH_FAIL_WINDOW", "10m", "seconds"),
    ("GW_AUTH_BAN", "99999999", "seconds"),
    ("GW_WS_PROXIES", "nginx.local", "IP address"),
])
def test_bad_auth_settings_name_the_variable(name, value, words):
    with pytest.raises(settings.SettingsError) as exc:
        settings.load({name: value})
    assert name in str(exc.value) and words in str(exc.value)


def test_cn_filter_values():
    for value, expected in (("on", "on"), ("OFF", "off"), ("auto", "auto"), ("", "auto")):
        assert settings.load({"GW_CN_FILTER": value}).cn_filter == expected


def test_reconnect_wait_default_and_bounds():
    assert settings.load({}).reconnect_wait == 5.0
    assert settings.load({"GW_RECONNECT_WAIT": "0"}).reconnect_wait == 0.0
    assert settings.load({"GW_RECONNECT_WAIT": "2.5"}).reconnect_wait == 2.5
    for bad in ("-1", "31", "soon", "nan"):
        with pytest.raises(settings.SettingsError, match="GW_RECONNECT_WAIT"):
            settings.load({"GW_RECONNECT_WAIT": bad})
