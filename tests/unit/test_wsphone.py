"""Unit tests of tests/support/wsphone.py: the pure parts (parser/builder, digest,
SDP helpers) and whole flows against a fake WebSocket SIP peer (no daemons)."""
from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.wsphone import (  # noqa: E402
    AnswerPolicy, BlockingPhone, SipMessage, WsPhone, authorization, digest_response, parse, parse_challenge,
    parse_name_addr, sdp_bump_version, sdp_direction, sdp_set_direction, split_values, uri_params,
)

try:
    from websockets.asyncio.server import serve
except ImportError:  # websockets 12
    from websockets.server import serve  # type: ignore[no-redef]

SDP = ("v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
       "a=sendrecv\r\n")


# ------------------------------------------------------------------ parser / builder

def test_parse_request_with_compact_folded_and_multi_value_headers():
    text = ("INVITE sip:2000@pbx.test SIP/2.0\r\n"
            "v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKgw1, SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n"
            "Via: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKx\r\n"
            "f: \"Agent, One\" <sip:1001@pbx.test>;tag=abc\r\n"
            "t: <sip:2000@pbx.test>\r\n"
            "i: call-1\r\n"
            "CSeq: 7 INVITE\r\n"
            "Subject: first\r\n second line\r\n"
            "c: application/sdp\r\n"
            "l: 4\r\n"
            "\r\n"
            "v=0\r\nextra-after-length")
    m = parse(text)
    assert (m.method, m.uri, m.is_request) == ("INVITE", "sip:2000@pbx.test", True)
    assert m.values("Via") == ["SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKgw1",
                               "SIP/2.0/WS a.invalid;branch=z9hG4bK1",
                               "SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKx"]
    assert m.branch == "z9hG4bKgw1"
    assert m.call_id == "call-1" and m.cseq == 7 and m.cseq_method == "INVITE"
    assert m.from_tag == "abc" and m.to_tag is None
    assert m.get("subject") == "first second line"
    assert m.content_type == "application/sdp"
    assert m.body == "v=0\r"       # cut at Content-Length


def test_parse_response_and_errors():
    r = parse("SIP/2.0 486 Busy Here\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert (r.status, r.reason, r.is_response, r.body) == (486, "Busy Here", True, "")
    with pytest.raises(ValueError):
        parse("HELLO\r\n\r\n")
    with pytest.raises(ValueError):
        parse("OPTIONS sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(ValueError):
        parse("OPTIONS sip:a SIP/2.0\r\nno colon here\r\n\r\n")


def test_encode_recomputes_content_length_and_round_trips():
    m = SipMessage(method="INFO", uri="sip:x@127.0.0.1",
                   headers=[("Call-ID", "c"), ("CSeq", "2 INFO"), ("Content-Length", "99")],
                   body="Signal=5\r\n")
    text = m.encode()
    assert "Content-Length: 10\r\n" in text
    again = parse(text)
    assert again.body == "Signal=5\r\n" and again.get("content-length") == "10"
    assert parse(SipMessage(status=200, reason="OK", headers=[("CSeq", "1 BYE")]).encode()).status == 200
    # set/add/remove keep one line and Content-Length last
    m.set("cseq", "3 INFO")
    m.add("X-A", "1")
    assert m.get_all("CSeq") == ["3 INFO"] and m.headers[-1][0] == "Content-Length"
    m.remove("X-A")
    assert not m.has("x-a")


def test_split_values_and_name_addr():
    assert split_values('"a, b" <sip:x@h;p=1,2>;q=1, <sip:y@h>, sip:z@h') == [
        '"a, b" <sip:x@h;p=1,2>;q=1', "<sip:y@h>", "sip:z@h"]
    na = parse_name_addr('"Agent One" <sip:1001@pbx.test;transport=ws>;tag=xyz;expires=600')
    assert (na.display, na.uri, na.params) == ("Agent One", "sip:1001@pbx.test;transport=ws",
                                                {"tag": "xyz", "expires": "600"})
    bare = parse_name_addr("sip:2000@pbx.test;tag=t1")
    assert (bare.uri, bare.params) == ("sip:2000@pbx.test", {"tag": "t1"})
    assert str(parse_name_addr("<sip:a@b>;lr")) == "<sip:a@b>;lr"
    assert uri_params("sip:a@b.invalid;transport=ws;ob") == {"transport": "ws", "ob": None}


# ------------------------------------------------------------------ digest

def test_digest_rfc2617_example():
    # RFC 2617 section 3.5
    assert digest_response(username="Mufasa", realm="testrealm@host.com", password="Circle Of Life",
                           method="GET", uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                           qop="auth", nc="00000001", cnonce="0a4f113b") == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize("qop,expected", [
    (None, "f99e05f591f147facbc94ff23b4b1dee"),          # RFC 2069 style, no qop
    ("auth", "a69b9c2ea0dea1437a21df6ddc9b05e4"),
    ("auth-int", "82b3cab8b1c4df404434db6a0581650c"),    # empty body
])
def test_digest_sip_vectors(qop, expected):
    # the vectors JsSIP's own tests use (published SIP digest calculator values)
    assert digest_response(username="testuser", realm="testrealm@host.com", password="testpassword",
                           method="REGISTER", uri="sip:testrealm@host.com",
                           nonce="5a071f75353f667787615249c62dcc7b15a4828f", qop=qop,
                           cnonce="0a4f113b") == expected


def test_authorization_header_like_jssip():
    ch = parse_challenge('Digest realm="pbx.test", nonce="n1", algorithm=MD5, qop="auth", opaque="op"')
    assert ch == {"realm": "pbx.test", "nonce": "n1", "algorithm": "MD5", "qop": "auth", "opaque": "op"}
    v = authorization(ch, method="REGISTER", uri="sip:pbx.test", username="1001", password="secret",
                      cnonce="c0ffee")
    assert v.startswith('Digest algorithm=MD5, username="1001", realm="pbx.test", nonce="n1", '
                        'uri="sip:pbx.test", response="')
    assert v.endswith(', opaque="op", qop=auth, cnonce="c0ffee", nc=00000001')
    resp = re.search(r'response="(\w+)"', v).group(1)
    assert resp == digest_response(username="1001", realm="pbx.test", password="secret", method="REGISTER",
                                   uri="sip:pbx.test", nonce="n1", qop="auth", cnonce="c0ffee")
    plain = authorization(parse_challenge('Digest realm="r", nonce="n"'), method="INVITE", uri="sip:x",
                          username="u", password="p")
    assert "qop" not in plain and "cnonce" not in plain
    # like JsSIP, prefer auth-int when offered
    assert "qop=auth-int" in authorization(parse_challenge('Digest realm="r", nonce="n", qop="auth,auth-int"'),
                                           method="INVITE", uri="sip:x", username="u", password="p")
    with pytest.raises(ValueError):
        parse_challenge('Basic realm="x"')


def test_sdp_helpers():
    held = sdp_set_direction(SDP, "sendonly")
    assert sdp_direction(held) == "sendonly" and held.count("a=sendonly") == 1 and "a=sendrecv" not in held
    no_dir = SDP.replace("a=sendrecv\r\n", "")
    assert sdp_direction(sdp_set_direction(no_dir, "inactive")) == "inactive"
    assert "o=pbx 1 2 IN IP4" in sdp_bump_version(SDP)


# ------------------------------------------------------------------ fake WebSocket SIP peer

class FakePeer:
    """The far end of the phone's WebSocket (stands for gateway + PBX), driven by the test."""

    async def __aenter__(self) -> "FakePeer":
        self.inbox: asyncio.Queue[SipMessage] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.server = await serve(self._handler, "127.0.0.1", 0, subprotocols=["sip"])
        port = list(self.server.sockets)[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handler(self, ws) -> None:
        self.ws = ws
        self.connected.set()
        async for frame in ws:
            await self.inbox.put(parse(frame) if frame.strip() else SipMessage(raw=frame, error="empty"))

    async def recv(self, method: str | None = None, timeout: float = 3.0) -> SipMessage:
        m = await asyncio.wait_for(self.inbox.get(), timeout)
        if method:
            assert (m.method or m.status) == method or m.status == method, m.summary()
        return m

    async def send(self, msg: SipMessage | str) -> None:
        await self.ws.send(msg if isinstance(msg, str) else msg.encode())

    @staticmethod
    def reply(req: SipMessage, code: int, reason: str = "OK", headers=(), body: str = "",
              to_tag: str | None = "srv") -> SipMessage:
        to = req.get("To") or ""
        if to_tag and code > 100 and ";tag=" not in to:
            to += f";tag={to_tag}"
        hdrs = [("Via", v) for v in req.get_all("Via")]
        hdrs += [("From", req.get("From")), ("To", to), ("Call-ID", req.call_id),
                 ("CSeq", req.get("CSeq"))] + list(headers)
        if body:
            hdrs.append(("Content-Type", "application/sdp"))
        return SipMessage(status=code, reason=reason, headers=hdrs, body=body)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _phone(peer: FakePeer, **kw) -> WsPhone:
    phone = await WsPhone.connect(peer.url, user="1001", domain="pbx.test", password="secret", **kw)
    await peer.connected.wait()
    assert peer.ws.subprotocol == "sip"
    return phone


# ------------------------------------------------------------------ flows

def test_register_and_unregister_with_digest():
    async def main():
        async with FakePeer() as peer:
            phone = await _phone(peer)
            task = asyncio.create_task(phone.register(expires=600))
            r1 = await peer.recv("REGISTER")
            assert r1.uri == "sip:pbx.test"
            assert re.fullmatch(r"SIP/2\.0/WS [0-9a-v]{12}\.invalid;branch=z9hG4bK\d+", r1.get("Via"))
            assert r1.get("Max-Forwards") == "69" and r1.get("Expires") == "600"
            assert re.fullmatch(r'<sip:[0-9a-v]{8}@[0-9a-v]{12}\.invalid;transport=ws>;\+sip\.ice;reg-id=1;'
                                r'\+sip\.instance="<urn:uuid:[0-9a-f-]{36}>";expires=600', r1.get("Contact"))
            assert r1.get("Supported") == "path,gruu,outbound" and r1.get("User-Agent") == "JsSIP 3.10.0"
            assert r1.get("To") == "<sip:1001@pbx.test>" and r1.from_tag
            assert not r1.has("Authorization") and not r1.has("Route")
            await peer.send(peer.reply(r1, 401, "Unauthorized",
                                       [("WWW-Authenticate", 'Digest realm="pbx.test", nonce="abc", qop="auth"')]))
            r2 = await peer.recv("REGISTER")
            assert r2.call_id == r1.call_id and r2.cseq == r1.cseq + 1 and r2.branch != r1.branch
            names = [n for n, _ in r2.headers]
            assert names.index("Authorization") == names.index("CSeq") + 1
            auth = parse_challenge(r2.get("Authorization"))
            assert auth["response"] == digest_response(
                username="1001", realm="pbx.test", password="secret", method="REGISTER", uri="sip:pbx.test",
                nonce="abc", qop="auth", nc=auth["nc"], cnonce=auth["cnonce"])
            await peer.send(peer.reply(r2, 200, "OK", [("Contact", r2.get("Contact"))]))
            resp = await task
            assert resp.status == 200 and phone.registered

            task = asyncio.create_task(phone.unregister())
            u1 = await peer.recv("REGISTER")
            assert u1.call_id == r1.call_id and u1.cseq == r2.cseq + 1
            assert u1.get("Expires") == "0" and u1.get("Contact").endswith(";expires=0")
            await peer.send(peer.reply(u1, 401, "Unauthorized",
                                       [("WWW-Authenticate", 'Digest realm="pbx.test", nonce="n2"')]))
            u2 = await peer.recv("REGISTER")
            assert u2.cseq == u1.cseq + 1 and "qop" not in u2.get("Authorization")
            await peer.send(peer.reply(u2, 200))
            assert (await task).status == 200 and not phone.registered

            # wrong password: the second challenge is returned, not retried forever
            phone.password = "wrong"
            task = asyncio.create_task(phone.register())
            for _ in range(2):
                r = await peer.recv("REGISTER")
                await peer.send(peer.reply(r, 401, "Unauthorized",
                                           [("WWW-Authenticate", 'Digest realm="pbx.test", nonce="n3"')]))
            assert (await task).status == 401
            await phone.close()
    run(main())


def test_outgoing_call_route_set_reinvite_and_bye():
    async def main():
        async with FakePeer() as peer:
            phone = await _phone(peer)
            task = asyncio.create_task(phone.invite("sip:2000@pbx.test", SDP))
            inv = await peer.recv("INVITE")
            assert inv.get("Contact").endswith(";transport=ws;ob>")
            assert inv.get("Supported") == "timer,ice,replaces,outbound" and inv.get("Session-Expires") == "90"
            assert inv.body == SDP and inv.get("Content-Type") == "application/sdp"
            rr = [("Record-Route", "<sip:127.0.0.1:5070;lr;r2=on>"), ("Record-Route", "<sip:127.0.0.1:8080;transport=ws;lr;r2=on>")]
            contact = [("Contact", "<sip:pbx@127.0.0.1:5060>")]
            await peer.send(peer.reply(inv, 100, "Trying", to_tag=None))
            await peer.send(peer.reply(inv, 180, "Ringing", rr + contact))
            await peer.send(peer.reply(inv, 200, "OK", rr + contact, body=SDP))
            call = await task
            assert call.state == "confirmed" and call.response.status == 200
            assert [p.status for p in call.provisional] == [100, 180] and call.remote_sdp == SDP
            ack = await peer.recv("ACK")
            # UAC route set = Record-Route reversed; Request-URI = the remote Contact
            assert ack.uri == "sip:pbx@127.0.0.1:5060"
            assert ack.get_all("Route") == ["<sip:127.0.0.1:8080;transport=ws;lr;r2=on>", "<sip:127.0.0.1:5070;lr;r2=on>"]
            assert ack.cseq == inv.cseq and ack.cseq_method == "ACK" and ack.to_tag == "srv"
            assert ack.branch != inv.branch

            task = asyncio.create_task(call.reinvite(sdp_set_direction(SDP, "sendonly")))
            re_inv = await peer.recv("INVITE")
            assert re_inv.uri == ack.uri and re_inv.get_all("Route") == ack.get_all("Route")
            assert re_inv.cseq == inv.cseq + 1 and re_inv.to_tag == "srv" and re_inv.from_tag == inv.from_tag
            assert sdp_direction(re_inv.body) == "sendonly"
            await peer.send(peer.reply(re_inv, 200, "OK", contact, body=sdp_set_direction(SDP, "recvonly")))
            assert (await task).status == 200
            ack2 = await peer.recv("ACK")
            assert ack2.cseq == re_inv.cseq

            task = asyncio.create_task(call.info())
            info = await peer.recv("INFO")
            assert info.get("Content-Type") == "application/dtmf-relay" and info.cseq == re_inv.cseq + 1
            await peer.send(peer.reply(info, 200))
            assert (await task).status == 200

            task = asyncio.create_task(call.bye())
            bye = await peer.recv("BYE")
            assert bye.get_all("Route") == ack.get_all("Route") and bye.cseq == info.cseq + 1
            await peer.send(peer.reply(bye, 200))
            assert (await task).status == 200 and call.state == "terminated"
            await phone.close()
    run(main())


def test_outgoing_call_challenged_rejected_and_cancelled():
    async def main():
        async with FakePeer() as peer:
            phone = await _phone(peer)
            # 407 -> ACK (same branch) -> INVITE with Proxy-Authorization, CSeq+1 -> 486 -> ACK
            task = asyncio.create_task(phone.invite("sip:2000@pbx.test", SDP))
            inv = await peer.recv("INVITE")
            await peer.send(peer.reply(inv, 407, "Proxy Authentication Required",
                                       [("Proxy-Authenticate", 'Digest realm="pbx.test", nonce="x", qop="auth"')]))
            ack = await peer.recv("ACK")
            assert ack.branch == inv.branch and ack.uri == inv.uri and ack.cseq == inv.cseq and ack.to_tag == "srv"
            inv2 = await peer.recv("INVITE")
            assert inv2.cseq == inv.cseq + 1 and inv2.call_id == inv.call_id and inv2.has("Proxy-Authorization")
            await peer.send(peer.reply(inv2, 486, "Busy Here", to_tag="t2"))
            call = await task
            assert call.state == "failed" and call.response.status == 486
            ack2 = await peer.recv("ACK")
            assert ack2.branch == inv2.branch and ack2.to_tag == "t2"

            # CANCEL while ringing
            call = await phone.invite("sip:2000@pbx.test", SDP, wait=False)
            inv = await peer.recv("INVITE")
            await peer.send(peer.reply(inv, 180, "Ringing", [("Contact", "<sip:pbx@127.0.0.1:5060>")]))
            await call.wait_state("early")
            task = asyncio.create_task(call.cancel())
            cancel = await peer.recv("CANCEL")
            assert cancel.branch == inv.branch and cancel.uri == inv.uri
            assert cancel.get("CSeq") == f"{inv.cseq} CANCEL" and cancel.to_tag is None
            await peer.send(peer.reply(cancel, 200))
            await peer.send(peer.reply(inv, 487, "Request Terminated"))
            assert (await task).status == 487
            ack = await peer.recv("ACK")
            assert ack.branch == inv.branch and call.state == "failed"
            await phone.close()
    run(main())


def _incoming_invite(phone: WsPhone, body: str = SDP, cseq: int = 10, extra=()) -> SipMessage:
    return SipMessage(method="INVITE", uri=phone.contact_uri, headers=[
        ("Via", "SIP/2.0/WSS 127.0.0.1:8080;branch=z9hG4bKgwin1"),
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpbx1"),
        ("Record-Route", "<sip:127.0.0.1:8080;transport=ws;lr;r2=on>"),
        ("Record-Route", "<sip:127.0.0.1:5070;lr;r2=on>"),
        ("From", '"Customer" <sip:5551000@127.0.0.1>;tag=pbxtag'), ("To", "<sip:1001@127.0.0.1:5070>"),
        ("Call-ID", "in-call-1"), ("CSeq", f"{cseq} INVITE"), ("Contact", "<sip:pbx@127.0.0.1:5060>"),
        *extra, *([("Content-Type", "application/sdp")] if body else [])], body=body)


def _in_dialog(inv: SipMessage, resp: SipMessage, method: str, cseq: int, headers=(), body: str = "") -> SipMessage:
    """A request the PBX side sends in the dialog of an incoming call."""
    hdrs = [("Via", f"SIP/2.0/WSS 127.0.0.1:8080;branch=z9hG4bKd{cseq}"), ("From", inv.get("From")),
            ("To", resp.get("To")), ("Call-ID", inv.call_id), ("CSeq", f"{cseq} {method}"), *headers]
    if body:
        hdrs.append(("Content-Type", "application/sdp"))
    return SipMessage(method=method, uri=parse_name_addr(resp.get("Contact")).uri, headers=hdrs, body=body)


def test_incoming_call_auto_answer_and_in_dialog_requests():
    async def main():
        async with FakePeer() as peer:
            phone = await _phone(peer, policy=AnswerPolicy(mode="auto", sdp=SDP))
            inv = _incoming_invite(phone)
            await peer.send(inv)
            call = await phone.wait_incoming(2)
            ringing = await peer.recv(180)
            ok = await peer.recv(200)
            # UAS responses: Record-Route and every Via echoed, one To tag, Contact without ;ob
            assert ok.get_all("Record-Route") == inv.get_all("Record-Route") == ringing.get_all("Record-Route")
            assert ok.get_all("Via") == inv.get_all("Via") and ok.to_tag == ringing.to_tag == call.local_tag
            assert ok.get("Contact") == f"<{phone.contact_uri}>" and ok.body == SDP
            assert call.state == "answered"
            await peer.send(_in_dialog(inv, ok, "ACK", 10))
            await call.wait_confirmed()

            held = sdp_set_direction(SDP, "sendonly")
            await peer.send(_in_dialog(inv, ok, "INVITE", 11, [("Contact", "<sip:pbx@127.0.0.1:5060>")], held))
            r = await peer.recv(200)
            assert sdp_direction(r.body) == "recvonly" and r.get("Contact")
            assert "o=pbx 1 2 " in r.body                      # version bumped
            await peer.send(_in_dialog(inv, ok, "ACK", 11))
            for n, (method, hdrs, code) in enumerate([
                    ("NOTIFY", [("Event", "talk"), ("Subscription-State", "active")], 200),
                    ("UPDATE", [], 200), ("INFO", [], 200),
                    ("REFER", [("Refer-To", "<sip:3000@127.0.0.1>")], 202)]):
                await peer.send(_in_dialog(inv, ok, method, 12 + n, hdrs))
                resp = await peer.recv(code)
                assert resp.cseq_method == method
            notify = await call.wait_request("NOTIFY")
            assert notify.get("Event") == "talk"
            # stale CSeq -> 500; unknown dialog -> 481; not our user -> 404
            await peer.send(_in_dialog(inv, ok, "INFO", 3))
            assert (await peer.recv(500)).cseq == 3
            bogus = _in_dialog(inv, ok, "INFO", 30)
            bogus.set("To", "<sip:1001@127.0.0.1>;tag=nope")
            await peer.send(bogus)
            await peer.recv(481)
            other = _in_dialog(inv, ok, "INFO", 31)
            other.uri = "sip:someoneelse@127.0.0.1"
            await peer.send(other)
            await peer.recv(404)

            # the phone hangs up: UAS route set = Record-Route in order, R-URI = PBX Contact
            task = asyncio.create_task(call.bye())
            bye = await peer.recv("BYE")
            assert bye.uri == "sip:pbx@127.0.0.1:5060"
            assert bye.get_all("Route") == inv.get_all("Record-Route")
            assert bye.from_tag == call.local_tag and bye.to_tag == "pbxtag"
            await peer.send(peer.reply(bye, 200, to_tag=None))
            assert (await task).status == 200
            await phone.close()
    run(main())


def test_incoming_3pcc_talk_and_cancel():
    async def main():
        async with FakePeer() as peer:
            phone = await _phone(peer, policy=AnswerPolicy(mode="auto", sdp=SDP))
            # 3PCC: no SDP in the INVITE -> offer in the 200, answer in the ACK; PBX hangs up
            inv = _incoming_invite(phone, body="")
            await peer.send(inv)
            call = await phone.wait_incoming(2)
            await peer.recv(180)
            ok = await peer.recv(200)
            assert ok.body == SDP
            answer = sdp_set_direction(SDP, "sendrecv").replace("40000", "41000")
            await peer.send(_in_dialog(inv, ok, "ACK", 10, body=answer))
            await call.wait_confirmed()
            assert call.ack_body == answer == call.remote_sdp
            await peer.send(_in_dialog(inv, ok, "BYE", 11))
            await call.wait_bye()
            assert (await peer.recv(200)).cseq_method == "BYE" and call.state == "terminated"

            # remote answer: NOTIFY Event: talk in the early dialog
            phone.policy = AnswerPolicy(mode="talk", sdp=SDP)
            inv = _incoming_invite(phone)
            inv.set("Call-ID", "in-call-2")
            await peer.send(inv)
            call = await phone.wait_incoming(2)
            ringing = await peer.recv(180)
            assert call.state == "early"
            await peer.send(_in_dialog(inv, ringing, "NOTIFY", 11, [("Event", "talk")]))
            first, second = await peer.recv(), await peer.recv()
            assert (first.status, first.cseq_method) == (200, "NOTIFY")
            assert (second.status, second.cseq_method) == (200, "INVITE")

            # CANCEL while ringing -> 200 (CANCEL) + 487 (INVITE)
            phone.policy = AnswerPolicy(mode="ring")
            inv = _incoming_invite(phone)
            inv.set("Call-ID", "in-call-3")
            await peer.send(inv)
            call = await phone.wait_incoming(2)
            await peer.recv(180)
            cancel = SipMessage(method="CANCEL", uri=inv.uri, headers=[
                ("Via", inv.get_all("Via")[0]), ("From", inv.get("From")), ("To", inv.get("To")),
                ("Call-ID", "in-call-3"), ("CSeq", "10 CANCEL")])
            await peer.send(cancel)
            assert (await peer.recv(200)).cseq_method == "CANCEL"
            assert (await peer.recv(487)).cseq_method == "INVITE"
            assert call.state == "terminated"
            await phone.close()
    run(main())


def test_raw_api_options_and_unparsable_messages():
    async def main2():
        async with FakePeer() as peer:
            phone = await _phone(peer)
            await peer.send("garbage\r\n\r\n")
            bad = await phone.next_message(lambda m: m.error is not None)
            assert bad.raw == "garbage\r\n\r\n" and bad in phone.received
            opt = SipMessage(method="OPTIONS", uri=phone.contact_uri, headers=[
                ("Via", "SIP/2.0/WSS 127.0.0.1:8080;branch=z9hG4bKo1"), ("From", "<sip:gw@127.0.0.1>;tag=g"),
                ("To", f"<{phone.contact_uri}>"), ("Call-ID", "opt-1"), ("CSeq", "1 OPTIONS")])
            await peer.send(opt)
            r = await peer.recv(200)
            assert r.get("Allow") and r.get("Accept") and r.to_tag
            got = await phone.next_message(lambda m: m.method == "OPTIONS")
            assert got.call_id == "opt-1"
            await phone.send_raw("OPTIONS sip:pbx.test SIP/2.0\r\nCall-ID: raw\r\n\r\n")
            raw = await peer.recv("OPTIONS")
            assert raw.call_id == "raw"
            phone.autorespond = False
            await peer.send(opt)
            await phone.next_message(lambda m: m.method == "OPTIONS")
            with pytest.raises(asyncio.TimeoutError):
                await peer.recv(timeout=0.3)
            await phone.close()
    run(main2())


def test_blocking_phone_for_threaded_tests():
    """BlockingPhone, the reliability tests' phone next to their threaded FakePbx: the
    same WsPhone on a background loop, from another address; REGISTER, a call out and
    its BYE, a call in answered, ACKed and ended, each step blocking its thread."""
    async def main():
        async with FakePeer() as peer:
            phone = await asyncio.to_thread(BlockingPhone, peer.url, "1001", source_ip="127.0.0.3")
            await peer.connected.wait()
            assert peer.ws.remote_address[0] == "127.0.0.3" == phone.local[0]
            reg = asyncio.create_task(asyncio.to_thread(phone.register))
            r = await peer.recv("REGISTER")
            assert r.call_id == phone.reg_call_id
            await peer.send(peer.reply(r, 200))
            assert (await reg).status == 200

            out = asyncio.create_task(asyncio.to_thread(phone.call, "2000", 3.0))
            inv = await peer.recv("INVITE")
            assert inv.uri == "sip:2000@pbx.test" and inv.sdp
            await peer.send(peer.reply(inv, 200, headers=[("Contact", "<sip:pbx@127.0.0.1:5060>")], body=SDP))
            assert (await peer.recv("ACK")).call_id == inv.call_id
            call = await out
            assert call.status == 200 and call.invite.call_id == inv.call_id
            bye = asyncio.create_task(asyncio.to_thread(call.bye))
            await peer.send(peer.reply(await peer.recv("BYE"), 200, to_tag=None))
            assert await bye == 200

            assert await asyncio.to_thread(phone.next_incoming, 0.2) is None
            incoming = _incoming_invite(phone.phone)
            await peer.send(incoming)
            got = await asyncio.to_thread(phone.next_incoming, 3)
            assert got.invite.call_id == incoming.call_id and not got.acked.is_set()
            await peer.recv(180)
            ok = await peer.recv(200)
            await peer.send(_in_dialog(incoming, ok, "ACK", 10))
            assert await asyncio.to_thread(got.acked.wait, 3)
            await peer.send(_in_dialog(incoming, ok, "BYE", 11))
            assert await asyncio.to_thread(got.ended.wait, 3)
            assert [m.method for m in phone.requests] == ["INVITE", "ACK", "BYE"]
            assert not phone.closed.is_set()
            await asyncio.to_thread(phone.close)
            assert await asyncio.to_thread(phone.closed.wait, 3)
    run(main())
