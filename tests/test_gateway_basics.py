"""Readiness and the HTTP/WebSocket port, against the real daemons."""
from __future__ import annotations

import asyncio
import http.client
import subprocess

import websockets

from gw import stack
from support.ksr_double import load_snapshot, parse_api_list
from unit.test_ksr_calls import check_calls


def test_options_to_gateway_gets_200(gw):
    """Behaviour 9: OPTIONS addressed to the gateway itself is answered 200."""
    status = stack.sip_options(gw.sip.host, gw.sip.port, timeout=2)
    assert status == "SIP/2.0 200 Keepalive"


def test_websocket_handshake_sip_subprotocol(gw):
    async def go():
        async with websockets.connect(gw.ws_url, subprotocols=["sip"]) as ws:
            return ws.subprotocol
    assert asyncio.run(go()) == "sip"


def test_websocket_without_sip_subprotocol_refused(gw):
    async def go():
        try:
            async with websockets.connect(gw.ws_url, subprotocols=["chat"]):
                return "open"
        except websockets.exceptions.InvalidStatus as exc:
            return exc.response.status_code
        except websockets.exceptions.InvalidHandshake as exc:
            return type(exc).__name__
    assert asyncio.run(go()) != "open"


def test_plain_http_unknown_path_is_json_404(gw):
    conn = http.client.HTTPConnection(gw.cfg.ws_listen.host, gw.cfg.ws_listen.port, timeout=3)
    conn.request("GET", "/nope")
    resp = conn.getresponse()
    assert resp.status == 404
    assert b"error" in resp.read()


def test_live_ksr_api_matches_app_and_snapshot(gw):
    """The KSR double is generated from this list: prove it is the installed one."""
    out = subprocess.run(["kamcmd", "-s", gw.ctl(), "app_python.api_list"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    live = parse_api_list(out)
    assert check_calls(live) == []
    snapshot = load_snapshot()
    used = {k: v for k, v in snapshot.items() if k in live}
    assert used == {k: live[k] for k in used}


def _get(gw, path, method="GET"):
    conn = http.client.HTTPConnection(gw.cfg.ws_listen.host, gw.cfg.ws_listen.port, timeout=5)
    conn.request(method, path)
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def test_health_all_up(gw):
    import json
    status, body = _get(gw, "/health")
    assert status == 200, body
    data = json.loads(body)
    assert data["status"] == "up"
    assert set(data["dependencies"].values()) == {"up"}


def test_metrics_exposition_parses(gw):
    from prometheus_client.parser import text_string_to_metric_families
    stack.sip_options(gw.sip.host, gw.sip.port, 2)
    status, body = _get(gw, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert "gateway_sip_requests" in families
    opts = [s for s in families["gateway_sip_requests"].samples
            if s.name == "gateway_sip_requests_total" and s.labels.get("method") == "OPTIONS"]
    assert opts and opts[0].value >= 1
    ups = {s.labels["dependency"]: s.value for s in families["gateway_up"].samples}
    # A lone PBX is not probed (nothing to fail over to): it counts as up.
    assert ups == {"redis": 1.0, "rtpengine": 1.0, f"pbx {gw.pbx}": 1.0}


def test_http_wrong_method_405(gw):
    status, body = _get(gw, "/metrics", method="POST")
    assert status == 405 and "not allowed" in body
