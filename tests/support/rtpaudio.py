"""RTP and audio helpers shared by the media test endpoints (webrtc_phone.py,
rtp_pbx.py): G.711 mu-law, tones, RTP headers, RFC 4733 telephone-events, and
the analysis the media tests assert on (dominant frequency by FFT, 20 ms frames
received against frames sent in a time window, DTMF digits)."""
from __future__ import annotations

import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

RATE = 8000
FRAME = 160                      # samples per 20 ms frame at 8 kHz
PTIME = 0.020
PT_PCMU = 0
PT_CN = 13

DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 event codes 0..15


# ------------------------------------------------------------------ G.711 mu-law
def _ulaw_decode_table() -> np.ndarray:
    out = np.zeros(256, dtype=np.int16)
    for i in range(256):
        u = ~i & 0xFF
        t = ((u & 0x0F) << 3) + 0x84
        t <<= (u & 0x70) >> 4
        out[i] = (0x84 - t) if (u & 0x80) else (t - 0x84)
    return out


ULAW_DECODE = _ulaw_decode_table()


def ulaw_decode(payload: bytes) -> np.ndarray:
    return ULAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def ulaw_encode(samples: np.ndarray) -> bytes:
    """16-bit linear PCM to mu-law (G.711, with the usual bias and clip)."""
    s = samples.astype(np.int32)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def tone(freq: float, start_sample: int, n: int = FRAME, amplitude: float = 8000.0) -> np.ndarray:
    t = (np.arange(n) + start_sample) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


# ------------------------------------------------------------------------ RTP
@dataclass
class RtpHeader:
    pt: int
    marker: bool
    seq: int
    ts: int
    ssrc: int
    payload: bytes


def rtp_pack(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | (pt & 0x7F), seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF) + payload


def rtp_parse(data: bytes) -> RtpHeader | None:
    """A plain RTP packet (not RTCP), header extensions and padding skipped."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    pt = data[1] & 0x7F
    if 64 <= pt <= 95:  # RTCP (RFC 5761 demultiplexing range)
        return None
    cc = data[0] & 0x0F
    off = 12 + 4 * cc
    if data[0] & 0x10:
        if len(data) < off + 4:
            return None
        off += 4 + 4 * struct.unpack("!H", data[off + 2:off + 4])[0]
    end = len(data)
    if data[0] & 0x20 and end > off:
        end -= data[-1]
    seq, ts, ssrc = struct.unpack("!HII", data[2:12])
    return RtpHeader(pt, bool(data[1] & 0x80), seq, ts, ssrc, bytes(data[off:end]))


def dtmf_payload(event: int, end: bool, duration: int, volume: int = 10) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


def dtmf_parse(payload: bytes) -> tuple[int, bool, int] | None:
    if len(payload) < 4:
        return None
    event, flags, duration = struct.unpack("!BBH", payload[:4])
    return event, bool(flags & 0x80), duration


# ------------------------------------------------------------------ receiving
@dataclass
class RxPacket:
    t: float          # arrival, time.monotonic()
    pt: int
    seq: int
    ts: int
    ssrc: int
    payload: bytes


@dataclass
class RxLog:
    """Everything one endpoint received, thread-safe enough for one writer."""
    packets: list[RxPacket] = field(default_factory=list)
    by_pt: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, h: RtpHeader, t: float | None = None) -> None:
        p = RxPacket(time.monotonic() if t is None else t, h.pt, h.seq, h.ts, h.ssrc, h.payload)
        with self.lock:
            self.packets.append(p)
            self.by_pt[h.pt] += 1

    def snapshot(self) -> list[RxPacket]:
        with self.lock:
            return list(self.packets)

    def count(self, pt: int, t0: float = 0.0, t1: float = float("inf")) -> int:
        return sum(1 for p in self.snapshot() if p.pt == pt and t0 <= p.t < t1)

    def pts(self, t0: float = 0.0, t1: float = float("inf")) -> dict[int, int]:
        c = Counter(p.pt for p in self.snapshot() if t0 <= p.t < t1)
        return dict(sorted(c.items()))

    def audio(self, t0: float = 0.0, t1: float = float("inf"), pt: int = PT_PCMU) -> list[RxPacket]:
        return [p for p in self.snapshot() if p.pt == pt and t0 <= p.t < t1]

    def digits(self, pt: int) -> str:
        """RFC 4733 events received with payload type `pt`, one digit per event
        (an event is identified by its RTP timestamp; retransmitted end packets
        count once)."""
        seen: dict[tuple[int, int], int] = {}
        for p in self.snapshot():
            if p.pt != pt:
                continue
            ev = dtmf_parse(p.payload)
            if ev is None:
                continue
            seen.setdefault((p.ssrc, p.ts), ev[0])
        return "".join(DTMF_EVENTS[e] if e < 16 else "?" for e in seen.values())


@dataclass
class TxLog:
    """What one endpoint sent: per PT counts, and each audio frame's mark and
    send time (so a receiver's frames can be matched to the sender's clock)."""
    audio: list[tuple[float, int]] = field(default_factory=list)   # (time.monotonic(), mark)
    by_pt: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _next_mark: int = 1

    def next_mark(self) -> int:
        with self.lock:
            mark = self._next_mark
            self._next_mark += 1
            return mark

    def add(self, pt: int, mark: int | None = None, t: float | None = None) -> None:
        with self.lock:
            self.by_pt[pt] += 1
            if mark is not None:
                self.audio.append((time.monotonic() if t is None else t, mark))

    def marks(self, t0: float, t1: float) -> dict[int, float]:
        with self.lock:
            return {m: t for t, m in self.audio if t0 <= t < t1}


# ---------------------------------------------------------------- frame marks
# Every audio frame a test endpoint sends carries its number in the lowest bit
# of its first 24 mu-law bytes (20 bits of frame number, 4 of check): the
# receiver can tell which frames arrived whatever its own clock or a relay's
# sequence numbering says, and comfort noise a relay makes up carries none.
# It costs the tone about 30 dB SNR, far from what the FFT check needs.
_MARK_BITS = 24


def _check(n: int) -> int:
    return (n * 7 + 3) & 0xF


def mark_frame(payload: bytes, mark: int) -> bytes:
    value = (mark & 0xFFFFF) | (_check(mark & 0xFFFFF) << 20)
    out = bytearray(payload)
    for i in range(min(_MARK_BITS, len(out))):
        out[i] = (out[i] & 0xFE) | ((value >> i) & 1)
    return bytes(out)


def read_mark(payload: bytes) -> int | None:
    if len(payload) < _MARK_BITS:
        return None
    value = 0
    for i in range(_MARK_BITS):
        value |= (payload[i] & 1) << i
    mark = value & 0xFFFFF
    return mark if value >> 20 == _check(mark) else None


def dominant_frequency(packets: list[RxPacket]) -> tuple[float, float]:
    """(peak frequency in Hz, share of the signal's energy within +-20 Hz of it)
    of the mu-law payloads, concatenated in the order given."""
    if not packets:
        return 0.0, 0.0
    pcm = np.concatenate([ulaw_decode(p.payload) for p in packets]).astype(np.float64)
    pcm -= pcm.mean()
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1.0 / RATE)
    peak = int(np.argmax(spectrum[1:])) + 1
    band = np.abs(freqs - freqs[peak]) <= 20.0
    total = spectrum.sum() or 1.0
    return float(freqs[peak]), float(spectrum[band].sum() / total)


@dataclass
class Flow:
    """One direction of audio: of the 20 ms frames the sender sent in a window
    (its own clock), how many the receiver got, and what they sound like."""
    sent: int
    received: int
    missing: int
    missing_pct: float
    freq: float
    purity: float
    latency_p50_ms: float
    latency_max_ms: float
    unmarked: int            # PCMU frames received in the window that no sender frame explains

    def as_dict(self) -> dict:
        return {"frames_sent": self.sent, "frames_received": self.received,
                "frames_missing": self.missing, "missing_pct": round(self.missing_pct, 3),
                "freq_hz": round(self.freq, 1), "tone_purity": round(self.purity, 3),
                "latency_p50_ms": round(self.latency_p50_ms, 1),
                "latency_max_ms": round(self.latency_max_ms, 1), "unmarked_frames": self.unmarked}


def flow(tx: TxLog, rx: RxLog, t0: float, t1: float, pt: int = PT_PCMU) -> Flow:
    sent = tx.marks(t0, t1)
    got: dict[int, RxPacket] = {}
    unmarked = 0
    for p in rx.snapshot():
        if p.pt != pt:
            continue
        m = read_mark(p.payload)
        if m in sent:
            got.setdefault(m, p)
        elif m is None and t0 <= p.t < t1 + 0.5:
            unmarked += 1
    missing = len(sent) - len(got)
    ordered = [got[m] for m in sorted(got)]
    freq, purity = dominant_frequency(ordered)
    lat = sorted(got[m].t - sent[m] for m in got)
    return Flow(len(sent), len(got), missing, 100.0 * missing / len(sent) if sent else 100.0,
                freq, purity, 1000 * lat[len(lat) // 2] if lat else 0.0,
                1000 * lat[-1] if lat else 0.0, unmarked)
