#!/usr/bin/env python3
"""Experiment: which rtpengine ng flags keep comfort noise (RTP PT 13) away from the WebRTC phone.

rtpengine forwards RTP packets whose payload type has no codec handler unchanged, so
stripping CN from the SDP alone does not stop a PBX that sends PT 13 during silence.
This script starts its own userspace rtpengine on free loopback ports, runs a set of
flag variants through offer/answer for both call directions, plays RTP from a fake PBX
and a fake phone, and prints what arrived on each side, per payload type.

Call shapes:
  A    phone offers, PBX answers with PCMU + CN 13 + telephone-event
  A-C  phone offers, PBX answers PCMU + telephone-event only, but still sends PT 13
  A-nophcn  like A, but the phone's offer has no CN (Firefox-like)
  B    PBX offers PCMU, PCMA, CN 13, telephone-event 101
  B-C  PBX offers PCMU, PCMA, telephone-event 101 (no 13) but still sends PT 13
  A+reB, B+reA, ...  the first exchange, then a re-INVITE offered by phone (reA) or PBX (reB)
  *-inj  like *-C, but the PBX SDP handed to rtpengine has "13 CN/8000" injected by the
         gateway before the rtpengine call (the PBX itself never offered/answered it)

Flags are written in Kamailio rtpengine-module syntax and converted to ng dictionaries
the way Kamailio 5.6 (src/modules/rtpengine/rtpengine.c, parse_flags) does it.

The media test uses plain RTP/AVP on the phone leg too, so packets can be read directly;
--webrtc-sdp repeats the signalling with real WebRTC SDP (UDP/TLS/RTP/SAVPF, ICE, DTLS,
rtcp-mux) and --dtls runs calls whose phone leg is a real aiortc peer (ICE + DTLS-SRTP).

Result on rtpengine 10.5.3.5: variant "full-g711+transcode" is the one that keeps PT 13 away
from the phone (it engages the transcoding engine, PCMU->PCMU, which is byte-exact except
for the mu-law negative zero 0x7F -> 0xFF). Shape B-C cannot be fixed by flags: a PT the
PBX's SDP never declared has no codec handler and is always forwarded as is; only the
"-inj" SDP fix helps there.

Usage (from the repository root):
  .venv/bin/python tests/support/cn_experiment.py                 # packet table, all variants
  .venv/bin/python tests/support/cn_experiment.py --variants strip,full-g711+transcode
  .venv/bin/python tests/support/cn_experiment.py --shapes A,B-C --show-sdp
  .venv/bin/python tests/support/cn_experiment.py --skip-media --webrtc-sdp --dtls
  .venv/bin/python tests/support/cn_experiment.py --cpu --variants strip,full-g711+transcode
                                            # CPU cost, 20 calls x 50 pps each way x 10 s
  CN_EXP_LOGLEVEL=7 ... --keep-log                                 # keep rtpengine debug log

Only loopback addresses are used. The script only ever signals the rtpengine process it
started itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Optional

import bencode  # package "bencode.py"

LOOPBACK = "127.0.0.1"
RTPENGINE_BIN = shutil.which("rtpengine") or "/usr/bin/rtpengine"

# --------------------------------------------------------------------------------------
# Kamailio 5.6 rtpengine-module flag string -> ng dictionary
# --------------------------------------------------------------------------------------

_KAM_CODEC_KEYS = [  # (prefix, alternative prefix, ng codec dict key), order as in parse_flags
    ("transcode", "codec-transcode", "transcode"),
    ("codec-strip", None, "strip"),
    ("codec-offer", None, "offer"),
    ("codec-mask", None, "mask"),
    ("codec-set", None, "set"),
    ("codec-except", None, "except"),
]
_KAM_LISTS = [("replace", "replace"), ("SDES", "SDES"), ("T38", "T.38"), ("T.38", "T.38"),
              ("rtcp-mux", "rtcp-mux")]
_KAM_TRANSPORTS = {"RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF", "UDP/TLS/RTP/SAVP",
                   "UDP/TLS/RTP/SAVPF"}


def _key_val_prefix(key: str, val: Optional[str], prefix: str) -> Optional[str]:
    """Kamailio's str_key_val_prefix(): "prefix=VAL" or "prefix-VAL"."""
    if key == prefix:
        return val or None
    if key.startswith(prefix) and len(key) - len(prefix) >= 2 and key[len(prefix)] == "-":
        return key[len(prefix) + 1:]
    return None


def kamailio_flags_to_ng(flags: str) -> dict:
    """Subset of Kamailio 5.6 parse_flags() sufficient for the flags used here."""
    out: dict = {}
    flag_list: list = []
    lists: dict = {}
    codec: dict = {}
    for token in flags.split():
        key, sep, val = token.partition("=")
        val = val if sep else None
        done = False
        for prefix, ng_key in _KAM_LISTS:
            s = _key_val_prefix(key, val, prefix)
            if s is not None:
                lists.setdefault(ng_key, []).append(s)
                done = True
                break
        if done:
            continue
        for prefix, alt, ng_key in _KAM_CODEC_KEYS:
            s = _key_val_prefix(key, val, prefix)
            if s is None and alt:
                s = _key_val_prefix(key, val, alt)
            if s is not None:
                codec.setdefault(ng_key, []).append(s)
                done = True
                break
        if done:
            continue
        if key in _KAM_TRANSPORTS and val is None:
            out["transport-protocol"] = key
        elif key in ("internal", "external"):
            lists.setdefault("direction", []).append(key)
        elif key == "delete-delay" and val is not None:
            out["delete delay"] = int(val)
        elif key in ("call-id", "from-tag", "to-tag", "via-branch"):
            pass  # set by the module itself / by the caller here
        elif val is None:
            flag_list.append(key)  # generic flag, e.g. trust-address, codec-consume-CN
        else:
            out[key] = val  # generic key=value, e.g. ICE=remove, transport-protocol=...
    if flag_list:
        out["flags"] = flag_list
    out.update(lists)
    if codec:
        out["codec"] = codec
    return out


# --------------------------------------------------------------------------------------
# rtpengine process + ng client
# --------------------------------------------------------------------------------------

def _udp_port_free(port: int, host: str = LOOPBACK) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def find_free_port_range(count: int, low: int = 20000, high: int = 60000) -> int:
    rnd = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        base = rnd.randrange(low, high - count) & ~1
        if all(_udp_port_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free UDP port range found")


class RtpEngine:
    """A private userspace rtpengine instance bound to loopback."""

    def __init__(self, ports: int = 400, log_level: int = int(os.environ.get("CN_EXP_LOGLEVEL", "6")), extra_args: Optional[list] = None):
        self.ports = ports
        self.log_level = log_level
        self.extra_args = extra_args or []
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[str] = None
        self._log_file = None
        self.ng_addr = None
        self._sock: Optional[socket.socket] = None
        self._seq = 0

    def start(self) -> "RtpEngine":
        base = find_free_port_range(self.ports + 1)
        self.ng_addr = (LOOPBACK, base + self.ports)  # last port of the range: ng control
        fd, self.log_path = tempfile.mkstemp(prefix="cn_experiment_rtpengine_", suffix=".log")
        self._log_file = os.fdopen(fd, "w")
        cmd = [RTPENGINE_BIN, "--table=-1", f"--interface={LOOPBACK}",
               f"--listen-ng={LOOPBACK}:{self.ng_addr[1]}",
               f"--port-min={base}", f"--port-max={base + self.ports - 1}",
               "--foreground", "--log-stderr", "--delete-delay=0",
               f"--log-level={self.log_level}", "--num-threads=2",
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((LOOPBACK, 0))
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited early, see {self.log_path}")
            try:
                if self.ng({"command": "ping"}, timeout=0.3, attempts=1).get("result") == "pong":
                    return self
            except TimeoutError:
                pass
        raise RuntimeError("rtpengine did not answer ping")

    def ng(self, msg: dict, timeout: float = 3.0, attempts: int = 3) -> dict:
        """Send one ng command; resend with the same cookie on timeout (rtpengine answers a
        repeated cookie from its cookie cache, so a resend never runs a command twice)."""
        self._seq += 1
        cookie = f"{os.getpid()}_{self._seq}"
        packet = cookie.encode() + b" " + bencode.encode(msg)
        for attempt in range(attempts):
            if attempt:
                print(f"  ng: no reply to {msg.get('command')!r} within {timeout} s, resending",
                      file=sys.stderr, flush=True)
            self._sock.sendto(packet, self.ng_addr)
            end = time.monotonic() + timeout
            while (left := end - time.monotonic()) > 0:
                self._sock.settimeout(left)
                try:
                    data, _ = self._sock.recvfrom(65535)
                except socket.timeout:
                    break
                c, _, body = data.partition(b" ")
                if c.decode() == cookie:
                    return bencode.decode(body)
        raise TimeoutError(f"no ng reply to {msg.get('command')!r}")

    def cpu_seconds(self) -> float:
        """utime+stime of the rtpengine process (all threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        self._log_file.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, keep_log: bool = False) -> None:
        if self._sock:
            self._sock.close()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # only the process we started
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file:
            self._log_file.close()
        if self.log_path and not keep_log:
            os.unlink(self.log_path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(keep_log=bool(exc[0]))


# --------------------------------------------------------------------------------------
# SDP helpers
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# RTP endpoints
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Signalling one call
# --------------------------------------------------------------------------------------

# Base (non-codec) flags per operation, Kamailio syntax. The experiment's default uses plain
# RTP/AVP on the phone leg so that we can read the packets; --webrtc-sdp uses the real ones.
BASE_FLAGS = {
    "plain": {
        "offer_to_pbx": "trust-address replace-origin replace-session-connection "
                        "transport-protocol=RTP/AVP ICE=remove DTLS=off rtcp-mux-demux",
        "answer_to_phone": "trust-address replace-origin replace-session-connection",
        "offer_to_phone": "trust-address replace-origin replace-session-connection "
                          "transport-protocol=RTP/AVP ICE=remove",
        "answer_to_pbx": "trust-address replace-origin replace-session-connection",
    },
    "webrtc": {
        "offer_to_pbx": "trust-address replace-origin replace-session-connection "
                        "transport-protocol=RTP/AVP ICE=remove DTLS=off rtcp-mux-demux",
        "answer_to_phone": "trust-address replace-origin replace-session-connection ICE=force "
                           "rtcp-mux-require",
        "offer_to_phone": "trust-address replace-origin replace-session-connection "
                          "transport-protocol=UDP/TLS/RTP/SAVPF ICE=force rtcp-mux-offer "
                          "rtcp-mux-require generate-mid SDES-off",
        "answer_to_pbx": "trust-address replace-origin replace-session-connection ICE=remove "
                         "DTLS=off rtcp-mux-demux",
    },
}


@dataclasses.dataclass
class Variant:
    name: str
    offer_to_pbx: str = ""      # shape A offer (phone -> PBX)
    answer_to_phone: str = ""   # shape A answer (PBX -> phone)
    offer_to_phone: str = ""    # shape B offer (PBX -> phone)
    answer_to_pbx: str = ""     # shape B answer (phone -> PBX)
    note: str = ""


VARIANTS = [
    Variant("none", note="no codec flags: CN negotiated end to end"),
    Variant("strip",
            "codec-strip=CN", "codec-strip=CN", "codec-strip=CN", "codec-strip=CN",
            note="strip CN everywhere (SDP only)"),
    Variant("strip+always-transcode",
            "codec-strip=CN always-transcode", "codec-strip=CN",
            "codec-strip=CN always-transcode", "codec-strip=CN",
            note="strip + force the transcoding engine"),
    Variant("mask",
            "codec-mask=CN", "", "codec-mask=CN", "",
            note="mask CN (hidden from the other side, kept on the offerer side)"),
    Variant("cn-transcode",
            "codec-strip=CN codec-transcode=CN", "", "codec-consume-CN", "",
            note="A: offer CN to PBX as a transcoded codec; B: consume PBX CN"),
    Variant("cn-transcode+answer-strip",
            "codec-strip=CN codec-transcode=CN", "codec-strip=CN", "codec-consume-CN",
            "codec-strip=CN",
            note="same, plus codec-strip=CN in the answers"),
    Variant("full+transcode",
            "codec-strip=full codec-except=opus codec-except=G722 codec-except=PCMU "
            "codec-except=PCMA codec-except=telephone-event codec-transcode=CN", "",
            "codec-consume-CN", "",
            note="A: strip=full (no re-add on the phone side) + fresh transcoded CN to PBX"),
    Variant("full-g711+transcode",
            "codec-strip=full codec-except=PCMU codec-except=PCMA "
            "codec-except=telephone-event/8000 codec-transcode=CN", "",
            "codec-consume-CN", "",
            note="like full+transcode, but offer only G.711 + telephone-event/8000 to the PBX"),
    Variant("full-g711+transcode+answer-strip",
            "codec-strip=full codec-except=PCMU codec-except=PCMA "
            "codec-except=telephone-event/8000 codec-transcode=CN", "codec-strip=CN",
            "codec-consume-CN", "codec-strip=CN",
            note="winning flags + codec-strip=CN in answers: A still blocked, but CN dropped, not noise"),
    Variant("mask+transcode",
            "codec-mask=CN codec-transcode=CN", "", "codec-mask=CN codec-accept-CN", "",
            note="A: mask phone CN + transcoded CN to PBX; B: mask+accept"),
]

SHAPES = ["A", "A-C", "A-inj", "A-nophcn", "A+reB", "A+reA", "B", "B-C", "B-inj", "B+reA",
          "B+reB"]


@dataclasses.dataclass
class Call:
    call_id: str
    shape: str
    phone: Endpoint
    pbx: Endpoint
    sdp_to_phone: Optional[Sdp]  # what rtpengine sent to the phone (None: signalling failed)
    sdp_to_pbx: Optional[Sdp]    # what rtpengine sent to the PBX
    phone_sdp: Optional[Sdp]     # the phone's own SDP (offer or answer)
    pbx_sdp: Optional[Sdp]       # the PBX's own SDP, before any gateway-side CN injection
    errors: list


def _ng_op(rtpe: RtpEngine, command: str, call_id: str, from_tag: str, to_tag: Optional[str],
           sdp: str, flags: str) -> dict:
    msg = {"command": command, "call-id": call_id, "from-tag": from_tag, "sdp": sdp}
    if to_tag:
        msg["to-tag"] = to_tag
    msg.update(kamailio_flags_to_ng(flags))
    return rtpe.ng(msg)


def _exchange(rtpe: RtpEngine, call: Call, offerer: str, variant: Variant, mode: str,
              pbx_has_cn: bool, inject: bool, phone_has_cn: bool) -> bool:
    """One offer/answer round. offerer "A" = phone offers, "B" = PBX offers (also re-INVITEs)."""
    base = BASE_FLAGS[mode]
    webrtc = mode == "webrtc"
    phone, pbx = call.phone, call.pbx
    # the dialog's tags never change; for an in-dialog request the sender's tag is "from"
    tags = {"phone": "phone-tag", "pbx": "pbx-tag"}
    initial = call.sdp_to_phone is None

    def op(command, sender, sdp, flags):
        receiver = "pbx" if sender == "phone" else "phone"
        if command == "offer":
            from_tag, to_tag = tags[sender], (None if initial else tags[receiver])
        else:  # answer: from-tag is the offerer's tag
            from_tag, to_tag = tags[receiver], tags[sender]
        r = _ng_op(rtpe, command, call.call_id, from_tag, to_tag, sdp, flags)
        if r.get("result") != "ok":
            call.errors.append(f"{command}: {r.get('result')} {r.get('error-reason', '')}")
            return None
        if r.get("warning"):
            call.errors.append(f"{command} warning: {r['warning']}")
        return parse_sdp(r["sdp"])

    if offerer == "A":
        phone_sdp_text = phone_offer_sdp(phone.addr, phone.port, webrtc, with_cn=phone_has_cn)
        to_pbx = op("offer", "phone", phone_sdp_text,
                    f"{base['offer_to_pbx']} {variant.offer_to_pbx}")
        if to_pbx is None:
            return False
        pbx_sdp_text = pbx_answer_sdp(to_pbx, pbx.addr, pbx.port, with_cn=pbx_has_cn)
        to_phone = op("answer", "pbx", inject_cn(pbx_sdp_text) if inject else pbx_sdp_text,
                      f"{base['answer_to_phone']} {variant.answer_to_phone}")
    else:
        pbx_sdp_text = pbx_offer_sdp(pbx.addr, pbx.port, with_cn=pbx_has_cn)
        to_phone = op("offer", "pbx", inject_cn(pbx_sdp_text) if inject else pbx_sdp_text,
                      f"{base['offer_to_phone']} {variant.offer_to_phone}")
        if to_phone is None:
            return False
        phone_sdp_text = phone_answer_sdp(to_phone, phone.addr, phone.port, webrtc)
        to_pbx = op("answer", "phone", phone_sdp_text,
                    f"{base['answer_to_pbx']} {variant.answer_to_pbx}")
    if to_phone is None or to_pbx is None:
        return False
    call.sdp_to_phone, call.sdp_to_pbx = to_phone, to_pbx
    call.phone_sdp, call.pbx_sdp = parse_sdp(phone_sdp_text), parse_sdp(pbx_sdp_text)
    phone.remote = (to_phone.addr, to_phone.port)
    pbx.remote = (to_pbx.addr, to_pbx.port)
    return True


def setup_call(rtpe: RtpEngine, shape: str, variant: Variant, mode: str = "plain",
               call_id: Optional[str] = None) -> Call:
    """shape: A|B, optional -C / -inj / -nophcn, optional +reA / +reB (re-INVITE afterwards)."""
    call_id = call_id or f"cn-{shape}-{variant.name}-{random.getrandbits(32):08x}"
    call = Call(call_id, shape, Endpoint("phone"), Endpoint("pbx"), None, None, None, None, [])
    first, _, reinvite = shape.partition("+re")
    pbx_has_cn = not (first.endswith("-C") or first.endswith("-inj"))
    ok = _exchange(rtpe, call, first[0], variant, mode, pbx_has_cn=pbx_has_cn,
                   inject=first.endswith("-inj"), phone_has_cn=not first.endswith("-nophcn"))
    if ok and reinvite:
        ok = _exchange(rtpe, call, reinvite, variant, mode, pbx_has_cn=pbx_has_cn,
                       inject=first.endswith("-inj"), phone_has_cn=not first.endswith("-nophcn"))
    if not ok:
        call.sdp_to_phone = call.sdp_to_pbx = None
    return call


def delete_call(rtpe: RtpEngine, call: Call):
    rtpe.ng({"command": "delete", "call-id": call.call_id, "from-tag": "phone-tag"
             if call.shape.startswith("A") else "pbx-tag"})
    call.phone.close()
    call.pbx.close()


# --------------------------------------------------------------------------------------
# Media script
# --------------------------------------------------------------------------------------

# per 20 ms tick: what the PBX and the phone send
def pbx_action(tick: int):
    if tick < 50:
        return "audio"
    if tick < 75:
        return "cn"        # silence: comfort noise every 20 ms
    if tick < 82:
        return ("dtmf", tick - 75)
    return "audio"


def phone_action(tick: int):
    if 50 <= tick < 57:
        return ("dtmf", tick - 50)
    return "audio"


TICKS = 132


def _negotiated(sdp: Sdp, name: str) -> Optional[int]:
    return sdp.pt_of(name) if sdp else None


def play_tick(call: Call, tick: int):
    tick %= TICKS
    pbx_te = _negotiated(call.pbx_sdp, "telephone-event")
    phone_te = _negotiated(call.phone_sdp, "telephone-event")
    for ep, action, te in ((call.pbx, pbx_action(tick), pbx_te),
                           (call.phone, phone_action(tick), phone_te)):
        if action == "audio":
            ep.send_audio(0)
        elif action == "cn":
            ep.send_cn(13)
        elif isinstance(action, tuple) and te is not None:
            ep.send_dtmf(te, action[1])
        elif isinstance(action, tuple):
            ep.send_audio(0)


def run_media(calls: list, ticks: int = TICKS, interval: float = 0.02, tail: float = 0.6):
    """Send one packet per endpoint every 20 ms; receive in between (select) for latency."""
    sel = selectors.DefaultSelector()
    for call in calls:
        sel.register(call.phone.sock, selectors.EVENT_READ, (call.phone, call.pbx))
        sel.register(call.pbx.sock, selectors.EVENT_READ, (call.pbx, call.phone))

    def wait_until(deadline):
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return
            for key, _ in sel.select(timeout):
                receiver, sender = key.data
                receiver.drain(sender.sent_payloads)

    start = time.monotonic()
    try:
        for tick in range(ticks):
            for call in calls:
                play_tick(call, tick)
            wait_until(start + (tick + 1) * interval)
        wait_until(time.monotonic() + tail)
    finally:
        sel.close()


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------

def _cn_in(sdp: Optional[Sdp]) -> str:
    if sdp is None:
        return "-"
    return "CN" if any(n.lower().startswith("cn:") for n in sdp.names()) else "no"


def packet_table(rtpe: RtpEngine, variants: list, shapes: list, show_sdp: bool) -> list:
    rows = []
    for variant in variants:
        for shape in shapes:
            print(f"  running {variant.name} / {shape}", file=sys.stderr, flush=True)
            call = setup_call(rtpe, shape, variant)
            if call.sdp_to_phone is None or call.sdp_to_pbx is None:
                rows.append((variant.name, shape, "FAILED: " + "; ".join(call.errors)))
                continue
            run_media([call])
            ph, px = call.phone, call.pbx
            te_pbx = _negotiated(call.pbx_sdp, "telephone-event")
            te_phone = _negotiated(call.phone_sdp, "telephone-event")
            rows.append(dict(
                variant=variant.name, shape=shape,
                sdp_phone=_cn_in(call.sdp_to_phone), sdp_pbx=_cn_in(call.sdp_to_pbx),
                ph_pt0=ph.received[0], ph_pt13=ph.received[13],
                ph_te=ph.received[te_phone] if te_phone is not None else 0,
                ph_other=sum(v for k, v in ph.received.items() if k not in (0, 13, te_phone)),
                ph_exact=ph.rx_pcmu_exact, px_sent0=px.sent[0],
                ph_lat=1000 * max(ph.rx_latency, default=0),
                px_pt0=px.received[0], px_pt13=px.received[13],
                px_te=px.received[te_pbx] if te_pbx is not None else 0,
                px_exact=px.rx_pcmu_exact, ph_sent0=ph.sent[0],
                errors="; ".join(call.errors)))
            if show_sdp:
                print(f"--- {variant.name} / {shape}: SDP to PBX ---\n{call.sdp_to_pbx.text}"
                      f"--- SDP to phone ---\n{call.sdp_to_phone.text}")
            delete_call(rtpe, call)
    return rows


def print_packet_table(rows: list):
    print("\nPBX sends per call: 100 x PCMU(0), 25 x CN(13), 7 x telephone-event; phone sends "
          "125 x PCMU(0) + 7 x telephone-event.")
    print("ph_* = received at the phone socket, px_* = received at the PBX socket; exact = PCMU "
          "payloads byte-identical to what was sent; maxlat = worst PBX->phone delay of those.")
    hdr = (f"{'variant':28} {'shape':6} {'SDP>ph':6} {'SDP>pbx':7} | {'ph_0':>5} {'ph_13':>5} "
           f"{'ph_te':>5} {'ph_oth':>6} {'exact':>5} | {'px_0':>5} {'px_13':>5} {'px_te':>5} "
           f"{'exact':>5} {'maxlat':>6}  verdict")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if isinstance(r, tuple):
            print(f"{r[0]:28} {r[1]:6} {r[2]}")
            continue
        ok = (r["sdp_phone"] == "no" and r["ph_pt13"] == 0 and r["ph_pt0"] >= 95
              and r["ph_te"] > 0 and r["px_te"] > 0 and r["px_pt0"] >= 110)
        print(f"{r['variant']:28} {r['shape']:6} {r['sdp_phone']:6} {r['sdp_pbx']:7} | "
              f"{r['ph_pt0']:5} {r['ph_pt13']:5} {r['ph_te']:5} {r['ph_other']:6} "
              f"{r['ph_exact']:5} | {r['px_pt0']:5} {r['px_pt13']:5} {r['px_te']:5} "
              f"{r['px_exact']:5} {r['ph_lat']:5.1f}ms  {'OK' if ok else 'LEAK/FAIL'}"
              + (f"  [{r['errors']}]" if r["errors"] else ""))


def webrtc_sdp_check(rtpe: RtpEngine, variants: list, shapes: list, show_sdp: bool):
    """Signalling only, real WebRTC SDP on the phone leg: does rtpengine accept the flags?"""
    print("\nWebRTC SDP check (phone leg UDP/TLS/RTP/SAVPF, ICE, DTLS, rtcp-mux; no media):")
    print(f"{'variant':28} {'shape':6} {'to phone: proto':22} {'codecs to phone':44} "
          f"{'ICE':3} {'fp':3} {'mux':3} | {'to PBX: proto':10} codecs to PBX")
    for variant in variants:
        for shape in shapes:
            call = setup_call(rtpe, shape, variant, mode="webrtc")
            tp, tx = call.sdp_to_phone, call.sdp_to_pbx
            if tp is None or tx is None:
                print(f"{variant.name:28} {shape:6} FAILED: {'; '.join(call.errors)}")
                continue
            print(f"{variant.name:28} {shape:6} {tp.proto:22} {' '.join(tp.names()):44} "
                  f"{'y' if tp.has('ice-ufrag') else 'n':3} "
                  f"{'y' if tp.has('fingerprint') else 'n':3} {'y' if tp.has('rtcp-mux') else 'n':3} | "
                  f"{tx.proto:10} {' '.join(tx.names())}"
                  + (f"  [{'; '.join(call.errors)}]" if call.errors else ""))
            if show_sdp:
                print(f"--- SDP to PBX ---\n{tx.text}--- SDP to phone ---\n{tp.text}")
            delete_call(rtpe, call)


def cpu_test(variants: list, shapes: list, calls_n: int, seconds: float):
    """rtpengine CPU time for `calls_n` concurrent calls, 50 pps each direction."""
    print(f"\nCPU: {calls_n} concurrent calls, 50 pps each direction, {seconds:.0f} s "
          f"(PBX: 100 pkt PCMU / 25 pkt CN / 7 pkt DTMF cycle); fresh rtpengine per row")
    print(f"{'variant':28} {'shape':5} {'rtpengine cpu s':>15} {'% of 1 core':>11} "
          f"{'ms cpu/call/s':>13} {'rx pkts':>8} {'ph_13':>6}")
    results = {}
    ticks = int(seconds / 0.02)
    for variant, shape in [(v, sh) for sh in shapes for v in variants]:
        with RtpEngine(ports=max(400, calls_n * 8 + 40), log_level=4) as rtpe:
            calls = [setup_call(rtpe, shape, variant, call_id=f"cpu-{i}") for i in range(calls_n)]
            bad = [c for c in calls if c.sdp_to_phone is None or c.sdp_to_pbx is None]
            if bad:
                print(f"{variant.name:28} {shape:5} FAILED: {bad[0].errors}")
                continue
            run_media(calls, ticks=10, tail=0.3)  # warm-up: latch, create handlers
            cpu0, t0 = rtpe.cpu_seconds(), time.monotonic()
            run_media(calls, ticks=ticks, tail=0.0)
            cpu1, t1 = rtpe.cpu_seconds(), time.monotonic()
            run_media(calls, ticks=0, tail=0.3)  # collect stragglers
            rx = sum(sum(c.phone.received.values()) + sum(c.pbx.received.values()) for c in calls)
            ph13 = sum(c.phone.received[13] for c in calls)
            cpu = cpu1 - cpu0
            results[(variant.name, shape)] = cpu
            print(f"{variant.name:28} {shape:5} {cpu:15.2f} {100 * cpu / (t1 - t0):10.1f}% "
                  f"{1000 * cpu / (t1 - t0) / calls_n:13.2f} {rx:8} {ph13:6}")
            for c in calls:
                delete_call(rtpe, c)
    return results


async def _dtls_call(rtpe: RtpEngine, shape: str, variant: Variant, seconds: float = 3.0) -> dict:
    """One call whose phone leg is a real aiortc peer (ICE + DTLS-SRTP); counts decrypted PTs."""
    import asyncio

    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    # aioice never offers 127.0.0.1 as a host candidate; use another loopback address
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.2"]
    received = Counter()
    original = RTCDtlsTransport._handle_rtp_data

    async def counting(self, data, arrival_time_ms):
        received[data[1] & 0x7F] += 1
        await original(self, data, arrival_time_ms)

    RTCDtlsTransport._handle_rtp_data = counting
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: loopback only
    pbx = Endpoint("pbx")
    base = BASE_FLAGS["webrtc"]
    call_id = f"dtls-{shape}-{variant.name}-{random.getrandbits(32):08x}"
    errors = []

    def ng(command, from_tag, to_tag, sdp, flags):
        r = _ng_op(rtpe, command, call_id, from_tag, to_tag, sdp, flags)
        if r.get("result") != "ok":
            raise RuntimeError(f"{command}: {r.get('error-reason')}")
        return r["sdp"]

    try:
        if shape == "A":
            pc.addTrack(AudioStreamTrack())
            await pc.setLocalDescription(await pc.createOffer())
            to_pbx = parse_sdp(ng("offer", "phone-tag", None, pc.localDescription.sdp,
                                  f"{base['offer_to_pbx']} {variant.offer_to_pbx}"))
            pbx_sdp = parse_sdp(pbx_answer_sdp(to_pbx, pbx.addr, pbx.port, with_cn=True))
            to_phone = ng("answer", "phone-tag", "pbx-tag", pbx_sdp.text,
                          f"{base['answer_to_phone']} {variant.answer_to_phone}")
            await pc.setRemoteDescription(RTCSessionDescription(to_phone, "answer"))
        else:
            pbx_sdp = parse_sdp(pbx_offer_sdp(pbx.addr, pbx.port, with_cn=True))
            to_phone = ng("offer", "pbx-tag", None, pbx_sdp.text,
                          f"{base['offer_to_phone']} {variant.offer_to_phone}")
            await pc.setRemoteDescription(RTCSessionDescription(to_phone, "offer"))
            pc.addTrack(AudioStreamTrack())
            await pc.setLocalDescription(await pc.createAnswer())
            to_pbx = parse_sdp(ng("answer", "pbx-tag", "phone-tag", pc.localDescription.sdp,
                                  f"{base['answer_to_pbx']} {variant.answer_to_pbx}"))
        pbx.remote = (to_pbx.addr, to_pbx.port)
        for _ in range(100):
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        else:
            errors.append(f"phone leg not connected ({pc.connectionState})")
        te = pbx_sdp.pt_of("telephone-event")
        for tick in range(int(seconds / 0.02)):
            action = pbx_action(tick % TICKS)
            if action == "audio":
                pbx.send_audio(0)
            elif action == "cn":
                pbx.send_cn(13)
            elif te is not None:
                pbx.send_dtmf(te, action[1])
            pbx.drain()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        pbx.drain()
    except RuntimeError as exc:
        errors.append(str(exc))
    finally:
        RTCDtlsTransport._handle_rtp_data = original
        await pc.close()
        rtpe.ng({"command": "delete", "call-id": call_id,
                 "from-tag": "phone-tag" if shape == "A" else "pbx-tag"})
        pbx.close()
    phone_sdp = parse_sdp(to_phone) if "to_phone" in locals() else None
    return dict(variant=variant.name, shape=shape, sdp_phone=_cn_in(phone_sdp),
                phone_codecs=" ".join(phone_sdp.names()) if phone_sdp else "-",
                ph=dict(sorted(received.items())), pbx_sent=dict(sorted(pbx.sent.items())),
                px=dict(sorted(pbx.received.items())), errors="; ".join(errors))


def dtls_test(rtpe: RtpEngine, variants: list):
    import asyncio
    import logging
    logging.getLogger("aioice").setLevel(logging.ERROR)
    print("\nDTLS-SRTP phone leg (aiortc peer at 127.0.0.2, counted after SRTP decryption; PBX leg "
          "plain RTP). aiortc does not offer telephone-event, so shape A has no DTMF.")
    print(f"{'variant':28} {'shape':5} {'SDP>ph':6} {'PBX sent':28} {'phone rx (decrypted) per PT':32} "
          f"{'PBX rx per PT':20} codecs to phone")
    for variant in variants:
        for shape in ("A", "B"):
            r = asyncio.run(_dtls_call(rtpe, shape, variant))
            print(f"{r['variant']:28} {r['shape']:5} {r['sdp_phone']:6} {str(r['pbx_sent']):28} "
                  f"{str(r['ph']):32} {str(r['px']):20} {r['phone_codecs']}"
                  + (f"  [{r['errors']}]" if r["errors"] else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", help="comma-separated variant names (default: all)")
    ap.add_argument("--shapes", help=f"comma-separated shapes (default: {','.join(SHAPES)})")
    ap.add_argument("--show-sdp", action="store_true")
    ap.add_argument("--webrtc-sdp", action="store_true", help="also run the WebRTC SDP check")
    ap.add_argument("--skip-media", action="store_true", help="skip the plain-RTP packet table")
    ap.add_argument("--dtls", action="store_true",
                    help="also run calls with a real DTLS-SRTP phone leg (aiortc)")
    ap.add_argument("--cpu", action="store_true", help="run the CPU test instead")
    ap.add_argument("--cpu-calls", type=int, default=20)
    ap.add_argument("--cpu-seconds", type=float, default=10)
    ap.add_argument("--cpu-shapes", default="A,B")
    ap.add_argument("--keep-log", action="store_true", help="keep and print the rtpengine log path")
    args = ap.parse_args(argv)

    variants = VARIANTS
    if args.variants:
        wanted = args.variants.split(",")
        variants = [v for v in VARIANTS if v.name in wanted]
        missing = set(wanted) - {v.name for v in variants}
        if missing:
            ap.error(f"unknown variants: {missing}; known: {[v.name for v in VARIANTS]}")
    shapes = args.shapes.split(",") if args.shapes else SHAPES

    version = subprocess.run([RTPENGINE_BIN, "--version"], capture_output=True, text=True)
    print(f"rtpengine: {(version.stdout + version.stderr).strip()}")
    for v in variants:
        print(f"  {v.name:28} offer>pbx [{v.offer_to_pbx}] answer>phone [{v.answer_to_phone}] "
              f"offer>phone [{v.offer_to_phone}] answer>pbx [{v.answer_to_pbx}]  ({v.note})")

    if args.cpu:
        cpu_test(variants, args.cpu_shapes.split(","), args.cpu_calls, args.cpu_seconds)
        return 0

    rtpe = RtpEngine().start()
    failed = True
    try:
        if not args.skip_media:
            rows = packet_table(rtpe, variants, shapes, args.show_sdp)
            print_packet_table(rows)
        if args.webrtc_sdp:
            webrtc_sdp_check(rtpe, variants, shapes, args.show_sdp)
        if args.dtls:
            dtls_test(rtpe, variants)
        failed = False
    finally:
        if rtpe.proc.poll() is not None:
            print(f"\nrtpengine exited with status {rtpe.proc.returncode}")
        rtpe.stop(keep_log=args.keep_log or failed)
        if args.keep_log or failed:
            print(f"\nrtpengine log: {rtpe.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
