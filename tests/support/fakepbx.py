"""A PBX emulator on UDP (loopback only) for the reliability tests: registrar
(200 OK echoing Contact and Path; no digest, or Digest like Asterisk when given
passwords), UAS answering calls with an SDP answer, and UAC placing calls toward
agents through a gateway node. It keeps every request it saw so tests can count
what reached the PBX."""
from __future__ import annotations

import ipaddress
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

from gw import stack
from support import sipmsg
from support.sipmsg import Msg
from support.wsphone import digest_response, parse_challenge

REALM = "pbx.test"

PBX_SDP = ("v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
           "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")


def uri_hostport(uri: str, default_port: int = 5060) -> tuple[str, int]:
    """host and port of a SIP URI (sip:user@host:port;params)."""
    body = uri.split(":", 1)[1] if uri.startswith(("sip:", "sips:")) else uri
    body = body.split(";", 1)[0].split("?", 1)[0].split("@")[-1]
    host, _, port = body.partition(":")
    return host, int(port) if port else default_port


@dataclass
class PbxCall:
    """A call the PBX placed (UAC side of the dialog)."""
    pbx: "FakePbx"
    invite: Msg
    final: Msg | None
    provisional: list[Msg] = field(default_factory=list)
    route: list[str] = field(default_factory=list)
    target: str = ""

    @property
    def status(self) -> int:
        return self.final.status if self.final is not None else 0

    def _in_dialog(self, method: str, cseq: int) -> str:
        headers = [("Via", f"SIP/2.0/UDP {self.pbx.host}:{self.pbx.port};branch={sipmsg.new_branch()};rport")]
        headers += [("Route", r) for r in self.route]
        headers += [("Max-Forwards", "70"), ("From", self.invite.get("From") or ""),
                    ("To", self.final.get("To") or ""), ("Call-ID", self.invite.call_id),
                    ("CSeq", f"{cseq} {method}")]
        return sipmsg.request(method, self.target, headers)

    def _next_hop(self) -> tuple[str, int]:
        uri = self.route[0].split(">")[0].lstrip("<") if self.route else self.target
        host, port = uri_hostport(uri)
        # Never resolve a name: every hop in these tests is a loopback address.
        ipaddress.ip_address(host)
        return host, port

    def ack(self, cseq: int = 1) -> None:
        self.pbx.send(self._in_dialog("ACK", cseq), self._next_hop())

    def bye(self, timeout: float = 3.0) -> int:
        final = self.request("BYE", 2, timeout=timeout)
        return final.status if final is not None else 0

    def request(self, method: str, cseq: int, extra: list[tuple[str, str]] = (),
                timeout: float = 3.0, body: str = "") -> Msg | None:
        """An in-dialog request along the route set (extra headers after CSeq,
        e.g. Event: talk; an SDP body); its final response, None if none came in time."""
        msg = sipmsg.parse(self._in_dialog(method, cseq))
        msg.headers += list(extra) + ([("Content-Type", "application/sdp")] if body else [])
        msg.body = body
        waiter = self.pbx._expect(self.invite.call_id, cseq, method)
        self.pbx.send(msg.text(), self._next_hop())
        return self.pbx._final(waiter, timeout)


class FakePbx:
    def __init__(self, host: str, port: int, *, invite_code: int = 200,
                 passwords: dict[str, str] | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()
        self.invite_code = invite_code
        # Digest as Asterisk does it: REGISTER 401, other requests 407; a wrong
        # password gets the challenge again; unknown users never succeed.
        self.passwords = passwords
        self._nonces: set[str] = set()
        # Torture mode: answer every request (but ACK) with this status, no SDP.
        self.reply_all: tuple[int, str] | None = None
        # Dark mode: read and discard everything, as a PBX that hangs or whose
        # network is gone (no ICMP either: the socket stays bound).
        self.dark = False
        self.dropped = 0
        self.seen: list[Msg] = []
        self.acked: set[str] = set()
        self.byes: set[str] = set()
        self._lock = threading.Lock()
        self._waiters: dict[tuple[str, int, str], queue.Queue] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- plumbing
    def send(self, text: str | bytes, dst: tuple[str, int]) -> None:
        self.sock.sendto(text.encode() if isinstance(text, str) else text, dst)

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _run(self) -> None:
        stack.receive_loop(self.sock, lambda: not self._closed, self._datagram)

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.dark:
            self.dropped += 1
            return
        try:
            msg = sipmsg.parse(data)
            if msg.is_request:
                self._on_request(msg, addr)
            else:
                num, method = msg.cseq
                with self._lock:
                    waiter = self._waiters.get((msg.call_id, num, method))
                if waiter is not None:
                    waiter.put(msg)
        except Exception:  # a malformed packet must not kill the emulator
            return

    def _expect(self, call_id: str, cseq: int, method: str) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._waiters[(call_id, cseq, method)] = q
        return q

    @staticmethod
    def _final(q: queue.Queue, timeout: float, provisional: list | None = None) -> Msg | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = q.get(timeout=left)
            except queue.Empty:
                return None
            if msg.status >= 200:
                return msg
            if provisional is not None:
                provisional.append(msg)

    def requests(self, method: str | None = None) -> list[Msg]:
        with self._lock:
            return [m for m in self.seen if method is None or m.method == method]

    # ------------------------------------------------------------------ UAS
    def _on_request(self, msg: Msg, addr: tuple[str, int]) -> None:
        with self._lock:
            self.seen.append(msg)
        method = msg.method
        if method == "ACK":
            self.acked.add(msg.call_id)
            return
        tag = msg.tag("To") or sipmsg.new_tag()
        if (self.passwords is not None and method not in ("CANCEL", "BYE") and not msg.tag("To")
                and not self._authorized(msg)):
            code, name = (401, "WWW-Authenticate") if method == "REGISTER" else (407, "Proxy-Authenticate")
            nonce = secrets.token_hex(8)
            with self._lock:
                self._nonces.add(nonce)
            challenge = f'Digest realm="{REALM}", nonce="{nonce}", qop="auth", algorithm=MD5'
            reason = "Unauthorized" if code == 401 else "Proxy Authentication Required"
            self.send(sipmsg.response(msg, code, reason, to_tag=tag, extra=[(name, challenge)]), addr)
            return
        if self.reply_all is not None:
            code, reason = self.reply_all
            self.send(sipmsg.response(msg, code, reason, to_tag=tag), addr)
            return
        contact = ("Contact", f"<sip:pbx@{self.host}:{self.port}>")
        if method == "REGISTER":
            extra = []
            for c in msg.all("Contact"):
                if c != "*" and "expires=" not in c.lower():
                    c = f"{c};expires={msg.get('Expires') or 600}"
                if c != "*" and not c.lower().endswith("expires=0"):
                    extra.append(("Contact", c))
            extra += [("Path", p) for p in msg.all("Path")] + [("Supported", "path")]
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag, extra=extra), addr)
        elif method == "INVITE":
            self.send(sipmsg.response(msg, 100, "Trying"), addr)
            if self.invite_code == 200:
                self.send(sipmsg.response(msg, 200, "OK", to_tag=tag, extra=[contact], body=PBX_SDP,
                                          record_route=True), addr)
            else:
                self.send(sipmsg.response(msg, self.invite_code, "PBX Says No", to_tag=tag), addr)
        elif method == "BYE":
            self.byes.add(msg.call_id)
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag), addr)
        elif method == "CANCEL":
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag), addr)
        else:
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag, extra=[contact]), addr)

    def _authorized(self, msg: Msg) -> bool:
        value = msg.get("Authorization") or msg.get("Proxy-Authorization")
        if not value:
            return False
        try:
            c = parse_challenge(value)
        except ValueError:
            return False
        password = (self.passwords or {}).get(c.get("username", ""))
        with self._lock:
            known = c.get("nonce") in self._nonces
        if password is None or not known:
            return False
        expected = digest_response(username=c["username"], realm=REALM, password=password,
                                   method=msg.method, uri=c.get("uri", ""), nonce=c["nonce"],
                                   qop=c.get("qop"), nc=c.get("nc", ""), cnonce=c.get("cnonce", ""))
        return expected == c.get("response")

    def guesses(self, method: str = "REGISTER") -> list[Msg]:
        """Requests that reached the PBX carrying credentials (each one a password tried)."""
        return [m for m in self.requests(method)
                if m.get("Authorization") or m.get("Proxy-Authorization")]

    # ------------------------------------------------------------------ UAC
    def call(self, gateway: tuple[str, int], dn: str, *, ruri: str | None = None,
             sdp: str = PBX_SDP, timeout: float = 5.0, ack: bool = True) -> PbxCall:
        """INVITE sip:<dn>@<gateway>, wait for the final response, ACK it."""
        host, port = gateway
        ruri = ruri or f"sip:{dn}@{host}:{port}"
        call_id = f"pbx-{sipmsg.new_tag()}"
        branch = sipmsg.new_branch()
        headers = [("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport"),
                   ("Max-Forwards", "70"), ("From", f"<sip:pbx@{self.host}>;tag={sipmsg.new_tag()}"),
                   ("To", f"<sip:{dn}@{host}:{port}>"), ("Call-ID", call_id), ("CSeq", "1 INVITE"),
                   ("Contact", f"<sip:pbx@{self.host}:{self.port}>"),
                   ("User-Agent", "fake-pbx")]
        text = sipmsg.request("INVITE", ruri, headers, sdp)
        waiter = self._expect(call_id, 1, "INVITE")
        self.send(text, gateway)
        invite = sipmsg.parse(text)
        provisional: list[Msg] = []
        final = self._final(waiter, timeout, provisional)
        call = PbxCall(self, invite, final, provisional)
        if final is None:
            return call
        if 200 <= final.status < 300:
            call.route = list(reversed(final.all("Record-Route")))
            call.target = final.uri("Contact")
            if ack:
                call.ack()
        else:
            # ACK for a non-2xx final: same branch, hop by hop.
            ack_headers = [("Via", invite.get("Via") or ""), ("Max-Forwards", "70"),
                           ("From", invite.get("From") or ""), ("To", final.get("To") or ""),
                           ("Call-ID", call_id), ("CSeq", "1 ACK")]
            self.send(sipmsg.request("ACK", ruri, ack_headers), gateway)
        return call
