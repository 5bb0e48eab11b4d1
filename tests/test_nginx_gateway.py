"""Issue 11, part 4: the production nginx (deploy/nginx/gateway.conf, rendered as
the nginx image does) in front of the real gateway, live:

* /health from outside MONITORING_CIDR answers only {"status": ...}, whatever
  header the client sends; from inside it, and straight at the gateway, in full;
* the WebSocket Origin check (GW_WS_ORIGINS) applies through nginx;
* the authentication-failure limits count the phones' own addresses (nginx's
  X-Real-IP, GW_WS_PROXIES), not nginx's: an attacker behind nginx is stopped,
  an agent behind the same nginx is not.

Clients come from their own loopback addresses (127.0.0.x); the monitoring
network is one of them (127.0.0.9/32).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import ssl

import pytest

from conftest import ARTIFACTS, _start_stack, _stop_stack, wait_until
from gw import stack
from support import relstack
from support.fakepbx import FakePbx
from support.wsphone import WsPhone
from test_auth_guard import ban_lines
from test_deploy_configs import loopback_site, make_cert, need, nginx_main_conf, tls_handshake

BASE = ARTIFACTS / "nginx_gateway"
ORIGIN = "https://agents.example.com"
MONITOR = "127.0.0.9"
OUTSIDE = "127.0.0.5"
PASSWORD = "secret"


@pytest.fixture(scope="module")
def front():
    nginx = need("nginx")
    shutil.rmtree(BASE, ignore_errors=True)
    (BASE / "nginx").mkdir(parents=True)
    s = _start_stack(BASE / "stack", {"GW_WS_ORIGINS": ORIGIN, "GW_WS_PROXIES": "127.0.0.1"})
    pbx = FakePbx(s.pbx.host, s.pbx.port, passwords={"1801": PASSWORD, "1802": PASSWORD})
    proc = None
    try:
        cert, key = make_cert(BASE / "nginx")
        site, port = loopback_site(BASE / "nginx", {
            "GW_TLS_CERT": str(cert), "GW_TLS_KEY": str(key),
            "GW_WS_UPSTREAM": str(s.cfg.ws_listen), "GW_MONITORING_CIDR": f"{MONITOR}/32"})
        conf = nginx_main_conf(BASE / "nginx", site)
        proc = stack.Daemon("nginx", [nginx, "-c", str(conf), "-p", str(BASE / "nginx"),
                                      "-e", str(BASE / "nginx" / "error.log")],
                            BASE / "nginx" / "nginx.log").start()
        ctx = ssl.create_default_context(cafile=str(cert))

        def tls_ready() -> bool:
            try:
                return tls_handshake(port, ctx)
            except OSError:
                return False
        stack.wait_for(tls_ready, 10, "nginx", proc)
        yield s, pbx, port, ctx
    finally:
        if proc is not None:
            proc.stop()
        pbx.close()
        _stop_stack(s)


def get(port: int, ctx: ssl.SSLContext, path: str, src: str,
        headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5, source_address=(src, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_health_through_nginx_tells_outsiders_only_the_status(front):
    s, _, port, ctx = front
    status, body = get(port, ctx, "/health", OUTSIDE)
    assert (status, json.loads(body)) == (200, {"status": "up"}), body
    # A client cannot ask for more: nginx overwrites the header.
    for forged in ("full", "FULL", ""):
        status, body = get(port, ctx, "/health?x=1", OUTSIDE, {"X-Gateway-Health": forged})
        assert json.loads(body) == {"status": "up"}, (forged, body)
    # Nor by spelling the path another way: no variant shows the dependencies.
    for variant in ("//health", "/./health", "/health/", "/%68ealth", "/health;x", "/HEALTH"):
        status, body = get(port, ctx, variant, OUTSIDE)
        assert "dependencies" not in body and str(s.sip) not in body, (variant, status, body)
    # The monitoring network, and whoever reaches the gateway itself (loopback), see it all.
    status, body = get(port, ctx, "/health", MONITOR)
    full = json.loads(body)
    assert status == 200 and full["node"] == str(s.sip) and full["dependencies"]["redis"] == "up"
    conn = http.client.HTTPConnection(s.cfg.ws_listen.host, s.cfg.ws_listen.port, timeout=5)
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read())["node"] == str(s.sip)
    conn.close()
    # Down is down for everyone, in as few words.
    s.rtpengine.stop()
    try:
        status, body = get(port, ctx, "/health", OUTSIDE)
        assert (status, json.loads(body)) == (503, {"status": "down"})
    finally:
        s.rtpengine = stack.Daemon(s.rtpengine.name, s.rtpengine.argv, s.rtpengine.log_path).start()
        stack.wait_for(lambda: stack.ng_ping(s.cfg.rtpengines[0]), 10, "rtpengine", s.rtpengine)


def upgrade(port: int, ctx: ssl.SSLContext, origin: str | None) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(OUTSIDE, 0))
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as ws:
        lines = ["GET / HTTP/1.1", "Host: gateway.example.com", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                 "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: sip"]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        ws.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = ws.recv(4096)
            if not chunk:
                break
            resp += chunk
        return resp


def test_origin_check_applies_through_nginx(front):
    s, _, port, ctx = front
    for origin in ("https://evil.example.net", None, "https://agents.example.com.evil.net"):
        resp = upgrade(port, ctx, origin)
        assert resp.startswith(b"HTTP/1.1 403"), (origin, resp[:200])
    assert upgrade(port, ctx, ORIGIN).startswith(b"HTTP/1.1 101"), "the agents' origin is refused"
    refused = [line for line in s.kamailio_log().splitlines() if "event=ws.origin_refused" in line]
    assert any("origin=https://evil.example.net " in line for line in refused), refused


def test_failure_limits_count_the_phones_behind_nginx(front):
    """Every WebSocket comes from nginx's 127.0.0.1, yet the attacker's address
    is banned for the DN and the agent's is not."""
    s, pbx, port, ctx = front
    attacker, agent = "127.0.0.81", "127.0.0.82"
    url = f"wss://127.0.0.1:{port}/"

    async def attempt(src: str, password: str) -> int:
        p = await WsPhone.connect(url, user="1801", domain="pbx.test", password=password,
                                  origin=ORIGIN, source_ip=src, ssl_context=ctx)
        try:
            return (await p.register()).status
        finally:
            await p.close()

    async def go():
        statuses = [await attempt(attacker, "wrong") for _ in range(8)]
        return statuses, await attempt(agent, PASSWORD)

    statuses, agent_status = asyncio.run(go())
    assert statuses == [401] * 5 + [403] * 3 and agent_status == 200
    lines = ban_lines(s, attacker)
    assert [(f["user"], f["failures"]) for f in lines] == [("1801", "5")], lines
    assert ban_lines(s, "127.0.0.1") == [], "nginx's own address was banned"
    r = s.redis_client()
    assert r.get(f"gw:auth:ban:{attacker}:1801") is not None
    assert json.loads(r.get("gw:reg:1801"))["src_ip"] == agent
    # Each connection's address is forgotten when it closes (websocket:closed runs
    # once Kamailio drops the connection: rm_delay_interval, 5 s, after the close).
    wait_until(lambda: "127.0.0.8" not in relstack.kamcmd(s.ctl(), "htable.dump", "gwwsip"), 20,
               "the closed WebSockets' addresses to leave htable gwwsip")
