"""Hand-built SIP over UDP or WebSocket for edge cases the test phone and SIPp
do not produce (malformed input, dependency faults). Loopback only."""
from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: str
    raw: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def parse_response(text: str) -> Response:
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    _, code, reason = (lines[0].split(" ", 2) + [""])[:3]
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    return Response(int(code), reason, headers, body, text)


def request(method: str, ruri: str, *, via_host: str, via_port: int, transport: str = "UDP",
            to: str | None = None, from_uri: str = "sip:pbx@127.0.0.1", call_id: str | None = None,
            cseq: int = 1, extra: str = "", body: str = "", max_forwards: int = 70,
            contact: str | None = None) -> str:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    to = to or f"<{ruri}>"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via_host}:{via_port};branch={branch};rport",
        f"Max-Forwards: {max_forwards}",
        f"From: <{from_uri}>;tag={uuid.uuid4().hex[:8]}",
        f"To: {to}",
        f"Call-ID: {call_id or uuid.uuid4().hex}",
        f"CSeq: {cseq} {method}",
        f"Contact: {contact or f'<sip:pbx@{via_host}:{via_port}>'}",
    ]
    if extra:
        lines += [line for line in extra.strip().split("\r\n") if line]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


class UdpPeer:
    """A UDP SIP endpoint on loopback (plays the PBX or a scanner)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()

    def send(self, text: str | bytes, dst: tuple[str, int]) -> None:
        self.sock.sendto(text.encode() if isinstance(text, str) else text, dst)

    def recv(self, timeout: float = 2.0) -> tuple[str, tuple[str, int]] | None:
        self.sock.settimeout(timeout)
        try:
            data, addr = self.sock.recvfrom(65535)
        except socket.timeout:
            return None
        return data.decode(errors="replace"), addr

    def final_response(self, timeout: float = 3.0) -> Response | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.recv(max(deadline - time.monotonic(), 0.01))
            if got is None:
                return None
            if got[0].startswith("SIP/2.0 "):
                resp = parse_response(got[0])
                if resp.status >= 200:
                    return resp
        return None

    def close(self) -> None:
        self.sock.close()
