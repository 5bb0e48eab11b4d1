"""The ICE connectivity check doctor sends to rtpengine's port toward the phone,
as a browser's first packet (STUN Binding request, RFC 8445 7.2.2 / RFC 5389)."""
from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import socket
import struct
from typing import Optional

from gw.ctl.doctor import udp

_STUN_MAGIC = 0x2112A442


def stun_binding(ufrag_remote: str, ufrag_local: str, pwd_remote: str) -> tuple[bytes, bytes]:
    """An ICE connectivity check (RFC 8445 7.2.2) as a phone sends it: USERNAME,
    PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY (key: the answerer's ice-pwd), FINGERPRINT."""
    txid = os.urandom(12)

    def attr(t: int, v: bytes) -> bytes:
        return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)

    body = (attr(0x0006, f"{ufrag_remote}:{ufrag_local}".encode())
            + attr(0x0024, struct.pack("!I", 1853824767))
            + attr(0x802A, os.urandom(8)))
    head = struct.pack("!HHI", 0x0001, len(body) + 24, _STUN_MAGIC) + txid
    body += attr(0x0008, hmac.new(pwd_remote.encode(), head + body, hashlib.sha1).digest())
    head = struct.pack("!HHI", 0x0001, len(body) + 8, _STUN_MAGIC) + txid
    crc = (binascii.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
    body += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", 0x0001, len(body), _STUN_MAGIC) + txid + body, txid


def stun_exchange(sock: socket.socket, addr: tuple[str, int], packet: bytes, txid: bytes,
                  timeout: float) -> str:
    """'success' / 'error NNN' for the STUN response with our txid, or '' if none came."""
    def response(data: bytes) -> Optional[str]:
        if len(data) >= 20 and data[8:20] == txid:
            mtype = struct.unpack("!H", data[:2])[0]
            return "success" if mtype == 0x0101 else f"error response {mtype:#06x}"
        return None

    try:
        return udp.request(sock, lambda: sock.sendto(packet, addr), response, timeout, every=0.25) or ""
    except OSError:
        return ""
