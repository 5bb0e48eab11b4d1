"""Behaviour 4 (unknown DN) and 10 (bad input and faults), against the real daemons."""
from __future__ import annotations

import asyncio
import time
import uuid

import websockets

from conftest import wait_until
from gw import stack
from support import rawsip
from support.rawsip import UdpPeer, parse_response

PBX_SDP = ("v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
PHONE_SDP = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
             "m=audio 9 UDP/TLS/RTP/SAVPF 0 13\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n"
             "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:"
             "F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\na=setup:actpass\r\n"
             "a=mid:0\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:13 CN/8000\r\n"
             "a=candidate:1 1 udp 2122260223 127.0.0.2 50000 typ host\r\n")


def pbx_invite(gw, dn: str, peer: UdpPeer, **kw) -> str:
    return rawsip.request("INVITE", f"sip:{dn}@{gw.sip}", via_host=peer.host, via_port=peer.port,
                          body=kw.pop("body", PBX_SDP), **kw)


def ws_request(method: str, ruri: str, body: str = "", call_id: str | None = None) -> str:
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/WSS {uuid.uuid4().hex[:8]}.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}",
             "Max-Forwards: 69", "To: <sip:2000@pbx.test>",
             f"From: <sip:1001@pbx.test>;tag={uuid.uuid4().hex[:8]}",
             f"Call-ID: {call_id or uuid.uuid4().hex}", f"CSeq: 1 {method}",
             "Contact: <sip:k3v8a1@d9fj2k.invalid;transport=ws>;expires=600"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


async def ws_final(url: str, text: str, timeout: float = 3.0) -> rawsip.Response:
    async with websockets.connect(url, subprotocols=["sip"]) as ws:
        await ws.send(text)
        deadline = time.monotonic() + timeout
        while True:
            msg = await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.01))
            resp = parse_response(msg)
            if resp.status >= 200:
                return resp


def test_unknown_dn_gets_404(gw):
    peer = UdpPeer()
    try:
        peer.send(pbx_invite(gw, "9999", peer), (gw.sip.host, gw.sip.port))
        resp = peer.final_response()
        assert resp is not None and resp.status == 404
    finally:
        peer.close()
    wait_until(lambda: "event=location.not_registered" in gw.kamailio_log(), 5, "log line")


def test_max_forwards_exhausted_gets_483(gw):
    peer = UdpPeer()
    try:
        peer.send(pbx_invite(gw, "1001", peer, max_forwards=0), (gw.sip.host, gw.sip.port))
        resp = peer.final_response()
        assert resp is not None and resp.status == 483
    finally:
        peer.close()


def test_malformed_sip_rejected_and_workers_survive(gw):
    peer = UdpPeer()
    dst = (gw.sip.host, gw.sip.port)
    bad = [
        b"\x00\xff\xfe garbage \x01\x02",
        b"INVITE sip:1001@127.0.0.1 SIP/2.0\r\n\r\n",  # no Via, From, To, Call-ID, CSeq
        rawsip.request("INVITE", f"sip:1001@{gw.sip}", via_host=peer.host, via_port=peer.port)
        .replace("CSeq: 1 INVITE", "CSeq: x INVITE").encode(),
        rawsip.request("OPTIONS", f"sip:{gw.sip}", via_host=peer.host, via_port=peer.port)
        .replace("Content-Length: 0", "Content-Length: 500").encode(),
        b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n",
    ]
    answers = []
    try:
        for msg in bad:
            peer.send(msg, dst)
            got = peer.recv(0.5)
            answers.append(got[0].split("\r\n", 1)[0] if got else None)
    finally:
        peer.close()
    # Each is either refused with 400 or dropped; nothing else.
    assert all(a is None or a.startswith("SIP/2.0 400") for a in answers), answers
    for _ in range(3):
        assert stack.sip_options(gw.sip.host, gw.sip.port, 2) == "SIP/2.0 200 Keepalive"
    assert gw.kamailio.exited() is False


def test_rtpengine_down_gives_503_fast_and_no_half_dialog(fresh_gw):
    fresh_gw.rtpengine.stop()
    pbx = UdpPeer(fresh_gw.pbx.host, fresh_gw.pbx.port)
    try:
        started = time.monotonic()
        resp = asyncio.run(ws_final(fresh_gw.ws_url, ws_request("INVITE", "sip:2000@pbx.test", PHONE_SDP)))
        elapsed = time.monotonic() - started
        assert resp.status == 503
        assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
        assert pbx.recv(0.3) is None, "nothing may reach the PBX when media cannot be set up"
    finally:
        pbx.close()
    assert "event=media.rtpengine_failed" in fresh_gw.kamailio_log()


def test_redis_down_503_retry_after_then_recovers(fresh_gw):
    gw = fresh_gw
    gw.redis.stop()
    assert not stack.redis_ping(*str(stack.redis_addr(gw.cfg.redis_url)).split(":"))
    # Inbound INVITE for a DN.
    peer = UdpPeer()
    try:
        peer.send(pbx_invite(gw, "1001", peer), (gw.sip.host, gw.sip.port))
        resp = peer.final_response()
        assert resp is not None and resp.status == 503
        assert resp.header("Retry-After") == "5"
    finally:
        peer.close()
    # REGISTER from a phone.
    reg = ws_request("REGISTER", "sip:pbx.test").replace("To: <sip:2000@pbx.test>", "To: <sip:1001@pbx.test>")
    resp = asyncio.run(ws_final(gw.ws_url, reg))
    assert resp.status == 503 and resp.header("Retry-After") == "5"
    # Redis comes back on the same address: the workers reconnect by themselves.
    addr = stack.redis_addr(gw.cfg.redis_url)
    gw.redis = stack.Daemon("redis-server", gw.redis.argv, gw.redis.log_path).start()
    wait_until(lambda: stack.redis_ping(addr.host, addr.port), 10, "redis restart")
    pbx = UdpPeer(gw.pbx.host, gw.pbx.port)
    try:
        async def forwarded():
            async with websockets.connect(gw.ws_url, subprotocols=["sip"]) as ws:
                await ws.send(reg)
                return await asyncio.get_running_loop().run_in_executor(None, pbx.recv, 3.0)
        got = asyncio.run(forwarded())
        assert got is not None and got[0].startswith("REGISTER "), "REGISTER must reach the PBX again"
    finally:
        pbx.close()
