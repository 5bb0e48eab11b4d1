"""RFC 4475 torture messages (sections 3.1 and 3.3, in tests/data/torture/) and
a runner that sends them all to a gateway over UDP, TCP or WebSocket, each from
its own loopback address (so replies can never be mixed up), and records what
came back and what reached the PBX.

Run it only against a gateway inside a loopback-only network namespace
(support/netns.py): the messages carry example.com names and 192.0.2.x /
135.180.130.133 addresses in Via, Contact and Route."""
from __future__ import annotations

import re
import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from support.wsphone import ws_connect

DATA = Path(__file__).resolve().parent.parent / "data" / "torture"

# (file, RFC 4475 section, title, RFC verdict). The verdict is the RFC's:
#   valid    - 3.1.1: well-formed, an element handles it normally
#   invalid  - 3.1.2: malformed; a request gets 400, a response is dropped
#   semantic - 3.3: well-formed but semantically odd; the RFC says what to do
CATALOG: list[tuple[str, str, str, str]] = [
    ("wsinv", "3.1.1.1", "A Short Tortuous INVITE", "valid"),
    ("intmeth", "3.1.1.2", "Wide Range of Valid Characters", "valid"),
    ("esc01", "3.1.1.3", "Valid Use of the % Escaping Mechanism", "valid"),
    ("escnull", "3.1.1.4", "Escaped Nulls in URIs", "valid"),
    ("esc02", "3.1.1.5", "Use of % When It Is Not an Escape", "valid"),
    ("lwsdisp", "3.1.1.6", "Message with No LWS between Display Name and <", "valid"),
    ("longreq", "3.1.1.7", "Long Values in Header Fields", "valid"),
    ("dblreq", "3.1.1.8", "Extra Trailing Octets in a UDP Datagram", "valid"),
    ("semiuri", "3.1.1.9", "Semicolon-Separated Parameters in URI User Part", "valid"),
    ("transports", "3.1.1.10", "Varied and Unknown Transport Types", "valid"),
    ("mpart01", "3.1.1.11", "Multipart MIME Message", "valid"),
    ("unreason", "3.1.1.12", "Unusual Reason Phrase", "valid"),
    ("noreason", "3.1.1.13", "Empty Reason Phrase", "valid"),
    ("badinv01", "3.1.2.1", "Extraneous Header Field Separators", "invalid"),
    ("clerr", "3.1.2.2", "Content Length Larger Than Message", "invalid"),
    ("ncl", "3.1.2.3", "Negative Content-Length", "invalid"),
    ("scalar02", "3.1.2.4", "Request Scalar Fields with Overlarge Values", "invalid"),
    ("scalarlg", "3.1.2.5", "Response Scalar Fields with Overlarge Values", "invalid"),
    ("quotbal", "3.1.2.6", "Unterminated Quoted String in Display Name", "invalid"),
    ("ltgtruri", "3.1.2.7", "<> Enclosing Request-URI", "invalid"),
    ("lwsruri", "3.1.2.8", "Malformed SIP Request-URI (embedded LWS)", "invalid"),
    ("lwsstart", "3.1.2.9", "Multiple SP Separating Request-Line Elements", "invalid"),
    ("trws", "3.1.2.10", "SP Characters at End of Request-Line", "invalid"),
    ("escruri", "3.1.2.11", "Escaped Headers in SIP Request-URI", "invalid"),
    ("baddate", "3.1.2.12", "Invalid Time Zone in Date Header Field", "invalid"),
    ("regbadct", "3.1.2.13", "Failure to Enclose name-addr URI in <>", "invalid"),
    ("badaspec", "3.1.2.14", "Spaces within addr-spec", "invalid"),
    ("baddn", "3.1.2.15", "Non-token Characters in Display Name", "invalid"),
    ("badvers", "3.1.2.16", "Unknown Protocol Version", "invalid"),
    ("mismatch01", "3.1.2.17", "Start Line and CSeq Method Mismatch", "invalid"),
    ("mismatch02", "3.1.2.18", "Unknown Method with CSeq Method Mismatch", "invalid"),
    ("bigcode", "3.1.2.19", "Overlarge Response Code", "invalid"),
    ("insuf", "3.3.1", "Missing Required Header Fields", "semantic"),
    ("unkscm", "3.3.2", "Request-URI with Unknown Scheme", "semantic"),
    ("novelsc", "3.3.3", "Request-URI with Known but Atypical Scheme", "semantic"),
    ("unksm2", "3.3.4", "Unknown URI Schemes in Header Fields", "semantic"),
    ("bext01", "3.3.5", "Proxy-Require and Require", "semantic"),
    ("invut", "3.3.6", "Unknown Content-Type", "semantic"),
    ("regaut01", "3.3.7", "Unknown Authorization Scheme", "semantic"),
    ("multi01", "3.3.8", "Multiple Values in Single Value Required Fields", "semantic"),
    ("mcl01", "3.3.9", "Multiple Content-Length Values", "semantic"),
    ("bcast", "3.3.10", "200 OK Response with Broadcast Via Header Field Value", "semantic"),
    ("zeromf", "3.3.11", "Max-Forwards of Zero", "semantic"),
    ("cparam01", "3.3.12", "REGISTER with a Contact Header Parameter", "semantic"),
    ("cparam02", "3.3.13", "REGISTER with a url-parameter", "semantic"),
    ("regescrt", "3.3.14", "REGISTER with a URL Escaped Header", "semantic"),
    ("sdp01", "3.3.15", "Unacceptable Accept Offering", "semantic"),
]

PBX_REPLY = (480, "Torture PBX")   # what the PBX emulator answers to every relayed request
_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.I | re.M)


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


def call_ids(data: bytes) -> set[str]:
    return {m.decode("utf-8", "replace") for m in _CALL_ID.findall(data)}


@dataclass
class Observation:
    name: str
    transport: str
    statuses: list[int] = field(default_factory=list)   # status codes of replies to the sender
    reasons: list[str] = field(default_factory=list)
    pbx_saw: int = 0                                      # requests of this message that reached the PBX
    closed: bool = False                                  # TCP/WS connection closed by the gateway

    @property
    def outcome(self) -> str:
        """relayed | <code> (the gateway answered itself) | dropped"""
        finals = [s for s in self.statuses if s >= 200]
        if self.pbx_saw:
            return "relayed"
        if finals:
            return str(finals[0])
        return "dropped"

    def __str__(self) -> str:
        extra = " closed" if self.closed else ""
        return f"{self.name}/{self.transport}: {self.outcome} {self.statuses}{extra}"


def _status_lines(data: bytes) -> list[tuple[int, str]]:
    out = []
    for line in data.split(b"\r\n"):
        if line.startswith(b"SIP/2.0 "):
            parts = line.decode("utf-8", "replace").split(" ", 2)
            if len(parts) >= 2 and parts[1].isdigit():
                out.append((int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return out


def _record(ob: Observation, data: bytes) -> bool:
    """Note the replies in `data`; a retransmission of one already seen is no news."""
    news = False
    for code, reason in _status_lines(data):
        if code not in ob.statuses:
            ob.statuses.append(code)
            ob.reasons.append(reason)
            news = True
    return news


def source_ip(index: int) -> str:
    """One loopback address per message (the PBX and the gateway are on 127.0.0.1)."""
    return f"127.0.1.{10 + index}"


def send_all(transport: str, names: list[str], gw_sip: tuple[str, int], ws_url: str,
             pbx_seen, settle: float = 1.5) -> dict[str, Observation]:
    """Send every message at once, each from its own address; collect replies
    until `settle` seconds pass with nothing new. `pbx_seen()` lists the
    requests the PBX emulator received."""
    obs = {n: Observation(n, transport) for n in names}
    payloads = {n: load(n) for n in names}
    conns: dict[str, object] = {}
    for i, name in enumerate(names):
        src = source_ip(i)
        data = payloads[name]
        if transport == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # Port 5060: replies go to the Via sent-by port when there is no rport.
            s.bind((src, 5060))
            s.sendto(data, gw_sip)
            conns[name] = s
        elif transport == "tcp":
            s = socket.create_connection(gw_sip, timeout=3, source_address=(src, 0))
            s.sendall(data)
            conns[name] = s
        else:
            host, port = ws_url.split("//", 1)[1].split(":")
            s = socket.create_connection((host, int(port)), timeout=3, source_address=(src, 0))
            ws = ws_connect(ws_url, sock=s, subprotocols=["sip"], open_timeout=3, close_timeout=0.5)
            try:
                text = data.decode("utf-8")
                ws.send(text)                 # a text frame must be valid UTF-8
            except UnicodeDecodeError:
                ws.send(data)                 # binary frame (mpart01's S/MIME body)
            conns[name] = ws
    last_news = time.monotonic()
    hard_stop = last_news + 10
    while time.monotonic() - last_news < settle and time.monotonic() < hard_stop:
        news = False
        if transport in ("udp", "tcp"):
            socks = {c: n for n, c in conns.items() if not obs[n].closed}
            ready, _, _ = select.select(list(socks), [], [], 0.1) if socks else ([], [], [])
            for s in ready:
                name = socks[s]
                try:
                    data = s.recv(65535)
                except OSError:
                    data = b""
                if not data:
                    obs[name].closed = True
                else:
                    news |= _record(obs[name], data)
                    continue
                news = True
        else:
            for name, ws in conns.items():
                if obs[name].closed:
                    continue
                try:
                    msg = ws.recv(timeout=0)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    obs[name].closed = True
                    news = True
                    continue
                news |= _record(obs[name], msg.encode() if isinstance(msg, str) else msg)
            time.sleep(0.05)
        seen = {n: sum(1 for m in pbx_seen() if m.call_id in call_ids(payloads[n])) for n in names}
        for n, count in seen.items():
            if count != obs[n].pbx_saw:
                obs[n].pbx_saw = count
                news = True
        if news:
            last_news = time.monotonic()
    for c in conns.values():
        try:
            c.close()
        except Exception:
            pass
    return obs
