"""The gateway core's numbered behaviours (issue "Gateway core"), each driven
through the real Kamailio + rtpengine + Redis: SIPp plays the PBX over UDP,
the WebSocket test phone (tests/support/wsphone.py) plays a JsSIP phone."""
from __future__ import annotations

import asyncio
import json
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from conftest import ARTIFACTS, wait_until
from support import rawsip
from support.sipp import SippRun
from support.wsphone import AnswerPolicy, WsPhone, sdp_set_direction, webrtc_sdp

PASSWORD = "secret"
LOGS = ARTIFACTS / "core"


def chromium_sdp(direction: str = "sendrecv") -> str:
    """A browser offer with comfort noise in it, as Chromium sends (PT 13)."""
    sdp = webrtc_sdp(direction=direction)
    sdp = sdp.replace("UDP/TLS/RTP/SAVPF 111 0 8 126", "UDP/TLS/RTP/SAVPF 111 0 8 13 126")
    return sdp.replace("a=rtpmap:126", "a=rtpmap:13 CN/8000\r\na=rtpmap:126")


def assert_webrtc_sdp(sdp: str | None) -> None:
    """What a WebRTC phone must get: DTLS-SRTP, ICE, rtcp-mux, mid, and never CN."""
    assert sdp, "no SDP"
    m = re.search(r"^m=audio \d+ (\S+) ([\d ]+)", sdp, re.M)
    assert m and m.group(1) == "UDP/TLS/RTP/SAVPF", sdp
    assert "13" not in m.group(2).split(), f"CN offered to the phone: {m.group(0)}"
    assert "CN/8000" not in sdp
    for needle in ("a=fingerprint:sha-256 ", "a=setup:", "a=ice-ufrag:", "a=ice-pwd:",
                   "a=candidate:", "a=rtcp-mux", "a=mid:"):
        assert needle in sdp, f"{needle!r} missing toward the phone:\n{sdp}"


def assert_plain_rtp_sdp(sdp: str) -> None:
    """What the PBX must get: RTP/AVP, no ICE, no DTLS, no rtcp-mux. CN may be
    there: it is rtpengine's own (kemi/media.py), offered so that CN the PBX
    sends reaches rtpengine's CN decoder instead of the phone."""
    m = re.search(r"^m=audio \d+ (\S+) ([\d ]+)", sdp, re.M)
    assert m and m.group(1) == "RTP/AVP", sdp
    for needle in ("a=fingerprint", "a=ice-", "a=candidate", "a=rtcp-mux", "a=setup"):
        assert needle not in sdp, f"{needle!r} sent to the PBX:\n{sdp}"


def sipp_messages(run: SippRun, direction: str = "received") -> list[str]:
    """The SIP messages SIPp logged (-trace_msg) as received (or sent)."""
    out = []
    for block in re.split(r"-{20,}[^\n]*\n", run.messages()):
        head, _, rest = block.partition("\n")
        if f"message {direction}" in head:
            out.append(rest.strip().replace("\r\n", "\n"))
    return out


def sipp_bodies(run: SippRun, first_line: str) -> list[str]:
    """SDP bodies of the messages SIPp received whose first line starts so."""
    bodies = []
    for text in sipp_messages(run):
        if text.startswith(first_line):
            body = text.partition("\n\n")[2]
            if body.startswith("v=0"):
                bodies.append(body)
    return bodies


async def finished(run: SippRun, timeout: float = 10) -> int:
    """SIPp's exit code, waited for without blocking the phone's event loop."""
    return await asyncio.to_thread(run.wait, timeout)


def no_session(gw, call_id: str) -> bool:
    return call_id not in gw.ng().list_calls()


def sipp(name: str, gw, *, uac: bool = False, **kw) -> SippRun:
    LOGS.mkdir(parents=True, exist_ok=True)
    if uac:
        kw.setdefault("remote", str(gw.sip))
    return SippRun(name, port=gw.pbx.port, log_dir=LOGS, **kw)


@asynccontextmanager
async def registered(gw, user: str, policy: AnswerPolicy | None = None):
    """A phone registered through the PBX's digest challenge; unregistered after."""
    with sipp("pbx_registrar.xml", gw, calls=None, keys={"password": PASSWORD}) as reg:
        phone = await WsPhone.connect(gw.ws_url, user=user, domain="pbx.test", password=PASSWORD,
                                      policy=policy or AnswerPolicy())
        resp = await phone.register(expires=600)
        assert resp.status == 200, resp.summary()
        reg.stop()
    try:
        yield phone
    finally:
        with sipp("pbx_registrar.xml", gw, calls=None, keys={"password": PASSWORD}):
            try:
                await phone.unregister()
            except Exception:
                pass
        await phone.close()


async def pbx_calls(gw, user: str, scenario: str, keys: dict, policy: AnswerPolicy | None = None,
                    timeout: float = 10):
    """The PBX (SIPp `scenario`) calls the registered phone `user`. Returns, once the
    call has ended and SIPp finished cleanly, the phone's Call and the SIPp run."""
    async with registered(gw, user, policy) as phone:
        with sipp(scenario, gw, uac=True, service=user, keys=keys) as pbx:
            call = await phone.wait_incoming(10)
            await call.wait_state("terminated", timeout=timeout)
            assert await finished(pbx, timeout) == 0, pbx.errors()
        return call, pbx


# 1 --------------------------------------------------------------------------
def test_1_register_digest_via_pbx_binding_in_redis_and_unregister(gw):
    r = gw.redis_client()

    async def go():
        # Two registrar rounds (register, unregister): SIPp then exits by itself
        # and its message trace is complete when we read it.
        with sipp("pbx_registrar.xml", gw, calls=2, keys={"password": PASSWORD}) as reg:
            phone = await WsPhone.connect(gw.ws_url, user="1001", domain="pbx.test", password=PASSWORD)
            resp = await phone.register(expires=600)
            assert resp.status == 200
            statuses = [m.status for m in phone.received if m.is_response and m.cseq_method == "REGISTER"]
            assert statuses == [401, 200], "the PBX challenges, the gateway only relays"
            rec = json.loads(wait_until(lambda: r.get("gw:reg:1001"), 5, "binding in Redis"))
            ttl = r.ttl("gw:reg:1001")
            resp = await phone.unregister()
            assert resp.status == 200
            wait_until(lambda: r.get("gw:reg:1001") is None, 5, "binding removed")
            await phone.close()
            assert await finished(reg, 10) == 0, reg.errors()
        return rec, ttl, reg.messages()

    rec, ttl, msgs = asyncio.run(go())
    assert rec["user"] == "1001"
    assert rec["contact"].endswith(".invalid;transport=ws")
    assert rec["received"].startswith("sip:127.0.0.1:") and rec["received"].endswith(";transport=ws")
    assert rec["expires"] == 600 and 590 <= ttl <= 600
    assert rec["node"] == str(gw.sip)
    # RFC 3327 Path toward the gateway, and the phone reachable through its alias.
    assert re.search(rf"Path: <sip:{re.escape(str(gw.sip))};lr;received=", msgs), msgs[-2000:]
    assert ";alias=127.0.0.1~" in msgs


def test_1_wrong_password_leaves_no_binding(gw):
    r = gw.redis_client()

    async def go():
        with sipp("pbx_registrar.xml", gw, calls=None, keys={"password": PASSWORD}):
            phone = await WsPhone.connect(gw.ws_url, user="1009", domain="pbx.test", password="wrong")
            resp = await phone.register(expires=600)
            await phone.close()
            return resp.status

    assert asyncio.run(go()) == 403
    assert r.get("gw:reg:1009") is None


# 2, 3 -----------------------------------------------------------------------
def test_2_3_phone_calls_pbx_webrtc_one_side_plain_other_no_cn(gw):
    async def go():
        with sipp("pbx_uas.xml", gw, keys={"hangup": "phone"}) as pbx:
            phone = await WsPhone.connect(gw.ws_url, user="1001", domain="pbx.test")
            call = await phone.invite("sip:2000@pbx.test", chromium_sdp())
            final = await call.wait_final()
            assert final.status == 200, final.summary()
            answer = final.sdp
            call_id = call.call_id
            assert call_id in gw.ng().list_calls()
            await call.bye()
            assert await finished(pbx, 10) == 0, pbx.errors()
            await phone.close()
        return answer, sipp_bodies(pbx, "INVITE "), call_id

    answer, pbx_offers, call_id = asyncio.run(go())
    assert_webrtc_sdp(answer)
    assert pbx_offers, "the PBX got no SDP offer"
    assert_plain_rtp_sdp(pbx_offers[0])
    wait_until(lambda: no_session(gw, call_id), 5, "rtpengine session deleted after BYE")


# 4 --------------------------------------------------------------------------
def test_4_pbx_calls_dn_found_in_redis_over_the_websocket(gw):
    call, pbx = asyncio.run(pbx_calls(gw, "1002", "pbx_uac.xml", {"hangup": "pbx", "call_ms": 300}))
    offer, call_id, answers = call.invite.sdp, call.call_id, sipp_bodies(pbx, "SIP/2.0 200")
    assert_webrtc_sdp(offer)
    assert answers and all("RTP/AVP" in a for a in answers)
    assert_plain_rtp_sdp(answers[0])
    wait_until(lambda: no_session(gw, call_id), 5, "rtpengine session deleted")


def test_4_unknown_dn_404_and_websocket_gone_480(gw):
    with sipp("pbx_uac_expect.xml", gw, uac=True, service="7777", keys={"expect_code": 404}) as pbx:
        assert pbx.wait(10) == 0, pbx.errors()

    async def gone():
        async with registered(gw, "1003") as phone:
            await phone.ws.close()
            with sipp("pbx_uac_expect.xml", gw, uac=True, service="1003",
                      keys={"expect_code": 480}) as pbx:
                return await finished(pbx, 10), pbx.errors()

    rc, errors = asyncio.run(gone())
    assert rc == 0, errors


def test_4_pbx_calls_contact_learnt_via_path(gw):
    """Asterisk with Path support sends to the registered contact, routed by our Path."""
    async def go():
        with sipp("pbx_registrar.xml", gw, calls=1, keys={"password": PASSWORD}) as reg:
            phone = await WsPhone.connect(gw.ws_url, user="1004", domain="pbx.test", password=PASSWORD)
            assert (await phone.register(expires=600)).status == 200
            assert await finished(reg, 10) == 0, reg.errors()
        msgs = reg.messages()
        contact = re.findall(r"^Contact: <([^>]+)>", msgs, re.M)[-1]
        path = re.findall(r"^Path: (<[^>]+>)", msgs, re.M)[-1]
        peer = rawsip.UdpPeer("127.0.0.1", gw.pbx.port)
        try:
            invite = rawsip.request("INVITE", contact, via_host=peer.host, via_port=peer.port,
                                    extra=f"Route: {path}",
                                    body=("v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
                                          "t=0 0\r\nm=audio 40010 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"))
            peer.send(invite, (gw.sip.host, gw.sip.port))
            call = await phone.wait_incoming(5)
            final = await asyncio.get_running_loop().run_in_executor(None, peer.final_response, 5.0)
            # Tidy up: no ACK/BYE from this raw peer; CANCEL is moot after 200, so delete by BYE route.
            call_id = call.call_id
            await call.bye()
        finally:
            peer.close()
        await phone.close()
        return final, call_id, call.invite.sdp

    final, call_id, offer = asyncio.run(go())
    assert final is not None and final.status == 200
    assert_webrtc_sdp(offer)
    wait_until(lambda: no_session(gw, call_id), 5, "rtpengine session deleted")


# 5 --------------------------------------------------------------------------
def test_5_indialog_requests_from_pbx_reach_the_phone(gw):
    """Genesys answers/holds remotely with NOTIFY; hold/resume by re-INVITE; UPDATE, INFO, REFER."""
    call, _ = asyncio.run(pbx_calls(gw, "1005", "pbx_uac.xml",
                                    {"steps": "notify_talk,hold,resume,update,info,refer", "step_ms": 50,
                                     "hangup": "pbx", "call_ms": 200}, AnswerPolicy(mode="auto"), timeout=15))
    got = [m.method for m in call.received]
    for method in ("NOTIFY", "INVITE", "UPDATE", "INFO", "REFER", "BYE"):
        assert method in got, f"{method} did not reach the phone: {got}"
    notify = next(m for m in call.received if m.method == "NOTIFY")
    assert (notify.get("Event") or "").startswith("talk")
    reinvites = [m for m in call.received if m.method == "INVITE"]
    assert "a=sendonly" in reinvites[0].sdp and "a=sendrecv" in reinvites[1].sdp
    for m in reinvites:
        assert_webrtc_sdp(m.sdp)  # every in-dialog SDP went through rtpengine again
    wait_until(lambda: no_session(gw, call.call_id), 5, "rtpengine session deleted")


def test_5_indialog_requests_from_phone_reach_the_pbx(gw):
    async def go():
        with sipp("pbx_uas.xml", gw, keys={"hangup": "phone"}) as pbx:
            phone = await WsPhone.connect(gw.ws_url, user="1001", domain="pbx.test")
            call = await phone.invite("sip:2000@pbx.test", chromium_sdp())
            assert (await call.wait_final()).status == 200
            answers = []
            for direction in ("sendonly", "inactive", "sendrecv"):
                resp = await call.reinvite(sdp_set_direction(chromium_sdp(), direction))
                assert resp.status == 200, resp.summary()
                answers.append(resp.sdp)
            zero = chromium_sdp().replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
            resp = await call.reinvite(zero)
            assert resp.status == 200
            answers.append(resp.sdp)
            assert (await call.update()).status == 200
            assert (await call.info()).status == 200
            assert (await call.bye()).status == 200
            assert await finished(pbx, 10) == 0, pbx.errors()
            await phone.close()
        return call.call_id, answers, sipp_bodies(pbx, "INVITE ")

    call_id, answers, pbx_offers = asyncio.run(go())
    for sdp in answers:
        assert_webrtc_sdp(sdp)
    assert len(pbx_offers) == 5, "initial INVITE and four re-INVITEs reach the PBX with SDP"
    for sdp in pbx_offers:
        assert_plain_rtp_sdp(sdp)
    assert "a=sendonly" in pbx_offers[1] and "a=inactive" in pbx_offers[2]
    wait_until(lambda: no_session(gw, call_id), 5, "rtpengine session deleted")


def test_5_genesys_talk_notify_in_early_dialog(gw):
    call, _ = asyncio.run(pbx_calls(gw, "1006", "pbx_uac_early_talk.xml", {"talk_ms": 100, "call_ms": 200},
                                    AnswerPolicy(mode="talk")))
    methods = [m.method for m in call.received]
    assert "NOTIFY" in methods and methods.index("NOTIFY") < methods.index("BYE")
    wait_until(lambda: no_session(gw, call.call_id), 5, "rtpengine session deleted")


# 6 --------------------------------------------------------------------------
def test_6_third_party_call_offer_in_200_answer_in_ack(gw):
    call, pbx = asyncio.run(pbx_calls(gw, "1007", "pbx_uac_3pcc.xml", {"hangup": "pbx", "call_ms": 300},
                                      AnswerPolicy(mode="auto", sdp=chromium_sdp())))
    pbx_got = sipp_bodies(pbx, "SIP/2.0 200")
    assert call.invite.sdp is None, "Genesys MakeCall: INVITE without SDP"
    assert pbx_got, "the PBX got the offer in the 200 OK"
    assert_plain_rtp_sdp(pbx_got[0])
    assert_webrtc_sdp(call.ack_body)
    wait_until(lambda: no_session(gw, call.call_id), 5, "rtpengine session deleted")


# 7 --------------------------------------------------------------------------
def test_7_cancel_and_failures_delete_the_rtpengine_session(gw):
    async def go():
        ids = []
        async with registered(gw, "1008", AnswerPolicy(mode="ring")) as phone:
            with sipp("pbx_uac_cancel.xml", gw, uac=True, service="1008", keys={"ring_ms": 200}) as pbx:
                call = await phone.wait_incoming(10)
                ids.append(call.call_id)
                assert await finished(pbx, 10) == 0, pbx.errors()
            phone.policy = AnswerPolicy(mode="reject", reject_code=486)
            with sipp("pbx_uac_expect.xml", gw, uac=True, service="1008",
                      keys={"expect_code": 486}) as pbx:
                call = await phone.wait_incoming(10)
                ids.append(call.call_id)
                assert await finished(pbx, 10) == 0, pbx.errors()
        # The PBX refuses a phone's call (5xx) ...
        with sipp("pbx_uas.xml", gw, keys={"answer": 503}) as pbx:
            phone = await WsPhone.connect(gw.ws_url, user="1001", domain="pbx.test")
            call = await phone.invite("sip:2000@pbx.test", chromium_sdp())
            # RFC 3261 16.7: a proxy turns a downstream 503 into 500.
            assert (await call.wait_final()).status == 500
            ids.append(call.call_id)
            assert await finished(pbx, 10) == 0, pbx.errors()
        # ... or never answers at all: the transaction times out (408).
        started = time.monotonic()
        call = await phone.invite("sip:2000@pbx.test", chromium_sdp())
        assert (await call.wait_final(timeout=20)).status == 408
        ids.append(call.call_id)
        await phone.close()
        return ids, time.monotonic() - started

    ids, waited = asyncio.run(go())
    for call_id in ids:
        wait_until(lambda: no_session(gw, call_id), 5, f"session {call_id} deleted")


# 8 --------------------------------------------------------------------------
def test_8_nat_private_contact_reached_over_its_connection(gw):
    """A phone whose Contact says 10.x / *.invalid is reached over its own WebSocket,
    for the initial INVITE and for in-dialog requests."""
    async def go():
        async with registered(gw, "1010") as phone:
            with sipp("pbx_uac.xml", gw, uac=True, service="1010",
                      keys={"steps": "notify_talk,hold", "step_ms": 50, "hangup": "pbx",
                            "call_ms": 200}) as pbx:
                call = await phone.wait_incoming(10)
                await call.wait_state("terminated", timeout=10)
                assert await finished(pbx, 10) == 0, pbx.errors()
            return call, pbx.messages()
    call, msgs = asyncio.run(go())
    # The PBX saw the phone's Contact with the alias of its real connection.
    assert re.search(r"Contact: <sip:[^>]*\.invalid;alias=127\.0\.0\.1~\d+~5", msgs) or \
        re.search(r"Contact: <sip:[^>]*;alias=127\.0\.0\.1~\d+~5", msgs), msgs[-3000:]
    assert [m.method for m in call.received].count("NOTIFY") == 1
    assert "BYE" in [m.method for m in call.received]
