"""wsphone - a small SIP-over-WebSocket phone (RFC 7118) for the tests.

SIPp speaks no WebSocket, so tests play the agent's browser with this.  On the
wire it looks like JsSIP 3.10: subprotocol "sip", Via "SIP/2.0/WS
<random>.invalid", Contact "<sip:<random8>@<random>.invalid;transport=ws>",
Max-Forwards 69, one Call-ID for every REGISTER with CSeq+1, the same header
order, Allow/Supported/User-Agent lines and Digest Authorization format.

    phone = await WsPhone.connect("ws://127.0.0.1:8080", user="1001",
                                  domain="pbx.test", password="secret")
    resp = await phone.register(expires=600)      # 401/407 handled
    call = await phone.invite("sip:2000@pbx.test", sdp)   # returns on the final response
    await call.reinvite(sdp_set_direction(sdp, "sendonly"))
    await call.bye()
    call = await phone.wait_incoming(5)           # answered per phone.policy
    await call.wait_confirmed()                   # ACK received (call.ack.body: 3PCC answer)
    await call.wait_bye()
    await phone.close()

WebSocket is reliable, so there are no retransmissions and transactions are
kept minimal: a client transaction is the Via branch we put in a request.
Everything received is kept in `phone.received` (parsed SipMessage objects,
or ones with `.error` set when unparsable); `next_message()` consumes them in
order for tests that drive the wire by hand with `send_raw()`.

Threaded tests (the reliability tests, next to the threaded FakePbx) use the same
phone through BlockingPhone, which runs it on a background event loop:

    phone = BlockingPhone("ws://127.0.0.1:8080", "1001")
    assert phone.register().status == 200
    call = phone.call("2000"); call.bye()
    got = phone.next_incoming(3); got.acked.wait(3); got.ended.wait(3)
    phone.close()

`ws_connect()` opens a bare (sync) WebSocket for tests that send raw frames.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlparse

from websockets.sync.client import connect as _ws_connect_sync

try:  # websockets >= 13
    from websockets.asyncio.client import connect as _ws_connect
except ImportError:  # pragma: no cover - websockets 12
    from websockets.client import connect as _ws_connect  # type: ignore[no-redef]

log = logging.getLogger("wsphone")

USER_AGENT = "JsSIP 3.10.0"
ALLOW = "INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY"
ACCEPT = "application/sdp, application/dtmf-relay"
MAX_FORWARDS = "69"
SESSION_EXPIRES = "90"

# ------------------------------------------------------------------ helpers

_TOKEN_CHARS = "0123456789abcdefghijklmnopqrstuv"   # JsSIP createRandomToken (base 32)


def token(n: int) -> str:
    return "".join(random.choice(_TOKEN_CHARS) for _ in range(n))


def new_tag() -> str:
    return token(10)


def new_branch() -> str:
    return f"z9hG4bK{random.randrange(10_000_000)}"


# ------------------------------------------------------------------ messages

COMPACT = {"i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
           "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
           "v": "via", "o": "event", "r": "refer-to", "b": "referred-by", "x": "session-expires",
           "u": "allow-events"}


def _canon(name: str) -> str:
    n = name.strip().lower()
    return COMPACT.get(n, n)


def split_values(value: str) -> list[str]:
    """Split a header value on the commas that separate values (not those in
    quotes or <...>): 'a, <sip:b;x=1,2>, "c,d" <e>' -> 3 values."""
    out, cur, quoted, angle, esc = [], [], False, False, False
    for ch in value:
        if esc:
            esc = False
        elif quoted and ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle = True
        elif not quoted and ch == ">":
            angle = False
        elif ch == "," and not quoted and not angle:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


@dataclass
class SipMessage:
    """A request (method, uri) or a response (status, reason)."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    raw: str = ""
    error: str | None = None        # set when `raw` could not be parsed

    # -- access
    @property
    def is_request(self) -> bool:
        return self.method is not None

    @property
    def is_response(self) -> bool:
        return self.status is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        """First header line value with this name (compact forms understood)."""
        key = _canon(name)
        for n, v in self.headers:
            if _canon(n) == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = _canon(name)
        return [v for n, v in self.headers if _canon(n) == key]

    def values(self, name: str) -> list[str]:
        """Every comma-separated value of every header line with this name."""
        return [x for v in self.get_all(name) for x in split_values(v)]

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    # -- edit
    def set(self, name: str, value: str) -> None:
        """Replace every line of this header by one (in the first one's place)."""
        key = _canon(name)
        idx = [i for i, (n, _) in enumerate(self.headers) if _canon(n) == key]
        if idx:
            self.headers[idx[0]] = (name, value)
            for i in reversed(idx[1:]):
                del self.headers[i]
        else:
            self.add(name, value)

    def add(self, name: str, value: str, first: bool = False) -> None:
        if first:
            self.headers.insert(0, (name, value))
        else:
            # keep Content-Length last
            pos = len(self.headers)
            if self.headers and _canon(self.headers[-1][0]) == "content-length":
                pos -= 1
            self.headers.insert(pos, (name, value))

    def remove(self, name: str) -> None:
        key = _canon(name)
        self.headers = [(n, v) for n, v in self.headers if _canon(n) != key]

    # -- common fields
    @property
    def call_id(self) -> str | None:
        return self.get("Call-ID")

    @property
    def cseq(self) -> int:
        return int((self.get("CSeq") or "0").split()[0])

    @property
    def cseq_method(self) -> str:
        parts = (self.get("CSeq") or "").split()
        return parts[1].upper() if len(parts) > 1 else ""

    @property
    def from_tag(self) -> str | None:
        v = self.get("From")
        return parse_name_addr(v).params.get("tag") if v else None

    @property
    def to_tag(self) -> str | None:
        v = self.get("To")
        return parse_name_addr(v).params.get("tag") if v else None

    @property
    def branch(self) -> str | None:
        vias = self.values("Via")
        m = re.search(r";\s*branch=([^;,\s]+)", vias[0]) if vias else None
        return m.group(1) if m else None

    @property
    def content_type(self) -> str:
        return (self.get("Content-Type") or "").split(";")[0].strip().lower()

    @property
    def sdp(self) -> str | None:
        return self.body if self.body and self.content_type == "application/sdp" else None

    # -- text
    def start_line(self) -> str:
        if self.is_request:
            return f"{self.method} {self.uri} SIP/2.0"
        return f"SIP/2.0 {self.status} {self.reason}".rstrip()

    def encode(self, fix_length: bool = True) -> str:
        """The message as text; Content-Length is recomputed unless told not to."""
        headers = list(self.headers)
        if fix_length:
            length = str(len(self.body.encode()))
            if any(_canon(n) == "content-length" for n, _ in headers):
                headers = [(n, length if _canon(n) == "content-length" else v) for n, v in headers]
            else:
                headers.append(("Content-Length", length))
        lines = [self.start_line()] + [f"{n}: {v}" for n, v in headers]
        return "\r\n".join(lines) + "\r\n\r\n" + self.body

    __str__ = encode

    def copy(self) -> "SipMessage":
        return SipMessage(self.method, self.uri, self.status, self.reason, list(self.headers),
                          self.body, self.raw, self.error)

    def summary(self) -> str:
        if self.error:
            return f"<unparsable: {self.error}>"
        return f"{self.start_line()} [{self.get('CSeq')}]"


_START_REQ = re.compile(r"^([A-Za-z!%*_+`'~.-]+) (\S+) SIP/2\.0$")
_START_RESP = re.compile(r"^SIP/2\.0 (\d{3})(?: (.*))?$")


def parse(text: str) -> SipMessage:
    """Parse one SIP message; raises ValueError when it is not one."""
    head, sep, body = text.partition("\r\n\r\n")
    if not sep:
        head, sep, body = text.partition("\n\n")
    lines = re.split(r"\r?\n", head.lstrip("\r\n"))
    msg = SipMessage(raw=text)
    m = _START_RESP.match(lines[0])
    if m:
        msg.status, msg.reason = int(m.group(1)), (m.group(2) or "")
    else:
        m = _START_REQ.match(lines[0])
        if not m:
            raise ValueError(f"bad start line {lines[0]!r}")
        msg.method, msg.uri = m.group(1).upper(), m.group(2)
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and msg.headers:       # folded line
            n, v = msg.headers[-1]
            msg.headers[-1] = (n, f"{v} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise ValueError(f"bad header line {line!r}")
        msg.headers.append((name.strip(), value.strip()))
    length = msg.get("Content-Length")
    if length is not None:
        if not length.isdigit():
            raise ValueError(f"bad Content-Length {length!r}")
        raw_body = body.encode()
        if len(raw_body) < int(length):
            raise ValueError("body shorter than Content-Length")
        body = raw_body[: int(length)].decode(errors="replace")
    msg.body = body
    return msg


def build_request(method: str, uri: str, headers: Iterable[tuple[str, str]], body: str = "") -> SipMessage:
    return SipMessage(method=method.upper(), uri=uri, headers=list(headers), body=body)


# ------------------------------------------------------------------ addresses


@dataclass
class NameAddr:
    """'"Display" <uri>;param=v' (From, To, Contact, Route, Record-Route)."""

    uri: str
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    def __str__(self) -> str:
        s = f'"{self.display}" <{self.uri}>' if self.display else f"<{self.uri}>"
        for k, v in self.params.items():
            s += f";{k}" if v is None else f";{k}={v}"
        return s


def _parse_params(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in re.findall(r'(?:[^;"]|"[^"]*")+', text):
        part = part.strip()
        if not part:
            continue
        k, eq, v = part.partition("=")
        out[k.strip().lower()] = v.strip() if eq else None
    return out


def parse_name_addr(value: str) -> NameAddr:
    value = value.strip()
    m = re.match(r'^\s*(?:"((?:[^"\\]|\\.)*)"|([^<"]*?))\s*<([^>]*)>(.*)$', value)
    if m:
        display = m.group(1) if m.group(1) is not None else (m.group(2) or "").strip() or None
        return NameAddr(m.group(3).strip(), display, _parse_params(m.group(4)))
    # addr-spec without <>: every ;param belongs to the header
    uri, _, rest = value.partition(";")
    return NameAddr(uri.strip(), None, _parse_params(rest))


def uri_user(uri: str) -> str | None:
    m = re.match(r"^sips?:([^@;>]+)@", uri.strip())
    return m.group(1) if m else None


def uri_params(uri: str) -> dict[str, str | None]:
    base = uri.split("?", 1)[0]
    _, _, params = base.partition(";")
    return _parse_params(params)


# ------------------------------------------------------------------ digest (RFC 2617 / 2069)


def parse_challenge(value: str) -> dict[str, str]:
    """'Digest realm="x", nonce="y", qop="auth"' -> {"realm": "x", ...}."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"not a Digest challenge: {value!r}")
    out = {}
    for k, v in re.findall(r'([\w-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)', rest):
        out[k.lower()] = v[1:-1] if v.startswith('"') else v
    return out


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def digest_response(*, username: str, realm: str, password: str, method: str, uri: str,
                    nonce: str, qop: str | None = None, nc: str = "00000001", cnonce: str = "",
                    body: str = "") -> str:
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}:{_md5(body)}") if qop == "auth-int" else _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def authorization(challenge: dict[str, str], *, method: str, uri: str, username: str,
                  password: str, body: str = "", nc: int = 1, cnonce: str | None = None) -> str:
    """Authorization header value, formatted as JsSIP's DigestAuthentication does."""
    algorithm = challenge.get("algorithm", "MD5")
    if algorithm.upper() != "MD5":
        raise ValueError(f"unsupported digest algorithm {algorithm}")
    offered = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    qop = "auth-int" if "auth-int" in offered else "auth" if "auth" in offered else None
    if offered and qop is None:
        raise ValueError(f"unsupported qop {offered}")
    cnonce = cnonce or token(12)
    nc_hex = f"{nc:08x}"
    response = digest_response(username=username, realm=challenge.get("realm", ""), password=password,
                               method=method, uri=uri, nonce=challenge.get("nonce", ""), qop=qop,
                               nc=nc_hex, cnonce=cnonce, body=body)
    parts = ["algorithm=MD5", f'username="{username}"', f'realm="{challenge.get("realm", "")}"',
             f'nonce="{challenge.get("nonce", "")}"', f'uri="{uri}"', f'response="{response}"']
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    if qop:
        parts += [f"qop={qop}", f'cnonce="{cnonce}"', f"nc={nc_hex}"]
    return "Digest " + ", ".join(parts)


# ------------------------------------------------------------------ SDP helpers


def sdp_direction(sdp: str | None) -> str:
    m = re.search(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", sdp or "", re.M)
    return m.group(1) if m else "sendrecv"


def sdp_set_direction(sdp: str, direction: str) -> str:
    """Set the direction of every media section (adds the attribute if missing)."""
    out, lines = [], sdp.replace("\r\n", "\n").rstrip("\n").split("\n")
    in_media, had = False, False
    for line in lines:
        if line.startswith("m="):
            if in_media and not had:
                out.append(f"a={direction}")
            in_media, had = True, False
        if re.match(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", line):
            if in_media:
                out.append(f"a={direction}")
                had = True
            continue
        out.append(line)
    if in_media and not had:
        out.append(f"a={direction}")
    return "\r\n".join(out) + "\r\n"


def sdp_bump_version(sdp: str) -> str:
    return re.sub(r"^(o=\S+ \S+ )(\d+)", lambda m: m.group(1) + str(int(m.group(2)) + 1),
                  sdp, count=1, flags=re.M)


_ANSWER_DIR = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive", "sendrecv": "sendrecv"}


def webrtc_sdp(ip: str = "127.0.0.1", port: int = 9, direction: str = "sendrecv", setup: str = "actpass") -> str:
    """A static browser-like audio SDP (UDP/TLS/RTP/SAVPF, ICE, DTLS, opus/PCMU/PCMA,
    telephone-event 126).  Enough for signalling tests; use aiortc for media."""
    sid = random.randrange(10**17, 10**18)
    return "\r\n".join([
        "v=0", f"o=- {sid} 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "a=group:BUNDLE 0", "a=extmap-allow-mixed", "a=msid-semantic: WMS wsphone",
        f"m=audio {port} UDP/TLS/RTP/SAVPF 111 0 8 126",
        f"c=IN IP4 {ip}", "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp 2122260223 {ip} {port} typ host generation 0",
        f"a=ice-ufrag:{token(4)}", f"a=ice-pwd:{token(24)}", "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(f"{random.randrange(256):02X}" for _ in range(32)),
        f"a=setup:{setup}", "a=mid:0", f"a={direction}", "a=msid:wsphone audio0", "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000",
        f"a=ssrc:{random.randrange(1, 2**32)} cname:wsphone",
    ]) + "\r\n"


# ------------------------------------------------------------------ phone


@dataclass
class AnswerPolicy:
    """How the phone treats an incoming INVITE.

    mode: "auto"   180, then 200 after ring_s
          "ring"   180 only; answer with call.answer() or wait for CANCEL
          "talk"   180, then answer when NOTIFY Event: talk arrives in the early dialog
          "reject" 180, then reject_code after ring_s
          "manual" nothing: the test calls call.ring()/answer()/reject()
    sdp: SDP for the 200 (the answer, or the offer when the INVITE had none -
         3PCC); default webrtc_sdp().  Answers to re-INVITE/UPDATE offers reuse
    the call's last local SDP with the direction mirrored and o= version + 1.
    """

    mode: str = "auto"
    ring_s: float = 0.0
    sdp: str | None = None
    reject_code: int = 486
    notify_code: int = 200
    refer_code: int = 202


class _Txn:
    def __init__(self, request: SipMessage, call: "Call | None") -> None:
        self.request = request
        self.call = call
        self.provisional: list[SipMessage] = []
        self.final: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()


class Call:
    """One dialog (or dialog attempt).  state: calling / early / answered
    (2xx sent, waiting for ACK) / confirmed / terminated / failed."""

    def __init__(self, phone: "WsPhone", direction: str, call_id: str, local: NameAddr,
                 remote: NameAddr, remote_target: str) -> None:
        self.phone = phone
        self.direction = direction          # "out" | "in"
        self.call_id = call_id
        self.local = local                  # our From (out) / To (in), with our tag
        self.remote = remote                # their party; tag once known
        self.remote_target = remote_target
        self.route_set: list[str] = []
        self.local_cseq = random.randrange(1, 10000)
        self.remote_cseq: int | None = None
        self.state = "calling" if direction == "out" else "incoming"
        self.invite: SipMessage | None = None       # the initial INVITE (sent or received)
        self.provisional: list[SipMessage] = []     # 1xx received (out) / sent (in)
        self.response: SipMessage | None = None     # final response received (out) / sent (in)
        self.ack: SipMessage | None = None          # ACK sent (out) / received (in)
        self.local_sdp: str | None = None
        self.remote_sdp: str | None = None
        self.received: list[SipMessage] = []        # in-dialog requests received
        self.policy = phone.policy
        self.ack_sdp: str | None = None             # out: answer for a 200 offer (INVITE without SDP)
        self._invite_txn: _Txn | None = None

    # -- identities
    @property
    def local_tag(self) -> str:
        return self.local.params["tag"] or ""

    @property
    def remote_tag(self) -> str | None:
        return self.remote.params.get("tag")

    @property
    def ack_body(self) -> str | None:
        return self.ack.body if self.ack else None

    def __repr__(self) -> str:
        return f"<Call {self.direction} {self.call_id} {self.state}>"

    # -- requests inside the dialog
    def _request(self, method: str, *, body: str = "", content_type: str | None = None,
                 extra: Iterable[tuple[str, str]] = (), cseq: int | None = None) -> SipMessage:
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        hdrs = list(extra)
        if method in ("INVITE", "UPDATE", "REFER", "NOTIFY", "SUBSCRIBE"):
            hdrs.insert(0, ("Contact", self.phone.contact(outbound=self.direction == "out")))
        if body:
            hdrs.append(("Content-Type", content_type or "application/sdp"))
        return self.phone._new_request(method, self.remote_target, call_id=self.call_id, cseq=cseq,
                                       from_=str(self.local), to=str(self.remote),
                                       route=self.route_set, extra=hdrs, body=body)

    async def request(self, method: str, body: str = "", content_type: str | None = None,
                      extra: Iterable[tuple[str, str]] = (), timeout: float = 5.0) -> SipMessage:
        """Send an in-dialog request; returns its final response (2xx INVITE is ACKed)."""
        method = method.upper()
        req = self._request(method, body=body, content_type=content_type, extra=extra)
        if method == "INVITE" and body:
            self.local_sdp = body
        resp, _ = await self.phone._transact(req, self, timeout=timeout, bump=self._bump)
        if method == "BYE":
            self.state = "terminated"
        return resp

    def _bump(self, req: SipMessage) -> None:
        self.local_cseq += 1
        req.set("CSeq", f"{self.local_cseq} {req.method}")

    async def reinvite(self, sdp: str, extra: Iterable[tuple[str, str]] = (), timeout: float = 5.0) -> SipMessage:
        return await self.request("INVITE", sdp, extra=extra, timeout=timeout)

    async def update(self, sdp: str = "", extra: Iterable[tuple[str, str]] = (), timeout: float = 5.0) -> SipMessage:
        if sdp:
            self.local_sdp = sdp
        return await self.request("UPDATE", sdp, extra=extra, timeout=timeout)

    async def info(self, body: str = "Signal=5\r\nDuration=160\r\n",
                   content_type: str = "application/dtmf-relay", timeout: float = 5.0) -> SipMessage:
        return await self.request("INFO", body, content_type, timeout=timeout)

    async def refer(self, target: str, timeout: float = 5.0) -> SipMessage:
        return await self.request("REFER", extra=[("Refer-To", f"<{target}>")], timeout=timeout)

    async def bye(self, timeout: float = 5.0) -> SipMessage:
        return await self.request("BYE", timeout=timeout)

    async def cancel(self, timeout: float = 5.0) -> SipMessage:
        """CANCEL our pending INVITE; returns the INVITE's final response (487)."""
        assert self.direction == "out" and self.invite is not None and self._invite_txn is not None
        inv = self.invite
        hdrs = [(n, v) for n, v in inv.headers if _canon(n) in ("route", "via", "max-forwards", "to", "from", "call-id")]
        hdrs.append(("CSeq", f"{inv.cseq} CANCEL"))
        hdrs += [("Allow", ALLOW), ("Supported", "outbound"), ("User-Agent", self.phone.user_agent)]
        cancel = build_request("CANCEL", inv.uri or "", hdrs)
        await self.phone._send_txn(cancel, None)
        return await asyncio.wait_for(asyncio.shield(self._invite_txn.final), timeout)

    # -- answering (incoming)
    async def ring(self, code: int = 180) -> None:
        assert self.invite is not None
        resp = self.phone._response(self.invite, code, to_tag=self.local_tag,
                                    extra=[("Contact", self.phone.contact())])
        self.provisional.append(resp)
        self.state = "early"
        await self.phone.send(resp)

    async def answer(self, sdp: str | None = None) -> None:
        """200 OK with SDP: the answer, or the offer if the INVITE had none (3PCC)."""
        assert self.invite is not None
        if self.state not in ("incoming", "early"):
            return
        sdp = sdp or self.policy.sdp or webrtc_sdp()
        self.local_sdp = sdp
        resp = self.phone._response(self.invite, 200, to_tag=self.local_tag, body=sdp,
                                    extra=[("Contact", self.phone.contact())])
        self.response = resp
        self.state = "answered"
        await self.phone.send(resp)

    async def reject(self, code: int = 486) -> None:
        assert self.invite is not None
        resp = self.phone._response(self.invite, code, to_tag=self.local_tag)
        self.response = resp
        self.state = "failed"
        await self.phone.send(resp)

    # -- waiting
    async def _wait(self, pred: Callable[[], object], timeout: float, what: str):
        try:
            return await self.phone._wait(pred, timeout)
        except TimeoutError:
            raise TimeoutError(f"{self!r}: timed out after {timeout}s waiting for {what}") from None

    async def wait_request(self, method: str, timeout: float = 5.0, index: int = 0) -> SipMessage:
        """The index-th in-dialog request of this method (already received or not)."""
        method = method.upper()

        def found():
            got = [r for r in self.received if r.method == method]
            return got[index] if len(got) > index else None
        return await self._wait(found, timeout, f"{method} #{index}")

    async def wait_bye(self, timeout: float = 5.0) -> SipMessage:
        return await self.wait_request("BYE", timeout)

    async def wait_confirmed(self, timeout: float = 5.0) -> "Call":
        await self._wait(lambda: self.state in ("confirmed", "terminated", "failed"), timeout, "confirmed")
        if self.state != "confirmed":
            raise AssertionError(f"{self!r} did not get confirmed (response {self.response and self.response.summary()})")
        return self

    async def wait_state(self, *states: str, timeout: float = 5.0) -> str:
        await self._wait(lambda: self.state in states, timeout, f"state in {states}")
        return self.state

    async def wait_final(self, timeout: float = 10.0) -> SipMessage:
        assert self._invite_txn is not None
        return await asyncio.wait_for(asyncio.shield(self._invite_txn.final), timeout)

    # -- what the peer sends in the dialog
    def _answer_sdp(self, offer: str) -> str:
        base = self.local_sdp or self.policy.sdp or webrtc_sdp()
        return sdp_bump_version(sdp_set_direction(base, _ANSWER_DIR[sdp_direction(offer)]))

    async def _on_request(self, req: SipMessage) -> None:
        ph, m = self.phone, req.method
        if m not in ("ACK", "CANCEL"):
            if self.remote_cseq is not None and req.cseq < self.remote_cseq:
                await ph.send(ph._response(req, 500, reason="Server Internal Error"))
                return
            self.remote_cseq = req.cseq
        self.received.append(req)
        if m == "ACK":
            if self.state == "answered" and self.direction == "in" and req.cseq == (self.invite.cseq if self.invite else -1):
                self.ack = req
                if req.sdp:
                    self.remote_sdp = req.sdp
                self.state = "confirmed"
            return
        if req.has("Contact") and m in ("INVITE", "UPDATE"):
            self.remote_target = parse_name_addr(req.values("Contact")[0]).uri
        contact = [("Contact", ph.contact(outbound=self.direction == "out"))]
        if m == "BYE":
            await ph.send(ph._response(req, 200))
            self.state = "terminated"
        elif m in ("INVITE", "UPDATE"):
            if req.sdp:
                self.remote_sdp = req.sdp
                answer = self._answer_sdp(req.sdp)
            elif m == "INVITE":       # offerless re-INVITE: we offer
                answer = sdp_bump_version(self.local_sdp or self.policy.sdp or webrtc_sdp())
            else:
                answer = ""
            if answer:
                self.local_sdp = answer
            await ph.send(ph._response(req, 200, extra=contact, body=answer))
        elif m == "NOTIFY":
            await ph.send(ph._response(req, self.policy.notify_code))
            event = (req.get("Event") or "").split(";")[0].strip().lower()
            if event == "talk" and self.state == "early" and self.direction == "in" and self.policy.mode == "talk":
                await self.answer()
        elif m == "REFER":
            await ph.send(ph._response(req, self.policy.refer_code, extra=contact))
        elif m in ("INFO", "OPTIONS", "MESSAGE"):
            await ph.send(ph._response(req, 200))
        else:
            await ph.send(ph._response(req, 405, extra=[("Allow", ALLOW)]))


class WsPhone:
    """A SIP UA over one WebSocket connection.  Create with `await WsPhone.connect(...)`."""

    def __init__(self, ws, *, user: str, domain: str, password: str | None = None,
                 auth_user: str | None = None, display_name: str | None = None,
                 user_agent: str = USER_AGENT, policy: AnswerPolicy | None = None) -> None:
        self.ws = ws
        self.user, self.domain, self.password = user, domain, password
        self.auth_user = auth_user or user
        self.display_name = display_name
        self.user_agent = user_agent
        self.aor = f"sip:{user}@{domain}"
        self.via_host = f"{token(12)}.invalid"
        self.contact_uri = f"sip:{token(8)}@{self.via_host};transport=ws"
        self.instance_id = str(uuid.uuid4())
        self.jssip_id = token(5)
        self.reg_call_id = token(22)
        self.reg_cseq = 0
        self.registered = False
        self.policy = policy or AnswerPolicy()
        self.autorespond = True             # False: incoming requests are only recorded
        self.strict_ruri = True             # 404 to requests not for our user/contact (as JsSIP)
        self.received: list[SipMessage] = []
        self.sent: list[SipMessage] = []
        self.calls: list[Call] = []
        self._inbox: list[SipMessage] = []
        self._dialogs: dict[tuple[str, str], Call] = {}
        self._txns: dict[tuple[str, str], _Txn] = {}
        self._incoming: asyncio.Queue[Call] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, url: str, *, user: str, domain: str, password: str | None = None,
                      origin: str | None = None, open_timeout: float = 5.0,
                      source_ip: str | None = None, ssl_context=None,
                      sock: socket.socket | None = None, **kw) -> "WsPhone":
        """source_ip: connect from that local address (127.0.0.x: another "host");
        ssl_context: for wss:// (e.g. trusting a test certificate); sock: a TCP socket
        already connected to the gateway (opened inside a network namespace, say)."""
        extra: dict = {"local_addr": (source_ip, 0)} if source_ip else {}
        if ssl_context is not None:
            extra["ssl"] = ssl_context
        if sock is not None:
            extra["sock"] = sock
        ws = await _ws_connect(url, subprotocols=["sip"], origin=origin, open_timeout=open_timeout,
                               ping_interval=None, **extra)
        return cls(ws, user=user, domain=domain, password=password, **kw)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._reader, 2)

    async def reconnect(self, url: str, *, origin: str | None = None, open_timeout: float = 5.0) -> None:
        """A new WebSocket (to the same or another gateway node), as JsSIP opens
        after its connection dropped: the Contact, +sip.instance, registration
        Call-ID and dialogs stay; register() again afterwards."""
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._reader, 2)
        self.ws = await _ws_connect(url, subprotocols=["sip"], origin=origin, open_timeout=open_timeout,
                                    ping_interval=None)
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read_loop())

    async def __aenter__(self) -> "WsPhone":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- wire
    def contact(self, outbound: bool = False) -> str:
        return f"<{self.contact_uri};ob>" if outbound else f"<{self.contact_uri}>"

    async def send(self, msg: SipMessage) -> None:
        self.sent.append(msg)
        log.debug("%s --> %s", self.user, msg.summary())
        await self.ws.send(msg.encode())

    async def send_raw(self, text: str) -> None:
        """Send text as one WebSocket message, exactly as given."""
        log.debug("%s --> raw %r", self.user, text[:80])
        await self.ws.send(text)

    async def next_message(self, predicate: Callable[[SipMessage], bool] | None = None,
                           timeout: float = 5.0) -> SipMessage:
        """Take the oldest not-yet-taken received message matching predicate (wait for it)."""
        def take():
            for i, m in enumerate(self._inbox):
                if predicate is None or predicate(m):
                    return self._inbox.pop(i)
            return None
        return await self._wait(take, timeout)

    async def _wait(self, pred: Callable[[], object], timeout: float):
        async def loop():
            async with self._changed:
                while True:
                    value = pred()
                    if value:
                        return value
                    if self.closed.is_set():
                        raise ConnectionError("WebSocket closed")
                    await self._changed.wait()
        return await asyncio.wait_for(loop(), timeout)

    async def _read_loop(self) -> None:
        try:
            async for frame in self.ws:
                text = frame.decode(errors="replace") if isinstance(frame, bytes) else frame
                if not text.strip():
                    continue            # CRLF keep-alive
                try:
                    msg = parse(text)
                except ValueError as e:
                    msg = SipMessage(raw=text, error=str(e))
                log.debug("%s <-- %s", self.user, msg.summary())
                self.received.append(msg)
                self._inbox.append(msg)
                if not msg.error:
                    try:
                        await (self._on_response(msg) if msg.is_response else self._on_request(msg))
                    except Exception:  # keep reading whatever a handler did
                        log.exception("wsphone handler failed on %s", msg.summary())
                async with self._changed:
                    self._changed.notify_all()
        except Exception as e:  # connection closed
            log.debug("%s: websocket ended: %r", self.user, e)
        finally:
            self.closed.set()
            for txn in self._txns.values():
                if not txn.final.done():
                    txn.final.set_exception(ConnectionError("WebSocket closed"))
            async with self._changed:
                self._changed.notify_all()

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- building
    def _new_request(self, method: str, ruri: str, *, call_id: str, cseq: int, from_: str, to: str,
                     route: Iterable[str] = (), extra: Iterable[tuple[str, str]] = (),
                     body: str = "") -> SipMessage:
        hdrs = [("Route", r) for r in route]
        hdrs += [("Via", f"SIP/2.0/WS {self.via_host};branch={new_branch()}"),
                 ("Max-Forwards", MAX_FORWARDS), ("To", to), ("From", from_),
                 ("Call-ID", call_id), ("CSeq", f"{cseq} {method}")]
        hdrs += list(extra)
        supported = {"REGISTER": "path,gruu,outbound", "INVITE": "timer,ice,replaces,outbound",
                     "UPDATE": "timer,ice,outbound"}.get(method, "outbound")
        hdrs += [("Allow", ALLOW), ("Supported", supported), ("User-Agent", self.user_agent)]
        return build_request(method, ruri, hdrs, body)

    def _response(self, req: SipMessage, code: int, *, reason: str | None = None, to_tag: str | None = None,
                  extra: Iterable[tuple[str, str]] = (), body: str = "") -> SipMessage:
        """A response the way JsSIP's IncomingRequest.reply() writes it."""
        hdrs: list[tuple[str, str]] = []
        if req.method == "INVITE" and 100 < code <= 200:
            hdrs += [("Record-Route", v) for v in req.get_all("Record-Route")]
        hdrs += [("Via", v) for v in req.get_all("Via")]
        to = req.get("To") or ""
        if code > 100 and not parse_name_addr(to).params.get("tag"):
            to += f";tag={to_tag or new_tag()}"
        hdrs += [("To", to), ("From", req.get("From") or ""), ("Call-ID", req.call_id or ""),
                 ("CSeq", f"{req.cseq} {req.method}")]
        hdrs += list(extra)
        supported = ["outbound"]
        if req.method == "INVITE":
            supported = ["timer", "ice", "replaces", "outbound"]
        elif req.method == "UPDATE":
            supported = ["timer"] + (["ice"] if body else []) + ["replaces", "outbound"]
        if req.method == "OPTIONS":
            hdrs += [("Allow", ALLOW), ("Accept", ACCEPT)]
        hdrs.append(("Supported", ",".join(supported)))
        if body:
            hdrs.append(("Content-Type", "application/sdp"))
        return SipMessage(status=code, reason=reason or REASONS.get(code, ""), headers=hdrs, body=body)

    # -- client transactions
    async def _send_txn(self, req: SipMessage, call: Call | None) -> _Txn:
        txn = _Txn(req, call)
        self._txns[(req.branch or "", req.method or "")] = txn
        await self.send(req)
        return txn

    async def _transact(self, req: SipMessage, call: Call | None, *, timeout: float,
                        bump: Callable[[SipMessage], None],
                        on_txn: Callable[[_Txn], None] | None = None) -> tuple[SipMessage, _Txn]:
        """Send a request, answer one 401/407 with credentials, return the final response."""
        for attempt in range(2):
            txn = await self._send_txn(req, call)
            if on_txn:
                on_txn(txn)
            resp = await asyncio.wait_for(asyncio.shield(txn.final), timeout)
            if resp.status in (401, 407) and attempt == 0 and self.password is not None:
                hdr = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
                challenge = resp.get(hdr)
                if not challenge:
                    return resp, txn
                name = "Authorization" if resp.status == 401 else "Proxy-Authorization"
                req = req.copy()
                req.set("Via", f"SIP/2.0/WS {self.via_host};branch={new_branch()}")
                bump(req)
                req.remove(name)
                value = authorization(parse_challenge(challenge), method=req.method or "", uri=req.uri or "",
                                      username=self.auth_user, password=self.password, body=req.body)
                # JsSIP puts the credentials right after CSeq
                i = next(i for i, (n, _) in enumerate(req.headers) if _canon(n) == "cseq")
                req.headers.insert(i + 1, (name, value))
                continue
            return resp, txn
        return resp, txn

    async def _on_response(self, resp: SipMessage) -> None:
        txn = self._txns.get((resp.branch or "", resp.cseq_method))
        if txn is None:
            # a 2xx to an INVITE we already ACKed (forked/retransmitted): ACK again
            call = self._dialogs.get((resp.call_id or "", resp.from_tag or ""))
            if call and resp.cseq_method == "INVITE" and 200 <= (resp.status or 0) < 300 and call.ack:
                await self.send(call.ack)
            return
        if (resp.status or 0) < 200:
            txn.provisional.append(resp)
        elif not txn.final.done():
            txn.final.set_result(resp)
        req, call = txn.request, txn.call
        if req.method != "INVITE":
            return
        retried = (resp.status in (401, 407) and self.password is not None
                   and not (req.has("Authorization") or req.has("Proxy-Authorization")))
        if call and call.state in ("calling", "early") and call.invite is not None and req.cseq == call.invite.cseq:
            if not retried:              # _transact sends the INVITE again with credentials
                await self._on_invite_response(call, resp)
        elif call and 200 <= (resp.status or 0) < 300:          # re-INVITE answered
            if resp.has("Contact"):
                call.remote_target = parse_name_addr(resp.values("Contact")[0]).uri
            if resp.sdp:
                call.remote_sdp = resp.sdp
            await self.send(call._request("ACK", cseq=req.cseq))
        if (resp.status or 0) >= 300:
            await self._ack_non2xx(req, resp)

    async def _on_invite_response(self, call: Call, resp: SipMessage) -> None:
        status = resp.status or 0
        if status < 200:
            call.provisional.append(resp)
        tag = resp.to_tag
        if tag and status < 300 and status > 100:
            # early or confirmed dialog: route set = Record-Route reversed, target = Contact
            first = call.remote_tag is None
            call.remote.params["tag"] = tag
            if first or status >= 200:
                call.route_set = list(reversed(resp.values("Record-Route")))
            if resp.has("Contact"):
                call.remote_target = parse_name_addr(resp.values("Contact")[0]).uri
            if resp.sdp:
                call.remote_sdp = resp.sdp
        if status < 200:
            if tag and status > 100:
                call.state = "early"
            return
        call.response = resp
        if status < 300:
            body = ""
            if call.invite is not None and not call.invite.body and resp.sdp:
                body = call.ack_sdp or sdp_set_direction(call.policy.sdp or webrtc_sdp(setup="active"),
                                                         _ANSWER_DIR[sdp_direction(resp.sdp)])
                call.local_sdp = body
            ack = call._request("ACK", cseq=call.invite.cseq if call.invite else call.local_cseq, body=body)
            call.ack = ack
            call.state = "confirmed"
            await self.send(ack)
        else:
            call.state = "failed"

    async def _ack_non2xx(self, req: SipMessage, resp: SipMessage) -> None:
        """ACK for a non-2xx final response: hop by hop, same branch, same Route."""
        hdrs = [(n, v) for n, v in req.headers if _canon(n) in ("route", "via", "max-forwards", "from", "call-id")]
        hdrs.insert(len([1 for n, _ in hdrs if _canon(n) in ("route", "via", "max-forwards")]),
                    ("To", resp.get("To") or ""))
        hdrs += [("CSeq", f"{req.cseq} ACK"), ("User-Agent", self.user_agent)]
        await self.send(build_request("ACK", req.uri or "", hdrs))

    # -- server side
    async def _on_request(self, req: SipMessage) -> None:
        if not self.autorespond:
            return
        m = req.method
        if self.strict_ruri and uri_user(req.uri or "") not in (self.user, uri_user(self.contact_uri)):
            if m != "ACK":
                await self.send(self._response(req, 404, reason="Not Found"))
            return
        if m == "CANCEL":
            await self._on_cancel(req)
            return
        tag = req.to_tag
        if tag:
            call = self._dialogs.get((req.call_id or "", tag))
            if call is None:
                if m != "ACK":
                    await self.send(self._response(req, 481, reason="Call/Transaction Does Not Exist"))
                return
            await call._on_request(req)
            return
        if m == "INVITE":
            await self._on_invite(req)
        elif m == "ACK":
            # ACK for a non-2xx we sent (or stray): record on the call
            for call in self.calls:
                if call.call_id == req.call_id and call.direction == "in":
                    call.received.append(req)
        elif m in ("OPTIONS", "NOTIFY", "MESSAGE", "INFO"):
            await self.send(self._response(req, 200))
        elif m == "BYE":
            await self.send(self._response(req, 481, reason="Call/Transaction Does Not Exist"))
        else:
            await self.send(self._response(req, 405, extra=[("Allow", ALLOW)]))

    async def _on_invite(self, req: SipMessage) -> None:
        remote = parse_name_addr(req.get("From") or "")
        local = parse_name_addr(req.get("To") or "")
        local.params["tag"] = new_tag()
        contact = req.values("Contact")
        call = Call(self, "in", req.call_id or "", local, remote,
                    parse_name_addr(contact[0]).uri if contact else (remote.uri))
        call.invite = req
        call.remote_cseq = req.cseq
        call.route_set = req.values("Record-Route")          # UAS: in order
        call.remote_sdp = req.sdp
        self.calls.append(call)
        self._dialogs[(call.call_id, call.local_tag)] = call
        await self._incoming.put(call)
        self._spawn(self._apply_policy(call))

    async def _apply_policy(self, call: Call) -> None:
        p = call.policy
        if p.mode == "manual":
            return
        await call.ring()
        if p.mode in ("ring", "talk"):
            return                       # answered by the test, or by NOTIFY Event: talk
        await asyncio.sleep(p.ring_s)
        if call.state != "early":
            return                       # cancelled meanwhile
        if p.mode == "reject":
            await call.reject(p.reject_code)
        else:
            await call.answer()

    async def _on_cancel(self, req: SipMessage) -> None:
        for call in self.calls:
            inv = call.invite
            if (call.direction == "in" and inv is not None and call.call_id == req.call_id
                    and inv.branch == req.branch):
                await self.send(self._response(req, 200, to_tag=call.local_tag))
                if call.state in ("incoming", "early"):
                    call.received.append(req)
                    call.response = self._response(inv, 487, reason="Request Terminated", to_tag=call.local_tag)
                    call.state = "terminated"
                    await self.send(call.response)
                return
        await self.send(self._response(req, 481, reason="Call/Transaction Does Not Exist"))

    # -- public API
    async def register(self, expires: int = 600, extra: Iterable[tuple[str, str]] = (),
                       timeout: float = 5.0) -> SipMessage:
        """REGISTER (same Call-ID every time, CSeq+1); returns the final response."""
        contact = (f'{self.contact()};+sip.ice;reg-id=1;+sip.instance="<urn:uuid:{self.instance_id}>"'
                   f";expires={expires}")
        resp = await self._register(contact, expires, extra, timeout)
        self.registered = 200 <= (resp.status or 0) < 300 and expires > 0
        return resp

    async def unregister(self, all_contacts: bool = False, timeout: float = 5.0) -> SipMessage:
        contact = "*" if all_contacts else (
            f'{self.contact()};+sip.ice;reg-id=1;+sip.instance="<urn:uuid:{self.instance_id}>";expires=0')
        resp = await self._register(contact, 0, (), timeout)
        if 200 <= (resp.status or 0) < 300:
            self.registered = False
        return resp

    async def _register(self, contact: str, expires: int, extra, timeout: float) -> SipMessage:
        self.reg_cseq += 1
        req = self._new_request("REGISTER", f"sip:{self.domain}", call_id=self.reg_call_id,
                                cseq=self.reg_cseq, from_=f"<{self.aor}>;tag={new_tag()}",
                                to=f"<{self.aor}>",
                                extra=[("Contact", contact), ("Expires", str(expires)), *extra])

        def bump(r: SipMessage) -> None:
            self.reg_cseq += 1
            r.set("CSeq", f"{self.reg_cseq} REGISTER")
        resp, _ = await self._transact(req, None, timeout=timeout, bump=bump)
        return resp

    async def invite(self, target: str, sdp: str | None = None, *, extra: Iterable[tuple[str, str]] = (),
                     timeout: float = 10.0, wait: bool = True, ack_sdp: str | None = None) -> Call:
        """Call target.  Returns the Call once a final response arrived (2xx is ACKed
        along the route set) - or right away with wait=False (then call.wait_final(),
        call.cancel()).  sdp=None sends an offerless INVITE; the ACK then carries
        ack_sdp (default: an answer built from the phone's SDP)."""
        from_ = NameAddr(self.aor, self.display_name, {"tag": new_tag()})
        call = Call(self, "out", self.jssip_id + token(15), from_, NameAddr(target), target)
        call.ack_sdp = ack_sdp
        call.local_sdp = sdp
        hdrs = [("Contact", self.contact(outbound=True))]
        if sdp:
            hdrs.append(("Content-Type", "application/sdp"))
        hdrs += [("Session-Expires", SESSION_EXPIRES), *extra]
        req = self._new_request("INVITE", target, call_id=call.call_id, cseq=call.local_cseq,
                                from_=str(call.local), to=str(call.remote), extra=hdrs, body=sdp or "")
        call.invite = req
        self.calls.append(call)
        self._dialogs[(call.call_id, call.local_tag)] = call

        def bump(r: SipMessage) -> None:
            call._bump(r)
            call.invite = r

        def on_txn(txn: _Txn) -> None:
            call._invite_txn = txn

        task = asyncio.create_task(self._transact(req, call, timeout=timeout, bump=bump, on_txn=on_txn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if wait:
            await task
        else:
            await self._wait(lambda: call._invite_txn is not None, timeout)
        return call

    async def wait_incoming(self, timeout: float = 5.0) -> Call:
        """The next incoming call (returned at once; the policy answers it in the background)."""
        return await asyncio.wait_for(self._incoming.get(), timeout)

    async def options(self, uri: str | None = None, timeout: float = 5.0) -> SipMessage:
        uri = uri or f"sip:{self.domain}"
        req = self._new_request("OPTIONS", uri, call_id=self.jssip_id + token(15), cseq=1,
                                from_=f"<{self.aor}>;tag={new_tag()}", to=f"<{uri}>",
                                extra=[("Accept", ACCEPT)])
        resp, _ = await self._transact(req, None, timeout=timeout, bump=lambda r: None)
        return resp


REASONS = {100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
           183: "Session Progress", 200: "OK", 202: "Accepted", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           407: "Proxy Authentication Required", 408: "Request Timeout", 480: "Temporarily Unavailable",
           481: "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
           488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
           500: "Server Internal Error", 503: "Service Unavailable", 603: "Decline"}


# ------------------------------------------------------------------ blocking use

def ws_connect(url: str, **kw):
    """A bare sync WebSocket client kept open outside a `with` block, for tests that
    write raw frames (websockets >= 15 wants legacy=True for that, older versions do
    not know the flag)."""
    try:
        return _ws_connect_sync(url, legacy=True, **kw)
    except TypeError:
        return _ws_connect_sync(url, **kw)


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _run(coro, timeout: float):
    """Run coro on the one background loop every BlockingPhone of this process shares."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="wsphone", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _loop).result(timeout)


class _Flag:
    """threading.Event's is_set()/wait() over a condition of the phone's state."""

    def __init__(self, phone: "WsPhone", check: Callable[[], object]) -> None:
        self._phone, self._check = phone, check

    def is_set(self) -> bool:
        return bool(self._check())

    def wait(self, timeout: float | None = None) -> bool:
        limit = 3600.0 if timeout is None else timeout
        try:
            _run(self._phone._wait(self._check, limit), limit + 2)
        except (TimeoutError, ConnectionError):
            pass
        return self.is_set()


class BlockingCall:
    """A call placed with BlockingPhone.call(): final response (status 0: none came)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.invite = call.invite

    @property
    def final(self) -> SipMessage | None:
        return self.call.response

    @property
    def status(self) -> int:
        return (self.call.response.status or 0) if self.call.response is not None else 0

    def bye(self, timeout: float = 3.0) -> int:
        """BYE; its final status, 0 when none came."""
        try:
            return _run(self.call.bye(timeout), timeout + 2).status or 0
        except (TimeoutError, ConnectionError):
            return 0


class IncomingCall:
    """A call to the phone (answered per its AnswerPolicy, auto by default)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.invite = call.invite
        self.acked = _Flag(call.phone, lambda: call.ack is not None)
        self.ended = _Flag(call.phone, lambda: any(r.method == "BYE" for r in call.received))


class BlockingPhone:
    """WsPhone for threaded tests: each method blocks until done, and returns None or
    status 0 where the async one would time out. `phone` is the WsPhone itself."""

    def __init__(self, ws_url: str, user: str, *, domain: str = "pbx.test", origin: str | None = None,
                 source_ip: str = "127.0.0.1", open_timeout: float = 3.0, **kw) -> None:
        # The TCP connection is made here, in the caller's thread: from source_ip, and
        # inside the caller's network namespace if it entered one.
        url = urlparse(ws_url)
        sock = socket.create_connection((url.hostname, url.port), timeout=open_timeout,
                                        source_address=(source_ip, 0))
        try:
            self.phone: WsPhone = _run(WsPhone.connect(ws_url, user=user, domain=domain, origin=origin,
                                                       open_timeout=open_timeout, sock=sock, **kw),
                                       open_timeout + 2)
        except BaseException:
            sock.close()
            raise
        self.closed = _Flag(self.phone, self.phone.closed.is_set)

    @property
    def user(self) -> str:
        return self.phone.user

    @property
    def reg_call_id(self) -> str:
        return self.phone.reg_call_id

    @property
    def contact(self) -> str:
        return self.phone.contact()

    @property
    def local(self) -> tuple:
        """The WebSocket's local (address, port)."""
        return self.phone.ws.local_address

    @property
    def requests(self) -> list[SipMessage]:
        """Every request the phone received."""
        return [m for m in list(self.phone.received) if m.is_request]

    def register(self, expires: int = 600, timeout: float = 3.0) -> SipMessage | None:
        try:
            return _run(self.phone.register(expires, timeout=timeout), timeout + 2)
        except (TimeoutError, ConnectionError):
            return None

    def call(self, dn: str, timeout: float = 5.0, sdp: str | None = None) -> BlockingCall:
        """INVITE sip:<dn>@domain; returns at the final response (ACKed), or after timeout."""
        async def invite() -> Call:
            mine = len(self.phone.calls)            # invite() appends the call before it sends
            try:
                return await self.phone.invite(f"sip:{dn}@{self.phone.domain}", sdp or webrtc_sdp(),
                                               timeout=timeout)
            except (TimeoutError, ConnectionError):
                return self.phone.calls[mine]
        return BlockingCall(_run(invite(), timeout + 2))

    def next_incoming(self, timeout: float = 3.0) -> IncomingCall | None:
        try:
            return IncomingCall(_run(self.phone.wait_incoming(timeout), timeout + 2))
        except TimeoutError:
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            _run(self.phone.close(), 15)
