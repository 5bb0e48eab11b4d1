"""The SIP probe of the kamailio and pbx checks: one OPTIONS over UDP."""
from __future__ import annotations

import re
import secrets
import socket
from typing import Optional

from gw.ctl.doctor import udp


def sip_options(host: str, port: int, timeout: float = 2.0) -> tuple[Optional[str], str]:
    """Send SIP OPTIONS over UDP; (status line of the first final answer, or
    None with the reason). Any answer, even 404, proves a SIP stack is there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        return None, f"cannot resolve {host}: {exc}"
    family, _, _, _, addr = infos[0]
    call_id = f"gwctl-{secrets.token_hex(8)}"
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        lhost, lport = s.getsockname()[:2]
        via_host = f"[{lhost}]" if ":" in lhost else lhost
        target = f"[{host}]" if ":" in host else host
        msg = (f"OPTIONS sip:{target}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {via_host}:{lport};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:gwctl@{via_host}>;tag={secrets.token_hex(4)}\r\n"
               f"To: <sip:{target}:{port}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
               "User-Agent: gwctl\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n").encode()

        def final(data: bytes) -> Optional[str]:
            text = data.decode("utf-8", "replace")
            first = text.split("\r\n", 1)[0]
            m = re.match(r"^SIP/2\.0 (\d{3})", first)
            return first if m and call_id in text and int(m.group(1)) >= 200 else None

        try:
            # UDP: send again every 0.5 s (RFC 3261 T1)
            status = udp.request(s, lambda: s.send(msg), final, timeout, every=0.5)
        except ConnectionRefusedError:
            return None, "ICMP port unreachable: nothing listens on that UDP port"
        except OSError as exc:
            return None, str(exc)
    if status is None:
        return None, f"no answer within {timeout:g}s"
    return status, ""
