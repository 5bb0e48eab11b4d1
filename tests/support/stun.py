"""A minimal STUN/TURN (RFC 5389 / RFC 5766) client for tests: Binding, Allocate
with long-term credentials, CreatePermission, Refresh. Stdlib only."""
from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Optional

MAGIC = 0x2112A442

# methods / classes
BINDING, ALLOCATE, REFRESH, CREATE_PERMISSION = 0x001, 0x003, 0x004, 0x008
REQUEST, SUCCESS, ERROR = 0x000, 0x100, 0x110

# attributes
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028


@dataclass
class Message:
    mtype: int
    txid: bytes
    attrs: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def method(self) -> int:
        return self.mtype & 0x3EEF

    @property
    def klass(self) -> int:
        return self.mtype & 0x0110

    def get(self, atype: int) -> Optional[bytes]:
        for t, v in self.attrs:
            if t == atype:
                return v
        return None

    def has(self, atype: int) -> bool:
        return self.get(atype) is not None

    def error(self) -> Optional[tuple[int, str]]:
        v = self.get(ERROR_CODE)
        if v is None:
            return None
        return (v[2] & 0x7) * 100 + v[3], v[4:].decode("utf-8", "replace")

    def xor_address(self, atype: int) -> Optional[tuple[str, int]]:
        v = self.get(atype)
        if v is None:
            return None
        family, xport = v[1], struct.unpack("!H", v[2:4])[0]
        port = xport ^ (MAGIC >> 16)
        if family == 0x01:
            addr = struct.unpack("!I", v[4:8])[0] ^ MAGIC
            return str(ipaddress.IPv4Address(addr)), port
        key = struct.pack("!I", MAGIC) + self.txid
        raw = bytes(a ^ b for a, b in zip(v[4:20], key))
        return str(ipaddress.IPv6Address(raw)), port


def _attr(atype: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("!HH", atype, len(value)) + value + b"\0" * pad


def xor_peer(ip: str, port: int) -> bytes:
    addr = int(ipaddress.IPv4Address(ip)) ^ MAGIC
    return struct.pack("!BBHI", 0, 0x01, port ^ (MAGIC >> 16), addr)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def encode(mtype: int, attrs: list[tuple[int, bytes]], txid: Optional[bytes] = None,
           key: Optional[bytes] = None, fingerprint: bool = True) -> tuple[bytes, bytes]:
    txid = txid or os.urandom(12)
    body = b"".join(_attr(t, v) for t, v in attrs)
    if key is not None:
        # MESSAGE-INTEGRITY: HMAC-SHA1 over the message with the length field
        # already counting the MI attribute (RFC 5389 15.4).
        header = struct.pack("!HHI", mtype, len(body) + 24, MAGIC) + txid
        mac = hmac.new(key, header + body, hashlib.sha1).digest()
        body += _attr(MESSAGE_INTEGRITY, mac)
    if fingerprint:
        header = struct.pack("!HHI", mtype, len(body) + 8, MAGIC) + txid
        crc = (binascii.crc32(header + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += _attr(FINGERPRINT, struct.pack("!I", crc))
    return struct.pack("!HHI", mtype, len(body), MAGIC) + txid + body, txid


def decode(data: bytes) -> Message:
    if len(data) < 20:
        raise ValueError(f"STUN message too short ({len(data)} bytes)")
    mtype, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC:
        raise ValueError(f"bad magic cookie {magic:#x}")
    if mtype & 0xC000:
        raise ValueError("not a STUN message (top bits set)")
    if len(data) != 20 + length:
        raise ValueError(f"length field {length} but {len(data) - 20} bytes of attributes")
    msg = Message(mtype, data[8:20])
    pos = 20
    while pos < len(data):
        atype, alen = struct.unpack("!HH", data[pos:pos + 4])
        msg.attrs.append((atype, data[pos + 4:pos + 4 + alen]))
        pos += 4 + alen + ((-alen) % 4)
    return msg


def transact(sock: socket.socket, addr: tuple[str, int], packet: bytes, txid: bytes,
             timeout: float = 1.0) -> Message:
    """Send one request over UDP and wait for the response with the same transaction id."""
    sock.settimeout(timeout)
    sock.sendto(packet, addr)
    while True:
        data, _ = sock.recvfrom(65535)
        msg = decode(data)
        if msg.txid == txid:
            return msg


def binding_request() -> tuple[bytes, bytes]:
    """The plain 20-byte Binding request: type 0x0001, length 0, magic cookie, txid."""
    txid = os.urandom(12)
    return struct.pack("!HHI", BINDING | REQUEST, 0, MAGIC) + txid, txid


class TurnClient:
    """TURN over UDP with the long-term credential mechanism (RFC 5766 / 5389 10.2)."""

    def __init__(self, server: tuple[str, int], username: str, password: str, timeout: float = 1.0):
        self.server = server
        self.username = username
        self.password = password
        self.timeout = timeout
        self.realm: Optional[str] = None
        self.nonce: Optional[bytes] = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def close(self) -> None:
        self.sock.close()

    def request(self, method: int, attrs: list[tuple[int, bytes]], auth: bool = True) -> Message:
        full = list(attrs)
        key = None
        if auth and self.realm is not None:
            full += [(USERNAME, self.username.encode()), (REALM, self.realm.encode()),
                     (NONCE, self.nonce or b"")]
            key = long_term_key(self.username, self.realm, self.password)
        packet, txid = encode(method | REQUEST, full, key=key)
        return transact(self.sock, self.server, packet, txid, self.timeout)

    def allocate(self, lifetime: int = 600) -> Message:
        attrs = [(REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])), (LIFETIME, struct.pack("!I", lifetime))]
        resp = self.request(ALLOCATE, attrs, auth=self.realm is not None)
        err = resp.error()
        if err and err[0] in (401, 438) and resp.has(REALM) and resp.has(NONCE):
            # First (unauthenticated) try or stale nonce: take realm+nonce and retry once.
            self.realm = resp.get(REALM).decode()
            self.nonce = resp.get(NONCE)
            resp = self.request(ALLOCATE, attrs)
        return resp

    def create_permission(self, peer_ip: str) -> Message:
        return self.request(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, xor_peer(peer_ip, 0))])

    def release(self) -> Message:
        return self.request(REFRESH, [(LIFETIME, struct.pack("!I", 0))])
