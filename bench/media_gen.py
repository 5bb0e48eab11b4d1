"""The media generator of the WebRTC media bench: both plain-RTP ends of N calls,
in a few forked processes (epoll, no per-packet Python objects), so that it is
never what limits the relay under test.

Each call has two sockets: `phone` (the plain side of the phone emulator, which
turns it into ICE + DTLS-SRTP toward the relay) and `pbx` (the PBX leg). Every
20 ms each sends one 172-byte G.711 packet, the PBX a CN packet (PT 13, one
byte) instead in its silences (1 s of audio, 0.6 s of silence, the pattern of
tests/test_media_webrtc.py). Audio payloads carry a mark (the tick number) that
survives rtpengine's PCMU->PCMU transcoder, so loss is counted per direction as
marks missing over the measured window, whatever the relay did to sequence
numbers or SSRCs; PT 13 arriving at the phone is counted apart.
"""
from __future__ import annotations

import resource
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from bench import workers

PTIME = 0.020
PAYLOAD = 160
BURST_TICKS, SILENCE_TICKS = 50, 30     # 1 s of audio, 0.6 s of silence (CN every 20 ms)
MAGIC = 0x5A
RCVBUF = 512 * 1024


def silent(tick: int) -> bool:
    return tick % (BURST_TICKS + SILENCE_TICKS) >= BURST_TICKS


def mark_payload(tick: int) -> bytes:
    """160 bytes of PCMU: the tick as 6 nibbles in 0x20-0x2F (never mu-law's
    0x7F/0xFF, which a decode/encode round trip does not keep), MAGIC, then
    quiet samples."""
    nibbles = bytes(0x20 | ((tick >> s) & 0xF) for s in range(20, -1, -4))
    return nibbles + bytes([MAGIC]) + b"\xfe" * (PAYLOAD - 7)


def read_mark(payload: bytes | memoryview) -> int | None:
    if len(payload) < 7 or payload[6] != MAGIC:
        return None
    tick = 0
    for b in payload[:6]:
        if b & 0xF0 != 0x20:
            return None
        tick = (tick << 4) | (b & 0xF)
    return tick


@dataclass
class Leg:
    """One call's two plain sockets, connected to where the relay (or the phone
    emulator) expects them to send; the phone stream's SSRC (the PBX's is +1),
    which the phone's SDP announces (a=ssrc: Janus drops unannounced SSRCs)."""
    phone: socket.socket
    pbx: socket.socket
    ssrc: int


@dataclass
class GenResult:
    sent_up: int = 0          # phone -> PBX audio packets sent in the window
    got_up: int = 0           # ... of those, arrived at the PBX
    sent_down: int = 0        # PBX -> phone audio packets sent in the window
    got_down: int = 0
    cn_sent: int = 0          # PT 13 the PBX sent (whole run)
    cn_window: int = 0        # ... of those, in the measured window
    cn_at_phone: int = 0      # PT 13 that reached the phone (whole run)
    late_ticks: int = 0       # ticks the generator started more than 20 ms late (worst worker)
    ticks: int = 0            # ticks each worker ran
    cpu: float = 0.0          # the generator processes' CPU seconds
    calls_with_loss: int = 0  # calls that lost any counted packet, either way

    @property
    def loss(self) -> float:
        sent = self.sent_up + self.sent_down
        return 1.0 - (self.got_up + self.got_down) / sent if sent else 1.0

    @property
    def packets_in(self) -> int:
        """Packets sent toward the relay in the window, both legs (CN included)."""
        return self.sent_up + self.sent_down + self.cn_window

    @property
    def lost(self) -> int:
        return (self.sent_up - self.got_up) + (self.sent_down - self.got_down)

    def add(self, other: "GenResult") -> None:
        for k in ("sent_up", "got_up", "sent_down", "got_down", "cn_sent", "cn_window", "cn_at_phone", "cpu",
                  "calls_with_loss"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.late_ticks = max(self.late_ticks, other.late_ticks)
        self.ticks = max(self.ticks, other.ticks)


def new_socket(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    s.bind((ip, 0))
    return s


class _Worker:
    """One generator process: its legs' sockets on one epoll, sending every 20 ms
    and counting what arrives in between."""

    def __init__(self, legs: list[Leg], warm: float, seconds: float) -> None:
        self.legs = legs
        self.ticks = int((warm + seconds) / PTIME)
        self.first = int(warm / PTIME)                 # ticks before this are warm-up: not counted
        self.ep = select.epoll()
        # per socket: (its socket, leg index, is_phone, seen-marks bytearray)
        self.info: dict[int, tuple[socket.socket, int, bool, bytearray]] = {}
        for i, leg in enumerate(legs):
            for s, is_phone in ((leg.phone, True), (leg.pbx, False)):
                s.setblocking(False)
                self.ep.register(s.fileno(), select.EPOLLIN)
                self.info[s.fileno()] = (s, i, is_phone, bytearray(self.ticks + 1))
        self.res = GenResult(ticks=self.ticks)
        self.buf = bytearray(2048)
        self.view = memoryview(self.buf)
        # One packet of each kind per tick, patched per leg (SSRC) and sent: send()
        # copies it, so the same buffer serves every leg with no allocation.
        self.audio_pkt = bytearray(12 + PAYLOAD)
        self.cn_pkt = bytearray(13)
        self.cn_pkt[12] = 0x40                         # RFC 3389: noise level

    def send_tick(self, tick: int) -> None:
        res, audio_pkt, cn_pkt = self.res, self.audio_pkt, self.cn_pkt
        quiet = silent(tick)
        seq, ts = tick & 0xFFFF, (tick * PAYLOAD) & 0xFFFFFFFF
        struct.pack_into("!BBHII", audio_pkt, 0, 0x80, 0, seq, ts, 0)
        audio_pkt[12:] = mark_payload(tick)
        struct.pack_into("!BBHII", cn_pkt, 0, 0x80, 13, seq, ts, 0)
        pbx_pkt = cn_pkt if quiet else audio_pkt
        set_ssrc = _SSRC.pack_into
        up = down = cn = 0
        for leg in self.legs:
            set_ssrc(audio_pkt, 8, leg.ssrc)
            try:
                leg.phone.send(audio_pkt)
                up += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
            set_ssrc(pbx_pkt, 8, (leg.ssrc + 1) & 0xFFFFFFFF)
            try:
                leg.pbx.send(pbx_pkt)
                if quiet:
                    cn += 1
                else:
                    down += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
        res.cn_sent += cn
        if tick >= self.first:
            res.sent_up += up
            res.sent_down += down
            res.cn_window += cn

    def receive(self, fd: int) -> None:
        s, _, is_phone, seen = self.info[fd]
        res, buf = self.res, self.buf
        while True:
            try:
                n = s.recv_into(buf)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                return
            if n < 12 or buf[0] >> 6 != 2:
                continue
            pt = buf[1] & 0x7F
            if pt == 13:
                res.cn_at_phone += is_phone
                continue
            if pt != 0:
                continue
            m = read_mark(self.view[12:n])
            if m is not None and self.first <= m < self.ticks and not seen[m]:
                seen[m] = 1
                if is_phone:
                    res.got_down += 1
                else:
                    res.got_up += 1

    def run(self, t_start: float) -> GenResult:
        tick, t_next = 0, t_start
        while tick < self.ticks:
            now = time.monotonic()
            if now >= t_next:
                if now - t_next > PTIME:
                    self.res.late_ticks += 1
                self.send_tick(tick)
                tick += 1
                t_next += PTIME
                continue
            for fd, _ in self.ep.poll(max(t_next - now, 0)):
                self.receive(fd)
        drain_end = time.monotonic() + 0.5
        while (left := drain_end - time.monotonic()) > 0:
            for fd, _ in self.ep.poll(left):
                self.receive(fd)
        # a call with loss: some counted mark missing at either end
        lossy = {i for s, i, is_phone, seen in self.info.values()
                 if any(not seen[t] for t in range(self.first, self.ticks) if not (is_phone and silent(t)))}
        self.res.calls_with_loss = len(lossy)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.res.cpu = ru.ru_utime + ru.ru_stime
        return self.res


_SSRC = struct.Struct("!I")


def _worker(legs: list[Leg], t_start: float, warm: float, seconds: float, conn: Any) -> None:
    conn.send(_Worker(legs, warm, seconds).run(t_start))
    conn.close()


def run(legs: list[Leg], warm: float, seconds: float, procs: int = 2,
        on_window: Any = None) -> GenResult:
    """Send and count for warm + seconds; `on_window(start, end)` is called at
    the start of the measured window (after warm-up) and again at its end, so
    the caller can read CPU counters exactly over it."""
    t_start, running = workers.start(_worker, legs, procs, warm, seconds)
    if on_window is not None:
        time.sleep(max(t_start + warm - time.monotonic(), 0))
        on_window("start")
        time.sleep(max(t_start + warm + seconds - time.monotonic(), 0))
        on_window("end")
    total = GenResult()
    for part in workers.results(running, warm + seconds + 30):
        total.add(part)
    return total
