"""A minimal WebRTC phone on SIP over WebSocket, the way JsSIP talks to the
gateway (Via WSS *.invalid, Contact *.invalid;transport=ws), for the reliability
tests: REGISTER, place a call (INVITE/ACK/BYE), auto-answer incoming calls with
a DTLS/ICE SDP answer. Signalling only, no media. Loopback only."""
from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import sipmsg
from support.sipmsg import Msg

_ICE = ("a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:"
        "C2:43:F0:A1:58:D0:A1:2C:19:08\r\n")
PHONE_OFFER = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
               "m=audio 9 UDP/TLS/RTP/SAVPF 0 13\r\nc=IN IP4 0.0.0.0\r\n" + _ICE +
               "a=setup:actpass\r\na=mid:0\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:13 CN/8000\r\n"
               "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n")
PHONE_ANSWER = ("v=0\r\no=- 3 3 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
                "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n" + _ICE +
                "a=setup:active\r\na=mid:0\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n"
                "a=candidate:1 1 udp 2122260223 127.0.0.1 50002 typ host\r\n")


def ws_connect(url: str, **kw):
    """A sync WebSocket client kept open outside a `with` block (websockets
    >= 15 wants legacy=True for that, older versions do not know the flag)."""
    try:
        return connect(url, legacy=True, **kw)
    except TypeError:
        return connect(url, **kw)


@dataclass
class PhoneCall:
    phone: "WsPhone"
    invite: Msg
    final: Msg | None
    route: list[str] = field(default_factory=list)
    target: str = ""

    @property
    def status(self) -> int:
        return self.final.status if self.final is not None else 0

    def _in_dialog(self, method: str, cseq: int) -> str:
        headers = [("Via", self.phone._via())] + [("Route", r) for r in self.route]
        headers += [("Max-Forwards", "69"), ("From", self.invite.get("From") or ""),
                    ("To", self.final.get("To") or ""), ("Call-ID", self.invite.call_id),
                    ("CSeq", f"{cseq} {method}")]
        return sipmsg.request(method, self.target, headers)

    def bye(self, timeout: float = 3.0) -> int:
        final = self.phone._transact(self._in_dialog("BYE", 2), timeout)
        return final.status if final is not None else 0


@dataclass
class IncomingCall:
    invite: Msg
    answered: int
    acked: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)


class WsPhone:
    def __init__(self, ws_url: str, user: str, *, domain: str = "pbx.test", origin: str | None = None,
                 source_ip: str = "127.0.0.1", answer_code: int = 200, open_timeout: float = 3.0,
                 user_agent: str = "JsSIP 3.10.0 (reliability test phone)") -> None:
        self.user = user
        self.domain = domain
        self.answer_code = answer_code
        self.user_agent = user_agent
        self.host_token = uuid.uuid4().hex[:10] + ".invalid"
        self.contact = f"<sip:{uuid.uuid4().hex[:8]}@{self.host_token};transport=ws>"
        self.instance = f"<urn:uuid:{uuid.uuid4()}>"
        self.reg_call_id = uuid.uuid4().hex
        self.reg_cseq = 0
        url = urlparse(ws_url)
        sock = socket.create_connection((url.hostname, url.port), timeout=open_timeout,
                                        source_address=(source_ip, 0))
        self.local = sock.getsockname()
        self.ws = ws_connect(ws_url, sock=sock, subprotocols=["sip"], origin=origin,
                          open_timeout=open_timeout, close_timeout=1)
        self.incoming: "queue.Queue[IncomingCall]" = queue.Queue()
        self.requests: list[Msg] = []
        self.closed = threading.Event()
        self._waiters: dict[tuple[str, int, str], queue.Queue] = {}
        self._lock = threading.Lock()
        self._calls: dict[str, IncomingCall] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- plumbing
    def _via(self) -> str:
        return f"SIP/2.0/WSS {self.host_token};branch={sipmsg.new_branch()}"

    def send(self, data: str | bytes) -> None:
        self.ws.send(data)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.closed.set()

    def _run(self) -> None:
        try:
            while True:
                data = self.ws.recv()
                try:
                    msg = sipmsg.parse(data)
                    if msg.is_request:
                        self._on_request(msg)
                    else:
                        num, method = msg.cseq
                        with self._lock:
                            waiter = self._waiters.get((msg.call_id, num, method))
                        if waiter is not None:
                            waiter.put(msg)
                except (ValueError, IndexError):
                    continue
        except (ConnectionClosed, OSError, RuntimeError):
            pass
        finally:
            self.closed.set()

    def _transact(self, text: str, timeout: float, provisional: list | None = None) -> Msg | None:
        msg = sipmsg.parse(text)
        num, method = msg.cseq
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._waiters[(msg.call_id, num, method)] = q
        try:
            self.ws.send(text)
        except (ConnectionClosed, OSError):
            return None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                got = q.get(timeout=left)
            except queue.Empty:
                return None
            if got.status >= 200:
                return got
            if provisional is not None:
                provisional.append(got)

    # ------------------------------------------------------------ requests
    def register(self, expires: int = 600, timeout: float = 3.0) -> Msg | None:
        self.reg_cseq += 1
        aor = f"<sip:{self.user}@{self.domain}>"
        headers = [("Via", self._via()), ("Max-Forwards", "69"), ("To", aor),
                   ("From", f"{aor};tag={sipmsg.new_tag()}"), ("Call-ID", self.reg_call_id),
                   ("CSeq", f"{self.reg_cseq} REGISTER"),
                   ("Contact", f'{self.contact};+sip.ice;reg-id=1;+sip.instance="{self.instance}";'
                               f"expires={expires}"),
                   ("Expires", str(expires)), ("Allow", "INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY"),
                   ("Supported", "path,gruu,outbound"), ("User-Agent", self.user_agent)]
        return self._transact(sipmsg.request("REGISTER", f"sip:{self.domain}", headers), timeout)

    def call(self, dn: str, timeout: float = 5.0, sdp: str = PHONE_OFFER) -> PhoneCall:
        """INVITE sip:<dn>@domain; ACK whatever final comes back."""
        call_id = uuid.uuid4().hex
        ruri = f"sip:{dn}@{self.domain}"
        via = self._via()
        headers = [("Via", via), ("Max-Forwards", "69"), ("To", f"<{ruri}>"),
                   ("From", f"<sip:{self.user}@{self.domain}>;tag={sipmsg.new_tag()}"),
                   ("Call-ID", call_id), ("CSeq", "1 INVITE"), ("Contact", self.contact),
                   ("User-Agent", self.user_agent)]
        text = sipmsg.request("INVITE", ruri, headers, sdp)
        invite = sipmsg.parse(text)
        final = self._transact(text, timeout)
        call = PhoneCall(self, invite, final)
        if final is None:
            return call
        if 200 <= final.status < 300:
            call.route = list(reversed(final.all("Record-Route")))
            call.target = final.uri("Contact")
            self.send(call._in_dialog("ACK", 1))
        else:
            ack = [("Via", via), ("Max-Forwards", "69"), ("To", final.get("To") or ""),
                   ("From", invite.get("From") or ""), ("Call-ID", call_id), ("CSeq", "1 ACK")]
            self.send(sipmsg.request("ACK", ruri, ack))
        return call

    # ------------------------------------------------------------------ UAS
    def _on_request(self, msg: Msg) -> None:
        with self._lock:
            self.requests.append(msg)
        method = msg.method
        if method == "ACK":
            call = self._calls.get(msg.call_id)
            if call is not None:
                call.acked.set()
            return
        tag = msg.tag("To") or sipmsg.new_tag()
        contact = [("Contact", self.contact)]
        if method == "INVITE" and not msg.tag("To"):
            self.send(sipmsg.response(msg, 180, "Ringing", to_tag=tag, extra=contact, record_route=True))
            if self.answer_code == 200:
                self.send(sipmsg.response(msg, 200, "OK", to_tag=tag, extra=contact,
                                          body=PHONE_ANSWER if msg.body else PHONE_OFFER,
                                          record_route=True))
            else:
                self.send(sipmsg.response(msg, self.answer_code, "Phone Says No", to_tag=tag))
            call = IncomingCall(msg, self.answer_code)
            self._calls[msg.call_id] = call
            self.incoming.put(call)
        elif method == "INVITE":
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag, extra=contact,
                                      body=PHONE_ANSWER if msg.body else PHONE_OFFER, record_route=True))
        elif method == "BYE":
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag))
            call = self._calls.get(msg.call_id)
            if call is not None:
                call.ended.set()
        else:
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag))

    def next_incoming(self, timeout: float = 3.0) -> IncomingCall | None:
        try:
            return self.incoming.get(timeout=timeout)
        except queue.Empty:
            return None
