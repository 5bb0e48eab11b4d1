"""One request over UDP, sent again until it is answered (the SIP and STUN probes)."""
from __future__ import annotations

import socket
import time
from typing import Callable, Optional


def request(sock: socket.socket, send: Callable[[], object], answer: Callable[[bytes], Optional[str]],
            timeout: float, every: float) -> Optional[str]:
    """send() now and every `every` seconds until answer(datagram) is not None (returned)
    or `timeout` passes (None). Socket errors propagate: an ICMP port unreachable is
    ConnectionRefusedError."""
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return None
        try:
            if now >= next_send:
                send()
                next_send = now + every
            sock.settimeout(max(min(next_send, deadline) - now, 0.01))
            data = sock.recv(65535)
        except socket.timeout:
            continue
        got = answer(data)
        if got is not None:
            return got
