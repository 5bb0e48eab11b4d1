"""Issue 7, "Bad input" item 2: oversized messages, bodies whose Content-Length
lies, binary junk on the WebSocket, and WebSocket upgrades from an Origin not
in GW_WS_ORIGINS. Each is refused with a clear reply (or, where no reply can be
addressed, the connection is closed), nothing reaches the PBX, and the worker
survives: the same gateway keeps registering and calling."""
from __future__ import annotations

import http.client
import os
import socket
import time

from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import wait_until
from gw import stack
from support import callcheck, relstack, sipmsg
from support.fakepbx import FakePbx
from support.wsphone import BlockingPhone, ws_connect

LIMIT = 16384   # MAX_MSG_BYTES in kemi/app.py = tcp_rd_buf_size in kamailio.cfg


def _message(transport: str, host: str, port: int, pad: int = 0, body: str = "",
             content_length: int | None = None) -> str:
    """A MESSAGE toward the PBX (text/plain, so no SDP is involved)."""
    headers = [("Via", f"SIP/2.0/{transport} {host}:{port};branch={sipmsg.new_branch()};rport"),
               ("Max-Forwards", "70"), ("From", f"<sip:1001@pbx.test>;tag={sipmsg.new_tag()}"),
               ("To", "<sip:2000@pbx.test>"), ("Call-ID", f"badinput-{sipmsg.new_tag()}"),
               ("CSeq", "1 MESSAGE")]
    if pad:
        headers.append(("X-Pad", "a" * pad))
    text = sipmsg.request("MESSAGE", "sip:2000@pbx.test", headers, body, content_type="text/plain")
    if content_length is not None:
        text = text.replace(f"Content-Length: {len(body.encode())}", f"Content-Length: {content_length}")
    return text


def _read(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What the gateway sent within `timeout`, and whether it closed the connection."""
    sock.settimeout(0.1)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65535)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return out, True
        if not data:
            return out, True
        out += data
        if b"\r\n\r\n" in out and out.startswith(b"SIP/2.0 "):
            return out, False
    return out, False


def _alive(gw) -> None:
    assert not gw.kamailio.exited()
    assert stack.sip_options(gw.sip.host, gw.sip.port, 2) == "SIP/2.0 200 Keepalive"


def test_oversized_messages_refused(gw):
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.5", 0))
    try:
        host, port = udp.getsockname()
        dst = (gw.sip.host, gw.sip.port)
        # UDP up to the 64 KB datagram limit: 513 Message Too Large, not relayed.
        for pad in (LIMIT, 40000, 65000):
            text = _message("UDP", host, port, pad=pad)
            udp.sendto(text.encode(), dst)
            got, _ = _read_udp(udp, 3)
            assert got is not None and got.status == 513, (pad, got and got.first)
        # A large but acceptable message still goes through.
        text = _message("UDP", host, port, pad=LIMIT - 1000)
        udp.sendto(text.encode(), dst)
        got, _ = _read_udp(udp, 3)
        assert got is not None and got.status == 200 and len(pbx.requests("MESSAGE")) == 1
        # TCP / WebSocket: the read buffer is LIMIT bytes; a longer message cannot be
        # read whole, so the gateway closes that connection (no SIP reply is possible).
        for pad in (2 * LIMIT, 200000):
            with socket.create_connection(dst, timeout=3, source_address=("127.0.0.6", 0)) as tcp:
                h, p = tcp.getsockname()
                try:
                    tcp.sendall(_message("TCP", h, p, pad=pad).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass
                data, closed = _read(tcp, 5)
                assert closed and not data.startswith(b"SIP/2.0 2"), (pad, data[:60])
        for pad in (2 * LIMIT, 200000):
            ws = ws_connect(gw.ws_url, subprotocols=["sip"], max_size=None, open_timeout=3)
            try:
                ws.send(_message("WS", "x.invalid", 5060, pad=pad))
                closed = False
                try:
                    ws.recv(timeout=5)
                except ConnectionClosed:
                    closed = True
                assert closed, f"{pad} bytes over WebSocket: connection still open"
            finally:
                ws.close()
        assert len(pbx.requests("MESSAGE")) == 1, "only the acceptable message reached the PBX"
        wait_until(lambda: "event=reqinit.too_large" in gw.kamailio_log(), 3, "too_large log")
        _alive(gw)
    finally:
        udp.close()
        pbx.close()


def _read_udp(sock: socket.socket, timeout: float):
    sock.settimeout(timeout)
    try:
        data = sock.recv(65535)
    except socket.timeout:
        return None, None
    return sipmsg.parse(data), data


def test_content_length_lies(gw):
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)
    body = "hello agent, this body is 40 bytes long\n"
    assert len(body) == 40
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.5", 0))
    try:
        host, port = udp.getsockname()
        # A datagram or a WebSocket frame is one message: a Content-Length that
        # disagrees with the body it carries is refused with 400.
        for cl in (5, 39, 41, 500):
            udp.sendto(_message("UDP", host, port, body=body, content_length=cl).encode(),
                       (gw.sip.host, gw.sip.port))
            got, _ = _read_udp(udp, 3)
            assert got is not None and got.status == 400, (cl, got and got.first)
            assert "Content-Length" in got.reason
            ws = ws_connect(gw.ws_url, subprotocols=["sip"], open_timeout=3)
            try:
                ws.send(_message("WS", "x.invalid", 5060, body=body, content_length=cl))
                reply = sipmsg.parse(ws.recv(timeout=3))
                assert reply.status == 400 and "Content-Length" in reply.reason, (cl, reply.first)
            finally:
                ws.close()
        # On TCP the Content-Length frames the stream (RFC 3261 18.3). A longer
        # one makes the gateway wait for bytes that never come: nothing is
        # relayed and nothing is answered. A shorter one cuts the body: the
        # message in front is handled, what follows is an incomplete next
        # message and waits the same way. (Such a half-read connection is held
        # until tcp_connection_lifetime; other connections are unaffected.)
        with socket.create_connection((gw.sip.host, gw.sip.port), timeout=3,
                                      source_address=("127.0.0.6", 0)) as longer, \
                socket.create_connection((gw.sip.host, gw.sip.port), timeout=3,
                                         source_address=("127.0.0.6", 0)) as shorter:
            h, p = longer.getsockname()
            longer.sendall(_message("TCP", h, p, body=body, content_length=500).encode())
            h, p = shorter.getsockname()
            shorter.sendall(_message("TCP", h, p, body=body, content_length=5).encode())
            data, closed = _read(shorter, 3)
            assert data.startswith(b"SIP/2.0 200"), data[:80]   # the PBX answered the cut MESSAGE
            for conn in (longer, shorter):
                data, closed = _read(conn, 0.5)
                assert data == b"", data[:80]
            _alive(gw)
        assert [len(m.body) for m in pbx.requests("MESSAGE")] == [5]
        _alive(gw)
    finally:
        udp.close()
        pbx.close()


def test_binary_junk_on_websocket(gw):
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)
    bystander = BlockingPhone(gw.ws_url, "1071")
    try:
        assert bystander.register().status == 200
        junk = [os.urandom(512), b"\x00" * 64, bytes(range(256)) * 4,
                "\u00ff\u2603 this is not SIP at all", "INVITE\r\n\r\n", "SIP/2.0\r\n"]
        closed = 0
        for item in junk:
            ws = ws_connect(gw.ws_url, subprotocols=["sip"], open_timeout=3)
            try:
                ws.send(item)
                try:
                    ws.recv(timeout=3)
                except ConnectionClosed:
                    closed += 1
            finally:
                ws.close()
        # Junk costs the sender its own connection, nothing else.
        assert closed == len(junk)
        assert pbx.requests() == [r for r in pbx.requests() if r.call_id == bystander.reg_call_id]
        assert not bystander.closed.is_set(), "another phone's WebSocket was hurt"
        assert callcheck.outbound(bystander, pbx) == "ok"
        assert callcheck.inbound(pbx, (gw.sip.host, gw.sip.port), bystander) == "ok"
        _alive(gw)
    finally:
        bystander.close()
        pbx.close()


def _upgrade(ws_listen, origin: str | None) -> tuple[int, str]:
    conn = http.client.HTTPConnection(ws_listen.host, ws_listen.port, timeout=3)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "sip"}
    if origin is not None:
        headers["Origin"] = origin
    conn.request("GET", "/", headers=headers)
    resp = conn.getresponse()
    body = resp.read().decode() if resp.status != 101 else ""
    conn.close()
    return resp.status, body


def test_websocket_origin_not_allowed(tmp_path):
    allowed = "https://agents.example.test"
    s = relstack.start_stack(tmp_path / "stack", {"GW_WS_ORIGINS": f"{allowed} https://wwe.example.test"})
    pbx = FakePbx(s.pbx.host, s.pbx.port)
    try:
        for origin in ("https://evil.example.test", "null", "", None, allowed + ".evil.test"):
            status, body = _upgrade(s.cfg.ws_listen, origin)
            assert status == 403 and "origin not allowed" in body, (origin, status, body)
            try:
                ws_connect(s.ws_url, subprotocols=["sip"], origin=origin or None, open_timeout=3)
                raise AssertionError(f"origin {origin!r} was let in")
            except InvalidStatus as exc:
                assert exc.response.status_code == 403
        wait_until(lambda: "event=ws.origin_refused" in s.kamailio_log(), 3, "origin log")
        # The allowed origin gets its WebSocket, registers and calls.
        phone = BlockingPhone(s.ws_url, "1072", origin=allowed)
        try:
            assert phone.register().status == 200
            assert callcheck.outbound(phone, pbx) == "ok"
            assert callcheck.inbound(pbx, (s.sip.host, s.sip.port), phone) == "ok"
        finally:
            phone.close()
        assert not s.kamailio.exited()
        assert s.rtpengine_sessions() == 0
    finally:
        pbx.close()
        stack.stop_all(s.daemons())
