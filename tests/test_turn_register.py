"""Issue 11, part 3: TURN credentials only for authenticated agents.

The 200 OK to a REGISTER the PBX accepted carries X-TURN (an RTCIceServer in the
coturn REST scheme), checked here against an HMAC computed independently and
against a real coturn; the 401 carries none, nor does anything else; the
anonymous /turn hands out nothing; and the phone page (JsSIP in headless
chromium) makes its calls with the TURN server it was given: coturn, run with
the shipped turnserver.conf, logs the page's allocation under that username.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

import pytest

from conftest import ARTIFACTS, _start_stack, _stop_stack, wait_until
from gw import stack
from support import stun
from support.agent_harness import Bridge, Browser, wait_for
from support.fakepbx import FakePbx
from support.wsphone import WsPhone
from test_ops_metrics import http_get

ROOT = Path(__file__).resolve().parent.parent
BASE = ARTIFACTS / "turn"
DOMAIN = "pbx.test"
PASSWORD = "secret"
WWE = "https://wwe.contact-centre.test"
PAGE_DN = "2701"


@pytest.fixture(scope="module")
def turn():
    """coturn as shipped (deploy/coturn/turnserver.conf, REST secret on the command
    line, loopback, verbose so that allocations are logged), a gateway whose
    GW_TURN_* point at it, and a Digest PBX."""
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        pytest.fail("turnserver (coturn) is missing: run scripts/install-deps.sh")
    shutil.rmtree(BASE, ignore_errors=True)
    BASE.mkdir(parents=True)
    secret = secrets.token_urlsafe(24)          # generated here: no secret in the repository
    port = stack.free_port()
    lo, hi = stack.free_port_range(20)
    coturn = stack.Daemon("turnserver", [
        turnserver, "-c", str(ROOT / "deploy" / "coturn" / "turnserver.conf"),
        f"--static-auth-secret={secret}", f"--listening-port={port}",
        "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--min-port={lo}", f"--max-port={hi}",
        f"--pidfile={BASE / 'turnserver.pid'}", "--log-file=stdout", "--verbose"],
        BASE / "turnserver.log").start()
    s = None
    pbx = None
    try:
        def stun_ok() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                packet, txid = stun.binding_request()
                try:
                    return stun.transact(sock, ("127.0.0.1", port), packet, txid, timeout=0.3) is not None
                except OSError:
                    return False
        stack.wait_for(stun_ok, 10, "coturn", coturn)
        s = _start_stack(BASE / "stack", {
            "GW_TURN_SECRET": secret,
            "GW_TURN_URIS": f"turn:127.0.0.1:{port}?transport=udp",
        })
        pbx = FakePbx(s.pbx.host, s.pbx.port, passwords={"1701": PASSWORD, PAGE_DN: PASSWORD})
        yield s, pbx, coturn, secret, port
    finally:
        if pbx is not None:
            pbx.close()
        if s is not None:
            _stop_stack(s)
        coturn.stop()


def hmac_b64(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


# ------------------------------------------------------------------- header
def test_register_200_carries_turn_credentials_and_nothing_else_does(turn):
    s, pbx, coturn, secret, port = turn
    uri = f"turn:127.0.0.1:{port}?transport=udp"

    async def go():
        p = await WsPhone.connect(s.ws_url, user="1701", domain=DOMAIN, password=PASSWORD)
        t0 = time.time()
        first = await p.register(expires=600)
        long = await p.register(expires=7200)
        bye = await p.unregister()
        wrong = await WsPhone.connect(s.ws_url, user="1701", domain=DOMAIN, password="wrong")
        refused = await wrong.register()
        replies = list(p.received) + list(wrong.received)
        await p.close()
        await wrong.close()
        return t0, first, long, bye, refused, replies

    t0, first, long, bye, refused, replies = asyncio.run(go())
    assert first.status == 200 and long.status == 200 and bye.status == 200 and refused.status == 401
    carrying = [r for r in replies if r.get("X-TURN") is not None]
    assert carrying == [first, long], [r.summary() for r in carrying]
    assert all(r.status == 401 for r in replies if r.status != 200)

    for reply, lifetime in ((first, 600 + 60), (long, 3600)):     # capped by GW_TURN_TTL
        server = json.loads(reply.get("X-TURN"))
        assert set(server) == {"urls", "username", "credential"} and server["urls"] == [uri]
        expiry, _, dn = server["username"].partition(":")
        assert dn == "1701" and t0 + lifetime - 5 <= int(expiry) <= time.time() + lifetime + 1, server
        # coturn's use-auth-secret rule, computed independently of kemi/turn.py
        assert server["credential"] == hmac_b64(secret, server["username"])

    # ... and coturn takes them.
    server = json.loads(first.get("X-TURN"))
    client = stun.TurnClient(("127.0.0.1", port), server["username"], server["credential"])
    try:
        resp = client.allocate()
        assert resp.mtype == stun.ALLOCATE | stun.SUCCESS, resp.error()
        client.release()
    finally:
        client.close()
    assert secret not in s.kamailio_log()


def test_no_anonymous_turn(turn):
    s = turn[0]
    for method in ("GET", "POST"):
        status, body, headers = http_get(s, "/turn?agent=1701", method=method)
        assert status == 404 and headers["content-type"] == "application/json", body
        data = json.loads(body)
        assert "X-TURN" in data["error"] and set(data) == {"error"}, data


def test_no_turn_header_without_turn_settings(gw):
    """GW_TURN_SECRET unset (the session gateway): the 200 carries no X-TURN."""
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)

    async def go():
        p = await WsPhone.connect(gw.ws_url, user="1702", domain=DOMAIN)
        resp = await p.register()
        await p.unregister()
        await p.close()
        return resp

    try:
        resp = asyncio.run(go())
    finally:
        pbx.close()
    assert resp.status == 200 and resp.get("X-TURN") is None
    assert http_get(gw, "/turn?agent=1702")[0] == 404


# --------------------------------------------------------------------- page
def test_page_calls_use_the_turn_server_it_was_given(turn, agent_install):
    """The page (served by the connector installed from its wheel, as on an agent's
    PC) registers through the bridge, picks X-TURN up, and its call's
    RTCPeerConnection allocates on that TURN server with those credentials."""
    s, pbx, coturn, secret, port = turn
    if shutil.which("chromium") is None:
        pytest.fail("chromium is missing: run agent/install.sh (make deps)")
    workdir = BASE / "agent"
    workdir.mkdir(exist_ok=True)
    bridge = Bridge.start(s.ws_url, WWE, workdir / "cert", workdir / "bridge.log",
                          command=agent_install.command, base_env=agent_install.env())
    browser = None
    try:
        browser = Browser(f"{bridge.base}/phone", bridge.spki, workdir)
        wait_for(lambda: bridge.get("/health")[1]["page"], 30, "the phone page to connect to the bridge")
        status, body, _ = bridge.post("/register", {"connections": [
            {"user": PAGE_DN, "server": DOMAIN, "password": PASSWORD}]}, origin=WWE)
        assert status == 200, body
        browser.wait_state("registered", 20)
        given = wait_for(lambda: browser.eval("window.phone.state().turn"), 10, "the page's TURN server")
        assert given["urls"] == [f"turn:127.0.0.1:{port}?transport=udp"]
        assert given["username"].endswith(f":{PAGE_DN}")
        allocations_before = allocations(coturn, given["username"])

        status, made, _ = bridge.post("/calls", {"to": "5000"}, origin=WWE)
        assert status == 201, made
        browser.wait_state("talking", 20)
        wait_for(lambda: allocations(coturn, given["username"]) > allocations_before, 10,
                 f"coturn to log an allocation for {given['username']}")
        status, body, _ = bridge.post(f"/calls/{made['uuid']}/hangup", origin=WWE)
        assert status == 200, body
        browser.wait_state("registered", 15)
        wait_until(lambda: s.rtpengine_sessions() == 0, 10, "rtpengine session deleted")
        print(f"page call: coturn allocations for {given['username']}: "
              f"{allocations(coturn, given['username'])}")
        bridge.delete("/register", origin=WWE)
    finally:
        if browser is not None:
            (workdir / "page_console.log").write_text("\n".join(browser.console))
            browser.close()
        bridge.stop()


def allocations(coturn: stack.Daemon, username: str) -> int:
    """Successful TURN allocations coturn logged for this username."""
    pattern = re.compile(rf"user <{re.escape(username)}>: incoming packet ALLOCATE processed, success")
    return len(pattern.findall(coturn.log_text()))
