"""A PBX that speaks plain RTP the way Asterisk and Genesys media servers do:
PCMU, 20 ms, RTP/AVP, RTCP on its own port, comfort noise (PT 13) during
silences and RFC 4733 telephone-events. Signalling is SIP over UDP (FakePbx's
transport, loopback only): it answers calls from agents, places calls to them
(with an offer, or offerless the way Genesys MakeCall/3PCC does, the answer
then going in the ACK), holds and resumes by re-INVITE, answers re-INVITEs,
and hangs up.

What it sends is a MediaPlan: a tone (continuous or in bursts), CN packets in
the silences between bursts (optionally CN that its SDP never declared), DTMF
digits, RTCP sender/receiver reports every second (support/rtcp.py: what
rtpengine computes loss, jitter and MOS from), and optionally network loss (a
share of its RTP never sent). What it receives is kept per packet (RxLog) for
the tests. DNs in `ring_only` ring until CANCELled (with early media if also
in `early_media`)."""
from __future__ import annotations

import ipaddress
import queue
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from support import rtcp, sipmsg
from support.fakepbx import FakePbx, uri_hostport
from support.rtpaudio import (DTMF_EVENTS, FRAME, PT_CN, PT_PCMU, PTIME, RxLog, TxLog,
                              dtmf_payload, mark_frame, rtp_pack, rtp_parse, tone, ulaw_encode)
from support.sipdialog import Dialog, Sdp, parse_sdp, reverse_direction, sends
from support.sipmsg import Msg

HOST = "127.0.0.1"
TE_PT = 101


@dataclass
class MediaPlan:
    """What the PBX plays toward the agent."""
    freq: float = 440.0
    burst_ms: int | None = None   # None: a continuous tone; else tone bursts this long ...
    silence_ms: int = 0           # ... separated by this much silence
    cn: bool = False              # send CN (PT 13) packets during the silences
    cn_every: int = 1             # one CN packet every N ticks of silence (1: every 20 ms)
    sdp_cn: bool = True           # declare 13 CN/8000 in our SDP (False: send CN never offered)
    dtmf: str = ""                # digits sent as RFC 4733 events ...
    dtmf_at: float = 1.0          # ... starting this many seconds after the media starts
    dtmf_ticks: int = 8           # event length in 20 ms ticks (then 3 end packets)
    dtmf_gap_ticks: int = 5
    # Network loss on the way out: this share of the RTP packets is never sent
    # (sequence numbers still count them, as when a network drops them).
    drop_ratio: float = 0.0
    # RTCP SR/RR every this many seconds (Asterisk: rtcpinterval, 5 s by
    # default, 0.5 s at least); None: no RTCP at all.
    rtcp_interval: float | None = 1.0

    def drops(self, n: int) -> bool:
        """Is the n-th RTP packet (0-based) lost? Spread evenly: exactly
        drop_ratio of any long run, never two losses in a row below 50 %."""
        r = self.drop_ratio
        return r > 0 and int((n + 1) * r) > int(n * r)

    def silence(self, tick: int) -> bool:
        if self.burst_ms is None:
            return False
        period = (self.burst_ms + self.silence_ms) // 20
        return tick % period >= self.burst_ms // 20


def _even_port_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """RTP on an even port and RTCP on the next one, like a real media server."""
    for _ in range(200):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind((host, 0))
        port = rtp.getsockname()[1]
        if port % 2 == 0:
            rtcp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp_sock.bind((host, port + 1))
                return rtp, rtcp_sock
            except OSError:
                rtcp_sock.close()
        rtp.close()
    raise RuntimeError("no free RTP/RTCP port pair")


class RtpEndpoint:
    """Plain RTP media of one call leg: a 20 ms sender thread and a receiver."""

    def __init__(self, plan: MediaPlan, host: str = HOST) -> None:
        self.plan = plan
        self.sock, self.rtcp_sock = _even_port_pair(host)
        self.host, self.port = self.sock.getsockname()
        self.remote: tuple[str, int] | None = None
        self.remote_rtcp: tuple[str, int] | None = None
        self.pt_audio = PT_PCMU
        self.pt_te = TE_PT
        self.sending = False          # decided by SDP direction (hold)
        self.rx = RxLog()
        self.tx = TxLog()
        self.rtcp_rx = 0
        self.rtcp_tx = 0
        self.rtcp_state = rtcp.RtcpState()
        self.rtp_sent = 0             # RTP packets sent, the dropped ones included
        self.rtp_dropped = 0
        self.octets_sent = 0
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.started_at: float | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._dtmf_pending = ""       # digits queued by send_dtmf()
        self._talkspurt = True

    # ------------------------------------------------------------- control
    def start(self) -> None:
        if self._threads:
            return
        self.started_at = time.monotonic()
        targets = [self._send_loop, self._recv_loop, self._rtcp_loop]
        if self.plan.rtcp_interval:
            targets.append(self._rtcp_send_loop)
        for target in targets:
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.sock.close()
        self.rtcp_sock.close()

    def send_dtmf(self, digits: str) -> None:
        """Queue digits now (they replace audio frames, like a phone does)."""
        self._dtmf_pending += digits

    # ------------------------------------------------------------- threads
    def _send_loop(self) -> None:
        tick, sample = 0, 0
        next_t = time.monotonic()
        dtmf_tick = int(self.plan.dtmf_at / PTIME) if self.plan.dtmf else None
        pending = self.plan.dtmf
        event = None      # (code, start_ts, ticks_done)
        gap = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if next_t > now:
                time.sleep(next_t - now)
            next_t += PTIME
            extra = self._dtmf_pending
            if extra:
                pending += extra
                self._dtmf_pending = ""
                dtmf_tick = min(dtmf_tick if dtmf_tick is not None else tick, tick)
            try:
                if event is None and pending and dtmf_tick is not None and tick >= dtmf_tick and gap == 0:
                    event = (DTMF_EVENTS.index(pending[0]), self.ts, 0)
                    pending = pending[1:]
                if event is not None:
                    code, start_ts, done = event
                    end = done + 1 >= self.plan.dtmf_ticks
                    duration = FRAME * (done + 1)
                    repeats = 3 if end else 1
                    for _ in range(repeats):
                        self._send(self.pt_te, dtmf_payload(code, end, duration), marker=(done == 0),
                                   ts=start_ts, audio=False)
                    event = None if end else (code, start_ts, done + 1)
                    if end:
                        gap = self.plan.dtmf_gap_ticks
                elif self.plan.silence(tick):
                    if self.plan.cn and (tick % self.plan.cn_every == 0):
                        # RFC 3389: one byte, the noise level in -dBov
                        self._send(PT_CN, bytes([64]), audio=False)
                    self._talkspurt = True
                else:
                    gap = max(0, gap - 1)
                    pcm = tone(self.plan.freq, sample)
                    self._send(self.pt_audio, ulaw_encode(pcm), marker=self._talkspurt, audio=True)
                    self._talkspurt = False
            except OSError:
                if self._stop.is_set():
                    return
            tick += 1
            sample += FRAME
            self.ts = (self.ts + FRAME) & 0xFFFFFFFF

    def _send(self, pt: int, payload: bytes, *, marker: bool = False, ts: int | None = None,
              audio: bool) -> None:
        if not self.sending or self.remote is None:
            return
        mark = None
        if audio:
            mark = self.tx.next_mark()
            payload = mark_frame(payload, mark)
        lost = self.plan.drops(self.rtp_sent)
        self.rtp_sent += 1
        self.octets_sent += len(payload)
        if lost:
            self.rtp_dropped += 1
        else:
            self.sock.sendto(rtp_pack(pt, self.seq, self.ts if ts is None else ts, self.ssrc, payload,
                                      marker), self.remote)
        self.seq = (self.seq + 1) & 0xFFFF
        self.tx.add(pt, mark)

    def _recv_loop(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            h = rtp_parse(data)
            if h is not None:
                self.rx.add(h)
                self.rtcp_state.rtp(h.ssrc, h.seq, h.ts, time.monotonic())

    def _rtcp_loop(self) -> None:
        self.rtcp_sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self.rtcp_sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.rtcp_rx += 1
            self.rtcp_state.rtcp(data)

    def _rtcp_send_loop(self) -> None:
        """An SR while we send (an RR otherwise), with a report block on what
        we receive, from our RTCP port to the other side's RTCP port."""
        while not self._stop.wait(self.plan.rtcp_interval):
            if self.remote_rtcp is None:
                continue
            blocks = self.rtcp_state.blocks()[-31:]
            if self.sending and self.rtp_sent:
                packet = rtcp.sender_report(self.ssrc, self.ts, self.rtp_sent, self.octets_sent, blocks)
            else:
                packet = rtcp.receiver_report(self.ssrc, blocks)
            try:
                self.rtcp_sock.sendto(packet, self.remote_rtcp)
                self.rtcp_tx += 1
            except OSError:
                if self._stop.is_set():
                    return


@dataclass
class PbxLeg:
    """One call at the PBX: its dialog, SDP state and RTP endpoint."""
    pbx: "RtpPbx"
    call_id: str
    ep: RtpEndpoint
    uas: bool
    dialog: Dialog | None = None
    desire: str = "sendrecv"           # our own direction (sendonly/inactive while we hold)
    remote_sdps: list[Sdp] = field(default_factory=list)   # every SDP the gateway sent us
    local_sdps: list[str] = field(default_factory=list)
    sdp_version: int = 1
    acked: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    ended_by: str = ""
    ended_at: float | None = None
    status: int = 0
    session_id: int = field(default_factory=lambda: random.randrange(10**6, 10**9))

    @property
    def te_pt(self) -> int | None:
        return self.remote_sdps[-1].pt_of("telephone-event") if self.remote_sdps else None

    # ------------------------------------------------------------------ SDP
    def _sdp(self, pts: list[int], direction: str) -> str:
        names = {0: "PCMU/8000", 8: "PCMA/8000", 13: "CN/8000"}
        lines = ["v=0", f"o=pbx {self.session_id} {self.sdp_version} IN IP4 {self.ep.host}",
                 "s=pbx", f"c=IN IP4 {self.ep.host}", "t=0 0",
                 f"m=audio {self.ep.port} RTP/AVP " + " ".join(map(str, pts))]
        for pt in pts:
            if pt in names:
                lines.append(f"a=rtpmap:{pt} {names[pt]}")
            else:
                lines += [f"a=rtpmap:{pt} telephone-event/8000", f"a=fmtp:{pt} 0-16"]
        lines += ["a=ptime:20", "a=maxptime:150", f"a={direction}"]
        self.sdp_version += 1
        text = "\r\n".join(lines) + "\r\n"
        self.local_sdps.append(text)
        return text

    def offer(self) -> str:
        pts = [0, 8] + ([13] if self.ep.plan.sdp_cn else []) + [TE_PT]
        return self._sdp(pts, self.desire)

    def answer(self, offer: Sdp) -> str:
        self.take_remote(offer)
        pts = [0]
        if self.ep.plan.sdp_cn and offer.pt_of("CN") is not None:
            pts.append(offer.pt_of("CN"))
        te = offer.pt_of("telephone-event")
        if te is not None:
            pts.append(te)
        direction = _intersect(self.desire, reverse_direction(offer.direction))
        self.ep.sending = sends(direction)
        return self._sdp(pts, direction)

    def take_remote(self, sdp: Sdp) -> None:
        self.remote_sdps.append(sdp)
        if sdp.addr and sdp.port:
            ipaddress.ip_address(sdp.addr)   # loopback addresses only, never a name
            self.ep.remote = (sdp.addr, sdp.port)
            found = re.search(r"^a=rtcp:(\d+)", sdp.text, re.M)
            self.ep.remote_rtcp = (sdp.addr, int(found.group(1)) if found else sdp.port + 1)
        te = sdp.pt_of("telephone-event")
        if te is not None:
            self.ep.pt_te = te

    def take_answer(self, answer: Sdp, offered_direction: str) -> None:
        self.take_remote(answer)
        self.ep.sending = sends(_intersect(offered_direction, reverse_direction(answer.direction)))

    # ------------------------------------------------------------- requests
    def _via(self) -> str:
        return f"SIP/2.0/UDP {self.pbx.host}:{self.pbx.port};branch={sipmsg.new_branch()};rport"

    def _next_hop(self) -> tuple[str, int]:
        host, port = uri_hostport(self.dialog.next_hop_uri())
        ipaddress.ip_address(host)
        return host, port

    def _transact(self, method: str, body: str = "", timeout: float = 5.0) -> Msg | None:
        text = self.dialog.request(method, self._via(), body)
        num = self.dialog.cseq
        waiter = self.pbx._expect(self.call_id, num, method)
        self.pbx.send(text, self._next_hop())
        return self.pbx._final(waiter, timeout)

    def reinvite(self, direction: str, timeout: float = 5.0) -> int:
        """Hold (sendonly/inactive) or resume (sendrecv) by re-INVITE with an offer."""
        self.desire = direction
        offer = self.offer()
        text = self.dialog.request("INVITE", self._via(), offer)
        num = self.dialog.cseq
        self.dialog.invite_cseq = num
        waiter = self.pbx._expect(self.call_id, num, "INVITE")
        self.pbx.send(text, self._next_hop())
        final = self.pbx._final(waiter, timeout)
        if final is None:
            return 0
        if 200 <= final.status < 300:
            if final.body:
                self.take_answer(parse_sdp(final.body), direction)
            self.pbx.send(self.dialog.ack(self._via()), self._next_hop())
        return final.status

    def bye(self, timeout: float = 5.0) -> int:
        final = self._transact("BYE", timeout=timeout)
        self.end("pbx")
        return final.status if final is not None else 0

    def end(self, by: str) -> None:
        if not self.ended.is_set():
            self.ended_by = by
            self.ended_at = time.monotonic()
            self.ep.sending = False
            self.ended.set()


def _intersect(ours: str, allowed: str) -> str:
    send = sends(ours) and sends(allowed)
    recv = ours in ("sendrecv", "recvonly") and allowed in ("sendrecv", "recvonly")
    return {(True, True): "sendrecv", (True, False): "sendonly",
            (False, True): "recvonly", (False, False): "inactive"}[(send, recv)]


class RtpPbx(FakePbx):
    """SIP over UDP (FakePbx's socket and transactions) + plain RTP per call."""

    def __init__(self, host: str, port: int, plan: MediaPlan | None = None) -> None:
        self.plan = plan or MediaPlan()
        self.plans: dict[str, MediaPlan] = {}     # per To user (DN dialled by the phone)
        self.legs: dict[str, PbxLeg] = {}
        self.incoming: "queue.Queue[PbxLeg]" = queue.Queue()
        self.ring_only: set[str] = set()          # DNs that ring and never answer ...
        self.early_media: set[str] = set()        # ... playing early media (183) meanwhile
        self.ringing: dict[str, tuple[Msg, tuple[str, int], str]] = {}
        super().__init__(host, port)

    def _new_leg(self, call_id: str, plan: MediaPlan, uas: bool) -> PbxLeg:
        leg = PbxLeg(self, call_id, RtpEndpoint(plan), uas)
        with self._lock:
            self.legs[call_id] = leg
        return leg

    # ------------------------------------------------------------------ UAS
    def _on_request(self, msg: Msg, addr: tuple[str, int]) -> None:
        method = msg.method
        leg = self.legs.get(msg.call_id)
        if method == "INVITE" and not msg.tag("To"):
            with self._lock:
                self.seen.append(msg)
            self.send(sipmsg.response(msg, 100, "Trying"), addr)
            user = msg.ruri.split(":", 1)[1].split("@", 1)[0]
            if user in self.ring_only:
                # rings until the caller gives up (CANCEL -> 487); with early
                # media, 183 with an answer and a prompt playing meanwhile
                tag = sipmsg.new_tag()
                with self._lock:
                    self.ringing[msg.call_id] = (msg, addr, tag)
                if user in self.early_media and msg.body:
                    leg = self._new_leg(msg.call_id, self.plans.get(user, self.plan), uas=True)
                    leg.dialog = Dialog.as_uas(msg, tag)
                    self.send(sipmsg.response(msg, 183, "Session Progress", to_tag=tag,
                                              extra=[self._contact()], body=leg.answer(parse_sdp(msg.body)),
                                              record_route=True), addr)
                    leg.ep.start()
                else:
                    self.send(sipmsg.response(msg, 180, "Ringing", to_tag=tag, extra=[self._contact()],
                                              record_route=True), addr)
                return
            leg = self._new_leg(msg.call_id, self.plans.get(user, self.plan), uas=True)
            tag = sipmsg.new_tag()
            leg.dialog = Dialog.as_uas(msg, tag)
            body = leg.answer(parse_sdp(msg.body)) if msg.body else leg.offer()
            leg.status = 200
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag, extra=[self._contact()], body=body,
                                      record_route=True), addr)
            leg.ep.start()
            self.incoming.put(leg)
            return
        if leg is not None and method == "INVITE":
            with self._lock:
                self.seen.append(msg)
            leg.dialog.target = msg.uri("Contact") or leg.dialog.target
            body = leg.answer(parse_sdp(msg.body)) if msg.body else leg.offer()
            self.send(sipmsg.response(msg, 200, "OK", to_tag=msg.tag("To"), extra=[self._contact()],
                                      body=body, record_route=True), addr)
            return
        if leg is not None and method == "ACK":
            with self._lock:
                self.seen.append(msg)
            if msg.body and leg.uas:
                leg.take_answer(parse_sdp(msg.body), leg.desire)
            leg.acked.set()
            return
        if method == "CANCEL" and msg.call_id in self.ringing:
            with self._lock:
                self.seen.append(msg)
                invite, invite_addr, tag = self.ringing.pop(msg.call_id)
            self.send(sipmsg.response(msg, 200, "OK", to_tag=tag), addr)
            self.send(sipmsg.response(invite, 487, "Request Terminated", to_tag=tag), invite_addr)
            if leg is not None:
                leg.end("cancel")
            return
        if leg is not None and method == "BYE":
            with self._lock:
                self.seen.append(msg)
            self.byes.add(msg.call_id)
            self.send(sipmsg.response(msg, 200, "OK", to_tag=msg.tag("To")), addr)
            leg.end("phone")
            return
        super()._on_request(msg, addr)

    def _contact(self) -> tuple[str, str]:
        return ("Contact", f"<sip:pbx@{self.host}:{self.port}>")

    # ------------------------------------------------------------------ UAC
    def dial(self, gateway: tuple[str, int], dn: str, *, plan: MediaPlan | None = None,
             offer: bool = True, timeout: float = 10.0) -> PbxLeg:
        """INVITE sip:<dn>@gateway, with an SDP offer or offerless (3PCC: the
        offer comes in the 200 OK, our answer goes in the ACK)."""
        host, port = gateway
        call_id = f"pbx-{sipmsg.new_tag()}"
        leg = self._new_leg(call_id, plan or self.plan, uas=False)
        ruri = f"sip:{dn}@{host}:{port}"
        headers = [("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={sipmsg.new_branch()};rport"),
                   ("Max-Forwards", "70"), ("From", f"<sip:pbx@{self.host}>;tag={sipmsg.new_tag()}"),
                   ("To", f"<sip:{dn}@{host}:{port}>"), ("Call-ID", call_id), ("CSeq", "1 INVITE"),
                   self._contact(), ("User-Agent", "rtp-pbx (Asterisk-like)")]
        body = leg.offer() if offer else ""
        text = sipmsg.request("INVITE", ruri, headers, body)
        invite = sipmsg.parse(text)
        waiter = self._expect(call_id, 1, "INVITE")
        self.send(text, gateway)
        final = self._final(waiter, timeout)
        leg.status = final.status if final is not None else 0
        if final is None or not 200 <= final.status < 300:
            if final is not None:
                ack = [("Via", invite.get("Via") or ""), ("Max-Forwards", "70"),
                       ("From", invite.get("From") or ""), ("To", final.get("To") or ""),
                       ("Call-ID", call_id), ("CSeq", "1 ACK")]
                self.send(sipmsg.request("ACK", ruri, ack), gateway)
            leg.ep.stop()
            return leg
        leg.dialog = Dialog.as_uac(invite, final)
        ack_body = ""
        if offer:
            leg.take_answer(parse_sdp(final.body), leg.desire)
        else:
            ack_body = leg.answer(parse_sdp(final.body))
        self.send(leg.dialog.ack(leg._via(), ack_body), leg._next_hop())
        leg.acked.set()
        leg.ep.start()
        return leg

    def next_incoming(self, timeout: float = 10.0) -> PbxLeg | None:
        try:
            return self.incoming.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        for leg in list(self.legs.values()):
            leg.ep.stop()
        super().close()
