"""Media capacity: N concurrent G.711 calls relayed by rtpengine, both directions,
50 packets/s per stream (20 ms PCMU, 172-byte RTP packets), generated and
counted in Python.

Sessions are set up over ng exactly as the gateway's Kamailio module would for a
plain SIP phone calling the PBX: `offer`/`answer` with the flag strings of
kemi/media.py (converted to ng dictionary keys the way Kamailio's rtpengine
module does, by kemi.media.ng_params), so the relay path is the one calls take.
Each call has two legs (sockets on 127.0.0.2); every leg sends to rtpengine and
receives what the other leg sent. Loss = 1 - received / sent, counted after a drain period.
"""
from __future__ import annotations

import os
import re
import resource
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from bench import workers
from kemi import media
from kemi.ng import NgClient

PTIME = 0.020
PAYLOAD = 160            # 20 ms of PCMU
RCVBUF = 512 * 1024


def sdp(ip: str, port: int, version: int = 1) -> str:
    return ("v=0\r\n"
            f"o=- {version} {version} IN IP4 {ip}\r\n"
            "s=-\r\n"
            f"c=IN IP4 {ip}\r\n"
            "t=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n")


def media_addr(text: str) -> tuple[str, int]:
    conn = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    port = re.search(r"^m=audio (\d+)", text, re.M)
    if not conn or not port:
        raise RuntimeError(f"no media address in rtpengine's SDP: {text!r}")
    return conn.group(1), int(port.group(1))


@dataclass
class MediaResult:
    calls: int
    seconds: float
    sent: int = 0
    received: int = 0
    late_ticks: int = 0          # 20 ms ticks the generator started late by > 20 ms
    rtpengine_cpu: float = 0.0   # seconds over the window
    generator_cpu: float = 0.0
    setup_failed: int = 0

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 1.0

    @property
    def lost(self) -> int:
        return max(self.sent - self.received, 0)


def _receive(ep: select.epoll, by_fd: dict, buf: bytearray, timeout: float) -> int:
    """Read what arrives within one epoll wait; each packet counts once per leg, by
    RTP sequence number (a duplicate or a stray datagram is not a received packet)."""
    received = 0
    for fd, _ in ep.poll(timeout):
        s, seen = by_fd[fd]
        while True:
            try:
                if s.recv_into(buf) < 12:
                    continue
            except (BlockingIOError, ConnectionRefusedError):
                break
            q = (buf[2] << 8) | buf[3]
            if q < len(seen) and not seen[q]:
                seen[q] = 1
                received += 1
    return received


def _worker(legs: list[tuple[socket.socket, socket.socket]], t_start: float, seconds: float,
            conn: Any) -> None:
    """Send on every leg each 20 ms, receive on all of them in between."""
    assert seconds / PTIME < 65000, "RTP sequence numbers would wrap"
    socks = [s for pair in legs for s in pair]
    ep = select.epoll()
    # One byte per RTP sequence number and receiving leg (_receive).
    ticks = int(seconds / PTIME) + 2
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = (s, bytearray(ticks + 1))
    pkt = bytearray(12 + PAYLOAD)
    buf = bytearray(2048)
    sent = received = late = 0
    seq = 0
    ssrc = os.getpid() & 0xFFFFFFFF
    t_next = t_start
    end = t_start + seconds
    while True:
        now = time.monotonic()
        if now >= t_next:
            if t_next >= end:
                break
            if now - t_next > PTIME:
                late += 1
            seq += 1
            struct.pack_into("!BBHII", pkt, 0, 0x80, 0, seq & 0xFFFF, (seq * PAYLOAD) & 0xFFFFFFFF, ssrc)
            for s in socks:
                try:
                    s.send(pkt)
                    sent += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
            t_next += PTIME
            continue
        received += _receive(ep, by_fd, buf, t_next - now)
    drain_end = time.monotonic() + 0.5
    while True:
        left = drain_end - time.monotonic()
        if left <= 0:
            break
        received += _receive(ep, by_fd, buf, left)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    conn.send((sent, received, late, ru.ru_utime + ru.ru_stime))
    conn.close()


def run_step(ng: NgClient, rtpengine_cpu, calls: int, seconds: float, *, ip: str = "127.0.0.2",
             procs: int = 2, tag: str = "m") -> MediaResult:
    """Set up `calls` sessions, run media for `seconds`, tear them down."""
    res = MediaResult(calls, seconds)
    legs: list[tuple[socket.socket, socket.socket]] = []
    call_ids: list[str] = []
    try:
        _set_up(ng, res, ip, tag, legs, call_ids)
        _send_and_count(legs, procs, res, rtpengine_cpu)
    finally:
        for cid in call_ids:
            try:
                ng.request({"command": "delete", "call-id": cid})
            except Exception:  # noqa: BLE001
                pass
        for a, b in legs:
            a.close()
            b.close()
    return res


def _set_up(ng: NgClient, res: MediaResult, ip: str, tag: str,
            legs: list[tuple[socket.socket, socket.socket]], call_ids: list[str]) -> None:
    """One offer/answer per call, with the gateway's flags; each call's two sockets
    connected to where rtpengine told them to send."""
    offer_flags = dict(media.ng_params(media.flags(media.Op.OFFER, media.Side.PBX, media.Side.PBX)))
    answer_flags = dict(media.ng_params(media.flags(media.Op.ANSWER, media.Side.PBX, media.Side.PBX)))
    calls = res.calls
    for i in range(calls):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind((ip, 0))
        cid = f"bench-{tag}-{os.getpid()}-{calls}-{i}"
        base = {"call-id": cid, "from-tag": f"a{i}"}
        try:
            off = ng.request({"command": "offer", **base, **offer_flags,
                              "sdp": sdp(ip, a.getsockname()[1])})
            call_ids.append(cid)
            ans = ng.request({"command": "answer", **base, "to-tag": f"b{i}", **answer_flags,
                              "sdp": sdp(ip, b.getsockname()[1])})
        except Exception:  # noqa: BLE001 - counted, reported
            res.setup_failed += 1
            a.close()
            b.close()
            continue
        b.connect(media_addr(off["sdp"]))   # B sends where the offer told it
        a.connect(media_addr(ans["sdp"]))   # A sends where the answer told it
        legs.append((a, b))


def _send_and_count(legs: list[tuple[socket.socket, socket.socket]], procs: int, res: MediaResult,
                    rtpengine_cpu) -> None:
    """Media for res.seconds from `procs` forked workers; their counts, and rtpengine's CPU."""
    seconds = res.seconds
    _, running = workers.start(_worker, legs, procs, seconds)
    cpu0 = rtpengine_cpu()
    for sent, received, late, cpu in workers.results(running, seconds + 30):
        res.sent += sent
        res.received += received
        res.late_ticks = max(res.late_ticks, late)
        res.generator_cpu += cpu
    res.rtpengine_cpu = rtpengine_cpu() - cpu0
