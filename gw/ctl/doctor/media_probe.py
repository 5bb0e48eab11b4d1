"""doctor's sample sessions through one rtpengine, with the gateway's own flags,
and the packets it sends rtpengine's ports from here. The media checks
(media_address, comfort_noise, media_ports) read what this finds."""
from __future__ import annotations

import os
import random
import re
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Optional

from gw.cnfilter import bound_address, local_ip_toward
from gw.ctl.common import DOCTOR_PREFIX
from gw.ctl.doctor.stun import stun_binding, stun_exchange
from kemi import media
from kemi.media import Op, Side
from kemi.ng import NgClient, NgError
from kemi.settings import HostPort


def _sample_phone_sdp(ip: str, ufrag: str, pwd: str) -> str:
    """What Chrome offers (CN 13 included, as Chromium does)."""
    fp = ":".join(f"{b:02X}" for b in os.urandom(32))
    return "\r\n".join([
        "v=0", f"o=- {random.randrange(10**17, 10**18)} 2 IN IP4 {ip}", "s=-", "t=0 0",
        "a=group:BUNDLE 0", "a=msid-semantic: WMS gwctl",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 13 126", f"c=IN IP4 {ip}", "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp 2122260223 {ip} 9 typ host generation 0",
        f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {fp}", "a=setup:actpass", "a=mid:0", "a=sendrecv", "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:13 CN/8000",
        "a=rtpmap:126 telephone-event/8000",
    ]) + "\r\n"


def _sample_pbx_sdp(ip: str, port: int) -> str:
    """What Asterisk offers or answers with comfort noise enabled."""
    return "\r\n".join([
        "v=0", f"o=pbx {random.randrange(10**6, 10**7)} 1 IN IP4 {ip}", "s=Asterisk", f"c=IN IP4 {ip}",
        "t=0 0", f"m=audio {port} RTP/AVP 0 8 13 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16",
        "a=ptime:20", "a=sendrecv",
    ]) + "\r\n"


def sdp_addresses(sdp: str) -> list[str]:
    """Connection and ICE candidate addresses, in order, without repeats."""
    found = re.findall(r"^c=IN IP[46] (\S+)", sdp, re.M)
    found += re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", sdp, re.M)
    return list(dict.fromkeys(found))


def _sdp_port(sdp: str) -> Optional[int]:
    m = re.search(r"^m=audio (\d+)", sdp, re.M)
    return int(m.group(1)) if m else None


@dataclass
class MediaProbe:
    """doctor's sample sessions through one rtpengine, with the gateway's flags:
    outbound (the phone offers, the PBX answers), inbound (the PBX offers), and a
    plain RTP session between two sockets of ours to see rtpengine relay packets."""

    engine: str
    error: str = ""
    to_phone: dict[str, str] = field(default_factory=dict)
    to_pbx: dict[str, str] = field(default_factory=dict)
    bound: str = ""                         # the address rtpengine really listens on
    phone_port: Optional[int] = None        # rtpengine's port facing the phone (outbound call)
    ports: list[int] = field(default_factory=list)
    stun_reply: str = ""                    # our ICE check to phone_port: success / error / ''
    relay_ports: tuple[int, int] = (0, 0)   # rtpengine's ports facing our two RTP sockets
    relayed: dict[str, bool] = field(default_factory=dict)   # "a->b"/"b->a": packet came out


def _plain_sdp(ip: str, port: int) -> str:
    return (f"v=0\r\no=gwctl 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


class _Sessions:
    """The three sample sessions on one rtpengine (outbound, inbound, plain relay),
    each command exactly what kemi/app.py hands rtpengine: the gateway's flags for
    its CN path, and a PBX's SDP as the gateway rewrites it first."""

    def __init__(self, engine: HostPort, me: str, cn: media.CnBlock) -> None:
        self.ng = NgClient(engine.host, engine.port, timeout=2.0)
        self.me = me
        self.cn = cn
        self.out_id, self.in_id, self.relay_id = (DOCTOR_PREFIX + secrets.token_hex(6) for _ in range(3))

    def command(self, command: str, call_id: str, sdp: str, op: Op, receiver: Side, sender: Side,
                **tags: str) -> str:
        sdp = media.rtpengine_sdp(sdp, sender, self.cn)
        params = media.ng_params(media.flags(op, receiver, sender, self.cn))
        fam = "IP6" if ":" in self.me else "IP4"
        reply = self.ng.request({"command": command, "call-id": call_id, "sdp": sdp,
                                 "received-from": [fam, self.me], **tags, **params})
        return reply.get("sdp", "")

    def delete(self) -> None:
        for cid in (self.out_id, self.in_id, self.relay_id):
            try:
                self.ng.request({"command": "delete", "call-id": cid})
            except (NgError, OSError):
                pass


def probe_media(engine: HostPort, timeout: float = 1.0,
                cn: media.CnBlock = media.CnBlock.TRANSCODE) -> MediaProbe:
    """Run the sample sessions, probe rtpengine's ports from here, delete the sessions.
    Probes go to the address rtpengine binds (from `query`), never to the advertised
    one, and relay only between our own sockets (no relay error in rtpengine's stats)."""
    probe = MediaProbe(engine=f"udp:{engine}")
    me = local_ip_toward(engine.host, engine.port)
    sessions = _Sessions(engine, me, cn)
    ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
    family = socket.AF_INET6 if ":" in me else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for sock in socks:
            sock.bind((me, 0))
        try:
            to_a, to_b = _run_sessions(sessions, probe, ufrag, pwd, socks[1].getsockname()[1],
                                       socks[2].getsockname()[1])
        except (NgError, OSError) as exc:
            probe.error = str(exc)
            return probe
        _read_sessions(sessions, probe, to_a, to_b)
        if probe.bound:
            _send_probes(probe, socks, ufrag, to_a, to_b, timeout)
        return probe
    finally:
        sessions.delete()
        for sock in socks:
            sock.close()


def _run_sessions(s: _Sessions, probe: MediaProbe, ufrag: str, pwd: str, port_a: int,
                  port_b: int) -> tuple[str, str]:
    """Offer and answer each session; the SDPs toward phone and PBX go into probe.
    Returns the relay session's SDPs toward our sockets a and b."""
    me = s.me
    # Outbound: the agent's browser offers (with CN), the PBX answers (with CN).
    probe.to_pbx["outbound offer"] = s.command(
        "offer", s.out_id, _sample_phone_sdp(me, ufrag, pwd), Op.OFFER, Side.PBX, Side.PHONE,
        **{"from-tag": "phone"})
    probe.to_phone["outbound answer"] = s.command(
        "answer", s.out_id, _sample_pbx_sdp(me, port_a), Op.ANSWER, Side.PHONE, Side.PBX,
        **{"from-tag": "phone", "to-tag": "pbx"})
    # Inbound: the PBX offers (with CN) toward the agent.
    probe.to_phone["inbound offer"] = s.command(
        "offer", s.in_id, _sample_pbx_sdp(me, port_a), Op.OFFER, Side.PHONE, Side.PBX,
        **{"from-tag": "pbx"})
    # Plain RTP both ways between our sockets a and b (the gateway's PBX-side flags).
    to_b = s.command("offer", s.relay_id, _plain_sdp(me, port_a), Op.OFFER, Side.PBX, Side.PBX,
                     **{"from-tag": "a"})
    to_a = s.command("answer", s.relay_id, _plain_sdp(me, port_b), Op.ANSWER, Side.PBX, Side.PBX,
                     **{"from-tag": "a", "to-tag": "b"})
    return to_a, to_b


def _read_sessions(s: _Sessions, probe: MediaProbe, to_a: str, to_b: str) -> None:
    """The ports rtpengine gave out, and the address it really listens on."""
    for sdp in (*probe.to_phone.values(), *probe.to_pbx.values(), to_a, to_b):
        port = _sdp_port(sdp)
        if port:
            probe.ports.append(port)
    answer = probe.to_phone["outbound answer"]
    probe.phone_port = _sdp_port(answer)
    try:
        probe.bound = bound_address(s.ng.query(s.out_id))
    except (NgError, OSError):
        pass
    probe.bound = probe.bound or (sdp_addresses(answer) or [""])[0]


def _send_probes(probe: MediaProbe, socks: list[socket.socket], ufrag: str, to_a: str, to_b: str,
                 timeout: float) -> None:
    phone_sock, sock_a, sock_b = socks
    answer = probe.to_phone["outbound answer"]
    # Phone side: an ICE connectivity check, as the browser's first packet.
    r_ufrag = re.search(r"^a=ice-ufrag:(\S+)", answer, re.M)
    r_pwd = re.search(r"^a=ice-pwd:(\S+)", answer, re.M)
    if r_ufrag and r_pwd and probe.phone_port:
        packet, txid = stun_binding(r_ufrag.group(1), ufrag, r_pwd.group(1))
        probe.stun_reply = stun_exchange(phone_sock, (probe.bound, probe.phone_port), packet, txid,
                                         timeout)
    # Relay: b sends to the port rtpengine gave b, a must receive it; and back.
    to_a_port, to_b_port = _sdp_port(to_a) or 0, _sdp_port(to_b) or 0
    probe.relay_ports = (to_a_port, to_b_port)
    probe.relayed["b->a"] = _relay_once(sock_b, sock_a, (probe.bound, to_b_port), timeout)
    probe.relayed["a->b"] = _relay_once(sock_a, sock_b, (probe.bound, to_a_port), timeout)


def _relay_once(src: socket.socket, dst: socket.socket, to: tuple[str, int], timeout: float) -> bool:
    """Send RTP from src to rtpengine at `to`; did dst receive it back from rtpengine?"""
    if not to[1]:
        return False
    ssrc = random.randrange(1, 2**32)
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        rtp = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xff" * 160
        try:
            src.sendto(rtp, to)
            dst.settimeout(0.2)
            data = dst.recv(2048)
        except socket.timeout:
            continue
        except OSError:
            time.sleep(0.05)
            continue
        # rtpengine may rewrite SSRC and sequence (its CN decoder sits on this path):
        # any RTP packet it sends us on that leg proves the relay.
        if len(data) >= 12 and data[0] >> 6 == 2:
            return True
    return False
