"""SDP as the phone and the PBX write it, and the fake RTP endpoints (phone, PBX)."""
from __future__ import annotations

import dataclasses
import random
import re
import socket
import struct
import time
from collections import Counter
from typing import Optional

from bench.experiments.cn.engine import LOOPBACK


@dataclasses.dataclass
class Sdp:
    text: str
    addr: str
    port: int
    proto: str
    pts: list          # payload types in m= order
    rtpmap: dict       # pt -> "name/rate[/ch]"

    def pt_of(self, name: str, rate: int = 8000) -> Optional[int]:
        for pt in self.pts:
            enc = self.rtpmap.get(pt, _STATIC.get(pt, ""))
            n, _, r = enc.partition("/")
            if n.lower() == name.lower() and r.split("/")[0] == str(rate):
                return pt
        return None

    def names(self) -> list:
        return [self.rtpmap.get(pt, _STATIC.get(pt, "?")).split("/")[0] + f":{pt}"
                for pt in self.pts]

    def has(self, attr: str) -> bool:
        return re.search(rf"^a={re.escape(attr)}", self.text, re.M) is not None


_STATIC = {0: "PCMU/8000", 8: "PCMA/8000", 9: "G722/8000", 13: "CN/8000"}


def parse_sdp(text: str) -> Sdp:
    addr, port, proto, pts, rtpmap = None, None, None, [], {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("c=IN IP4 "):
            addr = line.split()[2]
        elif line.startswith("m=audio "):
            parts = line.split()
            port, proto, pts = int(parts[1]), parts[2], [int(p) for p in parts[3:]]
        elif line.startswith("a=rtpmap:"):
            pt, enc = line[len("a=rtpmap:"):].split(" ", 1)
            rtpmap[int(pt)] = enc
    return Sdp(text, addr, port, proto, pts, rtpmap)


def _sdp(lines: list) -> str:
    return "\r\n".join(lines) + "\r\n"


# codecs a browser offers (Chrome order) / accepts
PHONE_CODECS = [(111, "opus/48000/2", "minptime=10;useinbandfec=1"), (63, "red/48000/2", "111/111"),
                (9, "G722/8000", None), (0, "PCMU/8000", None), (8, "PCMA/8000", None),
                (13, "CN/8000", None), (110, "telephone-event/48000", None),
                (126, "telephone-event/8000", None)]
PHONE_ACCEPTS = {"opus", "red", "g722", "pcmu", "pcma", "cn", "telephone-event"}


def _webrtc_media_attrs(port: int, setup: str) -> list:
    fp = ":".join(f"{random.randrange(256):02X}" for _ in range(32))
    return [f"a=candidate:1 1 udp 2122260223 127.0.0.2 {port} typ host",
            "a=ice-ufrag:" + "".join(random.choice("abcdefgh") for _ in range(4)),
            "a=ice-pwd:" + "".join(random.choice("abcdefghijk") for _ in range(24)),
            "a=ice-options:trickle", f"a=fingerprint:sha-256 {fp}", f"a=setup:{setup}",
            "a=mid:0", "a=rtcp-mux", "a=rtcp-rsize"]


def phone_offer_sdp(addr: str, port: int, webrtc: bool, with_cn: bool = True) -> str:
    proto = "UDP/TLS/RTP/SAVPF" if webrtc else "RTP/AVP"
    conn_addr = "127.0.0.2" if webrtc else addr
    codecs = [c for c in PHONE_CODECS if with_cn or c[0] != 13]
    lines = ["v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
             f"m=audio {port} {proto} " + " ".join(str(c[0]) for c in codecs),
             f"c=IN IP4 {conn_addr}"]
    if webrtc:
        lines += ["a=rtcp:9 IN IP4 0.0.0.0"] + _webrtc_media_attrs(port, "actpass")
    for pt, enc, fmtp in codecs:
        lines.append(f"a=rtpmap:{pt} {enc}")
        if fmtp:
            lines.append(f"a=fmtp:{pt} {fmtp}")
    if webrtc:
        lines.append("a=rtcp-fb:111 transport-cc")
    lines.append("a=sendrecv")
    return _sdp(lines)


def phone_answer_sdp(offer: Sdp, addr: str, port: int, webrtc: bool) -> str:
    """What a browser answers: every offered codec it supports, in offer order."""
    keep = [pt for pt in offer.pts
            if offer.rtpmap.get(pt, _STATIC.get(pt, "?")).split("/")[0].lower() in PHONE_ACCEPTS]
    conn_addr = "127.0.0.2" if webrtc else addr
    lines = ["v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
             f"m=audio {port} {offer.proto} " + " ".join(map(str, keep)), f"c=IN IP4 {conn_addr}"]
    if webrtc:
        lines += _webrtc_media_attrs(port, "active")
    for pt in keep:
        lines.append(f"a=rtpmap:{pt} {offer.rtpmap.get(pt, _STATIC.get(pt))}")
    lines.append("a=sendrecv")
    return _sdp(lines)


def pbx_offer_sdp(addr: str, port: int, with_cn: bool) -> str:
    pts = [0, 8] + ([13] if with_cn else []) + [101]
    lines = ["v=0", f"o=pbx 100 100 IN IP4 {addr}", "s=pbx", f"c=IN IP4 {addr}", "t=0 0",
             f"m=audio {port} RTP/AVP " + " ".join(map(str, pts)),
             "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"]
    if with_cn:
        lines.append("a=rtpmap:13 CN/8000")
    lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20",
              "a=sendrecv"]
    return _sdp(lines)


def pbx_answer_sdp(offer: Sdp, addr: str, port: int, with_cn: bool) -> str:
    """Asterisk-like answer: PCMU (+ CN 13 if wanted) + telephone-event at the offered PT."""
    pts = [0] + ([13] if with_cn else [])
    te = offer.pt_of("telephone-event")
    if te is not None:
        pts.append(te)
    lines = ["v=0", f"o=pbx 200 200 IN IP4 {addr}", "s=pbx", f"c=IN IP4 {addr}", "t=0 0",
             f"m=audio {port} RTP/AVP " + " ".join(map(str, pts)), "a=rtpmap:0 PCMU/8000"]
    if with_cn:
        lines.append("a=rtpmap:13 CN/8000")
    if te is not None:
        lines += [f"a=rtpmap:{te} telephone-event/8000", f"a=fmtp:{te} 0-16"]
    lines += ["a=ptime:20", "a=sendrecv"]
    return _sdp(lines)


def inject_cn(sdp_text: str) -> str:
    """Gateway-side fix for PBXs that send CN without declaring it: add PT 13 to the SDP."""
    if re.search(r"^a=rtpmap:13 ", sdp_text, re.M):
        return sdp_text
    sdp_text = re.sub(r"^(m=audio \d+ [A-Z/]+(?: \d+)*)\r?$", r"\1 13", sdp_text, count=1,
                      flags=re.M)
    return sdp_text.replace("a=ptime:", "a=rtpmap:13 CN/8000\r\na=ptime:", 1)


_PCMU_BYTES = bytes(b for b in range(256) if b != 0x7F)


def rtp_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


class Endpoint:
    """A fake RTP endpoint (phone or PBX): one UDP socket, a sender state and receive stats."""

    def __init__(self, name: str, addr: str = LOOPBACK):
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 0))
        self.sock.setblocking(False)
        self.addr, self.port = self.sock.getsockname()
        self.remote = None
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.sent = Counter()
        self.sent_payloads: dict = {}  # PCMU payload -> send time (monotonic)
        self.received = Counter()
        self.rx_ssrcs: set = set()
        self.rx_pcmu_exact = 0
        self.rx_latency: list = []     # seconds, for byte-identical PCMU payloads
        self.rx_bytes = 0
        self.dtmf_state = None

    # --- sending -------------------------------------------------------------------
    def _send(self, pt: int, payload: bytes, marker: bool = False, advance: bool = True):
        self.sock.sendto(rtp_packet(pt, self.seq, self.ts, self.ssrc, payload, marker), self.remote)
        self.seq += 1
        if advance:
            self.ts += 160
        self.sent[pt] += 1

    def send_audio(self, pt: int):
        # no 0x7F: mu-law "negative zero" comes back as 0xFF after a decode/encode round trip
        payload = bytes(random.choice(_PCMU_BYTES) for _ in range(160))
        self.sent_payloads[payload] = time.monotonic()
        self._send(pt, payload)

    def send_cn(self, pt: int = 13, level: int = 0x40):
        self._send(pt, bytes([level]))

    def send_dtmf(self, pt: int, step: int, event: int = 5, steps: int = 7):
        """RFC 4733: `steps` packets with the same TS, the last 3 with the E bit."""
        end = step >= steps - 3
        duration = 160 * (min(step, steps - 3) + 1)
        payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
        self._send(pt, payload, marker=(step == 0), advance=False)
        if step == steps - 1:
            self.ts += duration

    # --- receiving -----------------------------------------------------------------
    def drain(self, reference_payloads: Optional[dict] = None):
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            pt = data[1] & 0x7F
            self.received[pt] += 1
            self.rx_bytes += len(data)
            self.rx_ssrcs.add(struct.unpack("!I", data[8:12])[0])
            if pt == 0 and reference_payloads is not None and data[12:] in reference_payloads:
                self.rx_pcmu_exact += 1
                self.rx_latency.append(time.monotonic() - reference_payloads[data[12:]])

    def close(self):
        self.sock.close()
