"""RTCP for the plain-RTP PBX emulator (rtp_pbx.py), the way Asterisk sends it:
a sender report (or a receiver report while it sends nothing) every interval,
with one report block on the stream it receives: fraction and cumulative lost,
extended highest sequence, interarrival jitter, and LSR/DLSR echoing the last
sender report it got (RFC 3550 6.4, A.3, A.8).

rtpengine computes its per-SSRC figures (loss, jitter, round-trip time, MOS)
only from report blocks that carry LSR/DLSR, so a PBX without RTCP, or one that
never echoes the gateway's sender reports, leaves them empty. Pure Python."""
from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field

PT_SR = 200
PT_RR = 201
NTP_EPOCH = 2208988800          # 1900-01-01 to 1970-01-01 in seconds


def ntp_now(now: float | None = None) -> tuple[int, int]:
    t = time.time() if now is None else now
    msw = int(t) + NTP_EPOCH
    lsw = int((t - int(t)) * (1 << 32)) & 0xFFFFFFFF
    return msw & 0xFFFFFFFF, lsw


def middle32(msw: int, lsw: int) -> int:
    return ((msw & 0xFFFF) << 16) | (lsw >> 16)


@dataclass
class ReportBlock:
    ssrc: int
    fraction_lost: int          # of 256
    cumulative_lost: int
    highest_seq: int            # extended
    jitter: int                 # timestamp units
    lsr: int
    dlsr: int                   # 1/65536 s

    def pack(self) -> bytes:
        lost = self.cumulative_lost & 0xFFFFFF
        return struct.pack("!IIIIII", self.ssrc, (self.fraction_lost & 0xFF) << 24 | lost,
                           self.highest_seq & 0xFFFFFFFF, self.jitter & 0xFFFFFFFF, self.lsr, self.dlsr)


def sender_report(ssrc: int, rtp_ts: int, packets: int, octets: int,
                  blocks: list[ReportBlock], now: float | None = None) -> bytes:
    msw, lsw = ntp_now(now)
    body = struct.pack("!IIIIII", ssrc, msw, lsw, rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF,
                       octets & 0xFFFFFFFF) + b"".join(b.pack() for b in blocks)
    return _header(PT_SR, len(blocks), body) + body


def receiver_report(ssrc: int, blocks: list[ReportBlock]) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(b.pack() for b in blocks)
    return _header(PT_RR, len(blocks), body) + body


def _header(pt: int, count: int, body: bytes) -> bytes:
    return struct.pack("!BBH", 0x80 | count, pt, (len(body) + 4) // 4 - 1)


@dataclass
class SrSeen:
    ssrc: int
    ntp_middle: int
    at: float                   # time.monotonic() of arrival


def parse_sender_reports(data: bytes) -> list[SrSeen]:
    """The sender reports in a compound RTCP packet (other packets skipped)."""
    out, off, now = [], 0, time.monotonic()
    while off + 4 <= len(data):
        first, pt, length = struct.unpack("!BBH", data[off:off + 4])
        end = off + 4 * (length + 1)
        if first >> 6 != 2 or end > len(data):
            break
        if pt == PT_SR and end - off >= 28:
            ssrc, msw, lsw = struct.unpack("!III", data[off + 4:off + 16])
            out.append(SrSeen(ssrc, middle32(msw, lsw), now))
        off = end
    return out


@dataclass
class Reception:
    """RFC 3550 A.1/A.3/A.8 statistics of one received SSRC."""
    ssrc: int
    clock_rate: int = 8000
    base_seq: int = -1
    max_seq: int = 0
    cycles: int = 0
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    jitter: float = 0.0
    _transit: float | None = None

    def add(self, seq: int, ts: int, arrival: float) -> None:
        if self.base_seq < 0:
            self.base_seq, self.max_seq = seq, seq
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if 0 < delta < 3000:
                if seq < self.max_seq:
                    self.cycles += 1 << 16
                self.max_seq = seq
        self.received += 1
        transit = arrival * self.clock_rate - ts
        if self._transit is not None:
            d = abs(transit - self._transit)
            # the RTP timestamp wraps at 2^32: a jump that large is a wrap, not jitter
            if d < (1 << 31):
                self.jitter += (d - self.jitter) / 16.0
        self._transit = transit

    def block(self, last_sr: SrSeen | None) -> ReportBlock:
        extended = self.cycles + self.max_seq
        expected = extended - self.base_seq + 1
        lost = max(expected - self.received, 0)
        exp_int = expected - self.expected_prior
        rec_int = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_int = exp_int - rec_int
        fraction = (lost_int << 8) // exp_int if exp_int > 0 and lost_int > 0 else 0
        lsr = dlsr = 0
        if last_sr is not None:
            lsr = last_sr.ntp_middle
            dlsr = int((time.monotonic() - last_sr.at) * 65536) & 0xFFFFFFFF
        return ReportBlock(self.ssrc, min(fraction, 255), lost, extended, int(self.jitter), lsr, dlsr)


@dataclass
class RtcpState:
    """What an endpoint needs for its reports: reception per SSRC and the last
    sender report seen from each, updated by its receive threads."""
    receptions: dict[int, Reception] = field(default_factory=dict)
    last_sr: dict[int, SrSeen] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rtp(self, ssrc: int, seq: int, ts: int, arrival: float, clock_rate: int = 8000) -> None:
        with self.lock:
            rec = self.receptions.get(ssrc)
            if rec is None:
                rec = self.receptions[ssrc] = Reception(ssrc, clock_rate)
            rec.add(seq, ts, arrival)

    def rtcp(self, data: bytes) -> None:
        with self.lock:
            for sr in parse_sender_reports(data):
                self.last_sr[sr.ssrc] = sr

    def blocks(self) -> list[ReportBlock]:
        with self.lock:
            return [rec.block(self.last_sr.get(ssrc)) for ssrc, rec in self.receptions.items()]
