"""rtpengine's ng control protocol: bencode over UDP, `<cookie> <bencoded dict>`.

Kamailio's rtpengine module speaks ng for offer/answer/delete on the call path;
this client is for everything else (readiness, statistics, session counts) and
for tests. Pure Python apart from the socket, which is opened per call.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import bencode


class NgError(RuntimeError):
    pass


def encode(cookie: str, command: dict[str, Any]) -> bytes:
    return cookie.encode() + b" " + bencode.encode(command)


def decode(packet: bytes) -> tuple[str, dict[str, Any]]:
    cookie, sep, payload = packet.partition(b" ")
    if not sep:
        raise NgError("ng reply without cookie separator")
    return cookie.decode(), _text(bencode.decode(payload))


def _text(value: Any) -> Any:
    # bencode yields bytes for strings; callers want str.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


class NgClient:
    def __init__(self, host: str, port: int, timeout: float = 1.0) -> None:
        self.addr = (host, port)
        self.timeout = timeout

    @classmethod
    def from_spec(cls, spec: str, timeout: float = 1.0) -> "NgClient":
        """From 'udp:IP:PORT' (GW_RTPENGINE item) or 'IP:PORT'."""
        rest = spec[4:] if spec.startswith("udp:") else spec
        host, _, port = rest.rpartition(":")
        return cls(host, int(port), timeout)

    def request(self, command: dict[str, Any]) -> dict[str, Any]:
        cookie = os.urandom(6).hex()
        family = socket.AF_INET6 if ":" in self.addr[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.timeout)
            sock.sendto(encode(cookie, command), self.addr)
            while True:
                try:
                    data = sock.recv(65535)
                except socket.timeout:
                    raise NgError(f"rtpengine {self.addr[0]}:{self.addr[1]} did not answer "
                                  f"{command.get('command')!r} within {self.timeout}s") from None
                got_cookie, reply = decode(data)
                if got_cookie == cookie:
                    break
        if reply.get("result") == "error":
            raise NgError(f"rtpengine error: {reply.get('error-reason', 'unknown')}")
        return reply

    def ping(self) -> bool:
        try:
            return self.request({"command": "ping"}).get("result") == "pong"
        except (NgError, OSError):
            return False

    def statistics(self) -> dict[str, Any]:
        return self.request({"command": "statistics"})

    def list_calls(self, limit: int = 10000) -> list[str]:
        return list(self.request({"command": "list", "limit": limit}).get("calls", []))

    def query(self, call_id: str) -> dict[str, Any]:
        return self.request({"command": "query", "call-id": call_id})
