"""The WWE connector bridge on its own: settings validation, its certificate,
CORS, JSON errors, and the page protocol, with a stand-in page (a WebSocket
client) instead of the browser. No gateway needed. The running bridge is the
`gateway-agent` installed from the wheel (agent_install, tests/conftest.py)."""
from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from gateway_agent import cert as cert_mod
from gateway_agent import settings as settings_mod
from support.agent_harness import Bridge, wait_for

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "_artifacts" / "agent_bridge"
WWE = "https://wwe.contact-centre.test"


# ------------------------------------------------------------------ settings
def test_settings_defaults():
    cfg = settings_mod.load({})
    assert cfg.gateway_ws == "ws://127.0.0.1:8080"
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8000)
    assert cfg.origins == ()
    assert cfg.page_url == "https://127.0.0.1:8000/phone"


def test_settings_origins_normalised():
    cfg = settings_mod.load({"AGENT_ORIGINS": "https://WWE.example.com:443, http://wwe.lan:8090 https://a.b"})
    assert cfg.origins == ("https://wwe.example.com", "http://wwe.lan:8090", "https://a.b")


@pytest.mark.parametrize("var,value,words", [
    ("AGENT_ORIGINS", "*", "wildcards"),
    ("AGENT_ORIGINS", "https://*.example.com", "wildcards"),
    ("AGENT_ORIGINS", "wwe.example.com", "not an origin"),
    ("AGENT_ORIGINS", "https://wwe.example.com/ui", "no path"),
    ("AGENT_LISTEN", "localhost:8000", "not an IP"),
    ("AGENT_LISTEN", "127.0.0.1", "IP:PORT"),
    ("AGENT_LISTEN", "127.0.0.1:99999", "bad port"),
    ("AGENT_GATEWAY_WS", "http://127.0.0.1:8080", "ws:// or wss://"),
    ("AGENT_GATEWAY_WS", "ws://:8080", "host"),
])
def test_settings_errors_name_the_variable(var, value, words):
    with pytest.raises(settings_mod.SettingsError) as exc:
        settings_mod.load({var: value})
    assert str(exc.value).startswith(f"{var}:") and words in str(exc.value)


def test_bad_setting_exits_2_naming_the_variable(tmp_path, agent_install):
    r = agent_install.run("--no-open", env=agent_install.env({"AGENT_ORIGINS": "*",
                                                               "AGENT_CERT_DIR": str(tmp_path)}))
    assert r.returncode == 2
    assert "AGENT_ORIGINS" in r.stderr


# ------------------------------------------------------------------ certificate
def test_certificate_covers_loopback_and_is_reused(tmp_path):
    from cryptography import x509
    first = cert_mod.ensure(tmp_path, "127.0.0.1")
    assert first.created
    c = x509.load_pem_x509_certificate(first.cert.read_bytes())
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"
    again = cert_mod.ensure(tmp_path, "127.0.0.1")
    assert not again.created and again.spki_sha256 == first.spki_sha256
    other = cert_mod.ensure(tmp_path, "127.0.0.2")   # another listen address: a new certificate
    assert other.created


# ------------------------------------------------------------------ the running bridge
@pytest.fixture(scope="module")
def bridge(agent_install):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    b = Bridge.start("ws://127.0.0.1:9", WWE, ARTIFACTS / "cert", ARTIFACTS / "bridge.log",
                     command=agent_install.command, base_env=agent_install.env())
    yield b
    b.stop()


class FakePage:
    """Stands in for the phone page: answers every command, pushes state."""

    def __init__(self, bridge: Bridge, origin: str | None = None) -> None:
        ctx = ssl.create_default_context(cafile=str(ARTIFACTS / "cert" / "bridge-cert.pem"))
        self.ws = ws_connect(f"wss://127.0.0.1:{bridge.port}/phone/ws", ssl=ctx,
                             origin=origin or f"https://127.0.0.1:{bridge.port}",
                             open_timeout=5).__enter__()
        self.commands: list[dict] = []

    def next_command(self, timeout: float = 5) -> dict:
        msg = json.loads(self.ws.recv(timeout=timeout))
        self.commands.append(msg)
        return msg

    def reply(self, msg: dict, ok: bool = True, **result) -> None:
        self.ws.send(json.dumps({"reply": msg["id"], "ok": ok,
                                 **({"result": result} if ok else {"error": result.get("error")})}))

    def state(self, **state) -> None:
        self.ws.send(json.dumps({"type": "state", "state": state}))

    def close(self) -> None:
        self.ws.close()


def test_health_and_page_served(bridge):
    status, body, _ = bridge.get("/health")
    assert status == 200 and body["status"] == "ok"
    status, html, headers = bridge.get("/phone")
    assert status == 200 and "Agent phone" in html
    assert "script-src 'self'" in headers["content-security-policy"]
    status, js, _ = bridge.get("/phone/phone.js")
    assert status == 200 and "JsSIP" in js and "cdn" not in js.lower()[:2000]


def test_cors_only_for_configured_origins(bridge):
    status, _, h = bridge.request("OPTIONS", "/RegisterDn/", origin=WWE,
                                  headers={"Access-Control-Request-Method": "POST"})
    assert status == 204 and h["access-control-allow-origin"] == WWE
    assert h["access-control-allow-origin"] != "*"
    for method, path in (("OPTIONS", "/RegisterDn/"), ("POST", "/calls"), ("GET", "/Ping")):
        status, body, h = bridge.request(method, path, origin="https://evil.example", body={})
        assert status == 403, (method, path, status)
        assert "not allowed" in body["error"]
        assert "access-control-allow-origin" not in h
    status, _, h = bridge.get("/GetIsEndpointActive", origin=WWE)
    assert status == 200 and h["access-control-allow-origin"] == WWE and h["vary"] == "Origin"


@pytest.mark.parametrize("method,path,body,raw,code,words", [
    ("POST", "/RegisterDn/", None, b"not json", 400, "not JSON"),
    ("POST", "/RegisterDn/", {"addresses": [], "users": ["1001"]}, None, 400, "addresses"),
    ("POST", "/RegisterDn/", {"addresses": ["pbx.test"], "users": ["10 01"]}, None, 400, "DN"),
    ("POST", "/RegisterDn/", {"addresses": ["pbx test"], "users": ["1001"]}, None, 400, "SIP server"),
    ("POST", "/SetOptions", {"value": [1, 2]}, None, 400, "object"),
    ("POST", "/SetPingPeriod", {"value": "soon"}, None, 400, "ping period"),
    ("POST", "/calls", {}, None, 400, '"to"'),
    ("POST", "/calls", {"to": "12<script>"}, None, 400, "destination"),
    ("POST", "/calls/current/dtmf", {"tones": "12x"}, None, 400, "DTMF"),
    ("POST", "/audio", {"devices": {"speaker": {"volume": 300}}}, None, 400, "0..100"),
    ("GET", "/nowhere", None, None, 404, "Not Found"),
    ("DELETE", "/GetDnSIP", None, None, 405, "Not Allowed"),
])
def test_bad_requests_get_4xx_with_json_reason(bridge, method, path, body, raw, code, words):
    status, payload, headers = bridge.request(method, path, body=body, raw=raw, origin=WWE)
    assert status == code, payload
    assert headers["content-type"].startswith("application/json")
    assert words in payload["error"]


def test_call_control_without_page_is_503(bridge):
    status, body, _ = bridge.post("/calls", {"to": "5000"})
    assert status == 503 and "/phone" in body["error"]
    params = bridge.get("/GetSIPEndpointParameters")[1]["GetSIPEndpointParametersResult"]
    assert params["EndpointStatus"] == "EndpointStatus_NoPhonePage"


def test_page_socket_refuses_other_origins(bridge):
    with pytest.raises(InvalidStatus) as exc:
        FakePage(bridge, origin=WWE)
    assert exc.value.response.status_code == 403


def test_bridge_drives_the_page(bridge):
    """RegisterDn becomes a register command with WWE's settings; the page's
    state answers GetIsEndpointActive, /session and /Ping; call control is
    relayed to the page and its refusals come back as 409."""
    page = FakePage(bridge)
    try:
        assert page.next_command()["cmd"] == "hello"
        wait_for(lambda: bridge.get("/health")[1]["page"], 5, "page seen by the bridge")
        page.state(registration="unregistered", calls=[])
        assert bridge.post("/SetOptions", {"value": {"sipendpoint.dtmf-method": "info"}})[0] == 200
        assert bridge.post("/SetSIPEndpointParameters", {"value": {"password": "pw"}})[0] == 200

        import threading
        result = {}
        t = threading.Thread(target=lambda: result.update(
            r=bridge.post("/RegisterDn/", {"addresses": ["sip.example:5060"], "users": ["2002"]})))
        t.start()
        cmd = page.next_command()
        assert cmd["cmd"] == "register"
        assert cmd["args"] == {"dn": "2002", "domain": "sip.example", "registrar": "sip:sip.example:5060",
                               "password": "pw", "display_name": "", "expires": 600,
                               "gateway_ws": "ws://127.0.0.1:9", "dtmf": "info", "auto_answer": False}
        page.reply(cmd, registration="registering")
        t.join(5)
        assert result["r"][:2] == (200, {"RegisterDnResult": True})
        assert bridge.get("/GetIsEndpointActive")[1] == {"GetIsEndpointActiveResult": False}

        page.state(registration="registered", dn="2002", calls=[
            {"uuid": "u1", "call_id": "c1", "direction": "incoming", "peer": "555", "state": "ringing"}])
        wait_for(lambda: bridge.get("/GetIsEndpointActive")[1]["GetIsEndpointActiveResult"], 5, "active")
        session = bridge.get("/session")[1]
        assert session["connectivities"]["connections"] == [
            {"server": "sip.example:5060", "user": "2002", "state": "REGISTERED"}]
        assert session["phone"]["calls"][0]["state"] == "RINGING"

        t = threading.Thread(target=lambda: result.update(r=bridge.post("/calls/u1/answer")))
        t.start()
        cmd = page.next_command()
        assert cmd == {"id": cmd["id"], "cmd": "answer", "args": {"uuid": "u1"}}
        page.reply(cmd, ok=False, error="call is talking, not ringing")
        t.join(5)
        assert result["r"][0] == 409 and "not ringing" in result["r"][1]["error"]
        assert bridge.post("/calls/nope/hold")[0] == 404

        events = bridge.get("/Ping")[1]["PingResult"]
        kinds = [(e["event"], e.get("state")) for e in events]
        assert ("registration", "registered") in kinds and ("call", "ringing") in kinds
        assert bridge.get("/Ping")[1]["PingResult"][1:] == []   # drained

        # One agent, one page: a newer page takes over, the old one is told why.
        newer = FakePage(bridge)
        try:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    page.next_command()
            assert closed.value.rcvd.code == 4001
            hello = newer.next_command()
            assert hello["cmd"] == "hello"
            again = newer.next_command()
            assert again["cmd"] == "register" and again["args"]["dn"] == "2002"
        finally:
            newer.close()
    finally:
        page.close()
    wait_for(lambda: not bridge.get("/health")[1]["page"], 5, "page gone")
