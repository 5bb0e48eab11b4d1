"""A real WebRTC phone for the media tests: SIP over the gateway's WebSocket
the way JsSIP does it (Via WSS *.invalid, Contact *.invalid;transport=ws),
and media through aiortc: real ICE (aioice) and DTLS-SRTP against rtpengine,
PCMU 20 ms. SDP is what aiortc produces, with what a browser adds to it:
CN 13 and telephone-event in its offers (as Chrome offers them) and
telephone-event in its answers when offered.

It sends a tone through aiortc's own sender and encoder, records every RTP
packet it receives after SRTP decryption (payload type, sequence, timestamp,
payload) and every DTLS/ICE state change, and notices a DTLS close alert.
Like a browser, it stops sending while its negotiated direction is recvonly or
inactive (aiortc alone would keep sending), and it sends DTMF the way browsers
do: RFC 4733 events on the audio SSRC in place of audio frames.

aioice never gathers 127.0.0.1, so the phone's ICE host candidate is another
loopback address (127.0.0.2 by default). ICE servers are empty: no STUN, no
traffic off the machine. Everything runs on one asyncio loop (LoopThread)."""
from __future__ import annotations

import asyncio
import fractions
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamTrack
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from support import sipmsg
from support.rtpaudio import (DTMF_EVENTS, FRAME, PT_PCMU, RATE, RxLog, TxLog, dtmf_payload,
                              mark_frame,
                              rtp_pack, rtp_parse, tone)
from support.sipdialog import Dialog, Sdp, parse_sdp, sends
from support.sipmsg import Msg

PHONE_IP = "127.0.0.2"
TE_PT = 101

logging.getLogger("aioice").setLevel(logging.ERROR)


def use_host_address(addr: str = PHONE_IP) -> None:
    """aioice skips 127.0.0.1 when it gathers host candidates: give it one
    other loopback address, and nothing else (no real interface)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [addr] if use_ipv4 else []


class LoopThread:
    """An asyncio loop in a thread, for sync tests driving async phones."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class ToneTrack(MediaStreamTrack):
    """A sine tone, 8 kHz mono s16, 20 ms frames paced in real time."""
    kind = "audio"

    def __init__(self, freq: float, amplitude: float = 8000.0) -> None:
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self._start: float | None = None
        self._sample = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            from aiortc.mediastreams import MediaStreamError
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._sample += FRAME
            wait = self._start + self._sample / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = tone(self.freq, self._sample, FRAME, self.amplitude)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sample
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


# ------------------------------------------------------------------ SDP munging
def _add_codecs(sdp: str, extra: list[tuple[int, str, str | None]]) -> str:
    """Append payload types to the audio m-line with their rtpmap/fmtp lines."""
    lines = sdp.replace("\r\n", "\n").rstrip("\n").split("\n")
    have = set()
    for i, line in enumerate(lines):
        if line.startswith("m=audio "):
            have = set(line.split()[3:])
            add = [str(pt) for pt, _, _ in extra if str(pt) not in have]
            lines[i] = line + ("" if not add else " " + " ".join(add))
    last_map = max(i for i, line in enumerate(lines) if line.startswith("a=rtpmap:"))
    new = []
    for pt, enc, fmtp in extra:
        if str(pt) in have:
            continue
        new.append(f"a=rtpmap:{pt} {enc}")
        if fmtp:
            new.append(f"a=fmtp:{pt} {fmtp}")
    lines[last_map + 1:last_map + 1] = new
    return "\r\n".join(lines) + "\r\n"


def _chrome_ice(sdp: str, mdns: bool) -> str:
    """Chrome always says a=ice-options:trickle. With mdns, it also hides its
    host address behind an mDNS name, and since no STUN/TURN candidate gives a
    default address, the m-line says port 9 and c=IN IP4 0.0.0.0; rtpengine
    finds the phone by its connectivity checks (peer-reflexive)."""
    if "a=ice-options:" not in sdp:
        sdp = re.sub(r"^(a=ice-pwd:\S+)\r?$", "\\1\r\na=ice-options:trickle\r", sdp, count=1, flags=re.M)
    if mdns:
        name = f"{uuid.uuid4()}.local"
        sdp = re.sub(r"^c=IN IP4 \S+", "c=IN IP4 0.0.0.0", sdp, flags=re.M)
        sdp = re.sub(r"^(m=audio )\d+", r"\g<1>9", sdp, flags=re.M)
        sdp = re.sub(r"^(a=candidate:\S+ \d+ udp \d+ )\S+", rf"\g<1>{name}", sdp, flags=re.M | re.I)
    return sdp


def browser_offer(sdp: str, cn: bool = True, mdns: bool = False) -> str:
    """What Chrome adds to an audio offer: CN 13 and telephone-event/8000."""
    extra = ([(13, "CN/8000", None)] if cn else []) + [(TE_PT, "telephone-event/8000", "0-16")]
    sdp = _add_codecs(sdp, extra)
    return _chrome_ice(sdp, mdns)


def browser_answer(sdp: str, offer: Sdp, mdns: bool = False) -> str:
    """A browser answers telephone-event (and CN, if offered) at the offered PTs."""
    extra = []
    te = offer.pt_of("telephone-event")
    if te is not None:
        extra.append((te, "telephone-event/8000", "0-16"))
    cn = offer.pt_of("CN")
    if cn is not None:
        extra.append((cn, "CN/8000", None))
    sdp = _add_codecs(sdp, extra) if extra else sdp
    return _chrome_ice(sdp, mdns)


# ------------------------------------------------------------------ media
@dataclass
class PhoneMedia:
    """One call's media at the phone: aiortc plus the hooks that record it."""
    pc: RTCPeerConnection
    transceiver: Any
    freq: float
    rx: RxLog = field(default_factory=RxLog)
    tx: TxLog = field(default_factory=TxLog)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    close_alerts: int = 0
    srtp_errors: int = 0
    send_enabled: bool = True
    te_pt: int | None = None
    connected_at: float | None = None
    _dtmf: list[int] = field(default_factory=list)        # event codes still to send
    _dtmf_state: dict | None = None
    _dtmf_gap: int = 0
    dtmf_sent: str = ""
    _blackhole: Any = None
    _pinger: Any = None

    @classmethod
    def create(cls, freq: float) -> "PhoneMedia":
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = pc.addTransceiver(ToneTrack(freq), direction="sendrecv")
        caps = RTCRtpSender.getCapabilities("audio")
        transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType == "audio/PCMU"])
        media = cls(pc, transceiver, freq)
        media._hook()
        return media

    def _event(self, kind: str, state: str) -> None:
        self.events.append((time.monotonic(), kind, state))
        if kind == "dtls" and state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()

    def _hook(self) -> None:
        pc, dtls = self.pc, self.transceiver.sender.transport
        ice = dtls.transport
        pc.on("connectionstatechange", lambda: self._event("pc", pc.connectionState))
        pc.on("iceconnectionstatechange", lambda: self._event("ice", pc.iceConnectionState))
        dtls.on("statechange", lambda: self._event("dtls", dtls.state))
        ice.on("statechange", lambda: self._event("icetransport", ice.state))
        self._pinger = asyncio.ensure_future(self._ping_until_nominated(ice))

        @pc.on("track")
        def on_track(track):
            # aiortc decodes what it receives; drain it as a browser would play it
            self._blackhole = MediaBlackhole()
            self._blackhole.addTrack(track)
            asyncio.ensure_future(self._blackhole.start())

        original_handle = dtls._handle_rtp_data
        original_send = dtls._send_rtp
        original_log = dtls._RTCDtlsTransport__log_debug

        async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            h = rtp_parse(data)        # already SRTP-decrypted here
            if h is not None:
                self.rx.add(h)
            await original_handle(data, arrival_time_ms)

        async def send_rtp(data: bytes) -> None:
            if len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95:
                await original_send(data)      # RTCP (rtcp-mux)
                return
            h = rtp_parse(data)
            if h is None:
                return
            if not self.send_enabled:
                return                         # on hold: a browser sends nothing
            out = self._maybe_dtmf(h)
            mark = None
            if out is not None:
                data = out
            elif h.pt == PT_PCMU and h.payload and data.endswith(h.payload):
                mark = self.tx.next_mark()
                data = data[:len(data) - len(h.payload)] + mark_frame(h.payload, mark)
            self.tx.add(data[1] & 0x7F, mark)
            await original_send(data)

        def log_debug(msg: str, *args: object) -> None:
            if "shutdown by remote party" in msg:
                self.close_alerts += 1
                self._event("dtls", "close-alert")
            elif "SRTP unprotect failed" in msg:
                self.srtp_errors += 1
            original_log(msg, *args)

        dtls._handle_rtp_data = handle_rtp_data
        dtls._send_rtp = send_rtp
        dtls._RTCDtlsTransport__log_debug = log_debug

    async def _ping_until_nominated(self, ice) -> None:
        """Like a browser, keep checking a working candidate pair until the
        controlling side (rtpengine) nominates one. aioice alone checks each
        pair once: if that check reached rtpengine before the phone's SDP did
        (the phone starts ICE before its 200 OK reaches the gateway) and
        rtpengine can reach the phone only by what it learns from checks
        (mDNS candidates), nobody would ever check again."""
        conn = ice._connection
        from aioice.ice import CandidatePair
        try:
            while ice.state in ("new", "checking"):
                await asyncio.sleep(0.5)
                if ice.state != "checking" or conn.remote_password is None:
                    continue
                for pair in list(conn._check_list):
                    if pair.state == CandidatePair.State.SUCCEEDED and not pair.nominated:
                        request = conn.build_request(pair, nominate=False)
                        asyncio.ensure_future(pair.protocol.request(
                            request, pair.remote_addr, integrity_key=conn.remote_password.encode()))
        except Exception:
            pass

    # DTMF the way a browser sends it: events replace audio frames on the same
    # SSRC and sequence; 8 updates (160 ms), then the end packet three times.
    def _maybe_dtmf(self, h) -> bytes | None:
        if self._dtmf_state is None:
            if self._dtmf_gap > 0:
                self._dtmf_gap -= 1
                return None
            if not self._dtmf or self.te_pt is None:
                return None
            self._dtmf_state = {"code": self._dtmf.pop(0), "ts": h.ts, "n": 0, "duration": 0}
        st = self._dtmf_state
        st["n"] += 1
        end = st["n"] > 8
        if not end:
            st["duration"] = (h.ts - st["ts"] + FRAME) & 0xFFFF
        payload = dtmf_payload(st["code"], end, st["duration"])
        pkt = rtp_pack(self.te_pt, h.seq, st["ts"], h.ssrc, payload, marker=(st["n"] == 1))
        if st["n"] >= 11:
            self._dtmf_state = None
            self._dtmf_gap = 5
        return pkt

    def queue_dtmf(self, digits: str) -> None:
        self._dtmf += [DTMF_EVENTS.index(d) for d in digits]
        self.dtmf_sent += digits

    def dtmf_done(self) -> bool:
        return not self._dtmf and self._dtmf_state is None

    @property
    def direction(self) -> str:
        return self.transceiver.currentDirection or "sendrecv"

    def apply_direction(self) -> None:
        self.send_enabled = sends(self.direction)

    def dtls_state(self) -> str:
        return self.transceiver.sender.transport.state

    def failures_before(self, t: float) -> list[tuple[float, str, str]]:
        """DTLS closed/failed, close alerts and ICE failures before time t."""
        bad = {"failed", "closed", "close-alert", "disconnected"}
        return [e for e in self.events if e[0] < t and e[2] in bad]

    async def close(self) -> None:
        self._pinger.cancel()
        if self._blackhole is not None:
            await self._blackhole.stop()
        await self.pc.close()


# ------------------------------------------------------------------ SIP
@dataclass
class PhoneCall:
    phone: "WebRtcPhone"
    call_id: str
    media: PhoneMedia
    dialog: Dialog | None = None
    outgoing: bool = True
    status: int = 0
    offerless: bool = False
    sdps_in: list[Sdp] = field(default_factory=list)      # every SDP the gateway sent the phone
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ended_by: str = ""
    ended_at: float | None = None

    def take_remote_sdp(self, text: str) -> Sdp:
        sdp = parse_sdp(text)
        self.sdps_in.append(sdp)
        te = sdp.pt_of("telephone-event")
        self.media.te_pt = te
        return sdp

    async def _reoffer(self, direction: str) -> int:
        t = self.media.transceiver
        t.direction = direction
        offer = await self.media.pc.createOffer()
        await self.media.pc.setLocalDescription(offer)
        body = self.phone.offer_sdp(self.media.pc.localDescription.sdp)
        text = self.dialog.request("INVITE", self.phone.via(), body, extra=[("Contact", self.phone.contact)])
        self.dialog.invite_cseq = self.dialog.cseq
        final = await self.phone.transact(text)
        if final is None:
            return 0
        if 200 <= final.status < 300:
            self.take_remote_sdp(final.body)
            await self.media.pc.setRemoteDescription(RTCSessionDescription(final.body, "answer"))
            self.media.apply_direction()
            await self.phone.send(self.dialog.ack(self.phone.via()))
        return final.status

    async def hold(self) -> int:
        """JsSIP hold: re-INVITE with a=sendonly."""
        return await self._reoffer("sendonly")

    async def resume(self) -> int:
        return await self._reoffer("sendrecv")

    def send_dtmf(self, digits: str) -> None:
        self.media.queue_dtmf(digits)

    async def bye(self) -> int:
        self.ended_by, self.ended_at = "phone", time.monotonic()
        text = self.dialog.request("BYE", self.phone.via())
        final = await self.phone.transact(text)
        self.ended.set()
        self.media.send_enabled = False
        return final.status if final is not None else 0


class WebRtcPhone:
    def __init__(self, ws_url: str, user: str, *, domain: str = "pbx.test", host: str = PHONE_IP,
                 freq: float = 1000.0, offer_cn: bool = True, mdns: bool = False) -> None:
        use_host_address(host)
        self.ws_url = ws_url
        self.user = user
        self.domain = domain
        self.host = host
        self.freq = freq
        self.offer_cn = offer_cn
        self.mdns = mdns
        self.host_token = uuid.uuid4().hex[:10] + ".invalid"
        self.contact = f"<sip:{uuid.uuid4().hex[:8]}@{self.host_token};transport=ws>"
        self.instance = f"<urn:uuid:{uuid.uuid4()}>"
        self.ws = None
        self.calls: dict[str, PhoneCall] = {}
        self.incoming: asyncio.Queue = asyncio.Queue()
        self._waiters: dict[tuple[str, int, str], asyncio.Queue] = {}
        self._reader: asyncio.Task | None = None
        self.errors: list[str] = []

    def offer_sdp(self, sdp: str) -> str:
        return browser_offer(sdp, self.offer_cn, self.mdns)

    # ------------------------------------------------------------ plumbing
    def via(self) -> str:
        return f"SIP/2.0/WSS {self.host_token};branch={sipmsg.new_branch()}"

    async def connect(self) -> "WebRtcPhone":
        self.ws = await ws_connect(self.ws_url, subprotocols=["sip"], local_addr=(self.host, 0),
                                   open_timeout=5, close_timeout=1)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                msg = sipmsg.parse(data)
                if msg.is_request:
                    asyncio.ensure_future(self._guard(self._on_request(msg)))
                else:
                    q = self._waiters.get((msg.call_id, *msg.cseq))
                    if q is not None:
                        q.put_nowait(msg)
        except ConnectionClosed:
            pass

    async def _guard(self, coro) -> None:
        try:
            await coro
        except Exception as exc:  # recorded, and the test fails on it
            self.errors.append(repr(exc))
            logging.getLogger(__name__).exception("phone request handling failed")

    async def transact(self, text: str, timeout: float = 10.0) -> Msg | None:
        msg = sipmsg.parse(text)
        key = (msg.call_id, *msg.cseq)
        q: asyncio.Queue = asyncio.Queue()
        self._waiters[key] = q
        await self.send(text)
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    got = await asyncio.wait_for(q.get(), left)
                except asyncio.TimeoutError:
                    return None
                if got.status >= 200:
                    return got
        finally:
            self._waiters.pop(key, None)

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await call.media.close()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=2)

    # ------------------------------------------------------------ requests
    async def register(self, expires: int = 600) -> int:
        aor = f"<sip:{self.user}@{self.domain}>"
        headers = [("Via", self.via()), ("Max-Forwards", "69"), ("To", aor),
                   ("From", f"{aor};tag={sipmsg.new_tag()}"), ("Call-ID", uuid.uuid4().hex),
                   ("CSeq", "1 REGISTER"),
                   ("Contact", f'{self.contact};+sip.ice;reg-id=1;+sip.instance="{self.instance}";'
                               f"expires={expires}"),
                   ("Expires", str(expires)), ("Supported", "path,gruu,outbound"),
                   ("User-Agent", "aiortc WebRTC test phone (JsSIP-like)")]
        final = await self.transact(sipmsg.request("REGISTER", f"sip:{self.domain}", headers))
        return final.status if final is not None else 0

    async def call(self, dn: str, call_id: str | None = None) -> PhoneCall:
        """INVITE sip:<dn>@domain with aiortc's offer (plus CN and telephone-event)."""
        call_id = call_id or uuid.uuid4().hex
        media = PhoneMedia.create(self.freq)
        call = PhoneCall(self, call_id, media, outgoing=True)
        self.calls[call_id] = call
        await media.pc.setLocalDescription(await media.pc.createOffer())
        body = self.offer_sdp(media.pc.localDescription.sdp)
        ruri = f"sip:{dn}@{self.domain}"
        headers = [("Via", self.via()), ("Max-Forwards", "69"), ("To", f"<{ruri}>"),
                   ("From", f"<sip:{self.user}@{self.domain}>;tag={sipmsg.new_tag()}"),
                   ("Call-ID", call_id), ("CSeq", "1 INVITE"), ("Contact", self.contact),
                   ("User-Agent", "aiortc WebRTC test phone (JsSIP-like)")]
        text = sipmsg.request("INVITE", ruri, headers, body)
        invite = sipmsg.parse(text)
        final = await self.transact(text, timeout=15)
        call.status = final.status if final is not None else 0
        if final is None:
            return call
        if 200 <= final.status < 300:
            call.dialog = Dialog.as_uac(invite, final)
            call.take_remote_sdp(final.body)
            await media.pc.setRemoteDescription(RTCSessionDescription(final.body, "answer"))
            media.apply_direction()
            await self.send(call.dialog.ack(self.via()))
            call.acked.set()
        else:
            ack = [("Via", invite.get("Via") or ""), ("Max-Forwards", "69"),
                   ("To", final.get("To") or ""), ("From", invite.get("From") or ""),
                   ("Call-ID", call_id), ("CSeq", "1 ACK")]
            await self.send(sipmsg.request("ACK", ruri, ack))
        return call

    async def next_incoming(self, timeout: float = 10.0) -> PhoneCall | None:
        try:
            return await asyncio.wait_for(self.incoming.get(), timeout)
        except asyncio.TimeoutError:
            return None

    # ------------------------------------------------------------------ UAS
    async def _on_request(self, msg: Msg) -> None:
        method = msg.method
        call = self.calls.get(msg.call_id)
        if method == "INVITE" and not msg.tag("To"):
            await self._incoming_invite(msg)
        elif method == "INVITE" and call is not None:
            await self._reinvite(call, msg)
        elif method == "ACK" and call is not None:
            if msg.body and call.offerless and not call.acked.is_set():
                call.take_remote_sdp(msg.body)
                await call.media.pc.setRemoteDescription(RTCSessionDescription(msg.body, "answer"))
                call.media.apply_direction()
            call.acked.set()
        elif method == "BYE":
            await self.send(sipmsg.response(msg, 200, "OK", to_tag=msg.tag("To")))
            if call is not None:
                call.ended_by, call.ended_at = "pbx", time.monotonic()
                call.media.send_enabled = False
                call.ended.set()
        elif method != "ACK":
            await self.send(sipmsg.response(msg, 200, "OK", to_tag=msg.tag("To")))

    async def _incoming_invite(self, msg: Msg) -> None:
        tag = sipmsg.new_tag()
        media = PhoneMedia.create(self.freq)
        call = PhoneCall(self, msg.call_id, media, outgoing=False, offerless=not msg.body)
        call.dialog = Dialog.as_uas(msg, tag)
        self.calls[msg.call_id] = call
        contact = [("Contact", self.contact)]
        await self.send(sipmsg.response(msg, 180, "Ringing", to_tag=tag, extra=contact, record_route=True))
        pc = media.pc
        if msg.body:
            offer = call.take_remote_sdp(msg.body)
            await pc.setRemoteDescription(RTCSessionDescription(msg.body, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            body = browser_answer(pc.localDescription.sdp, offer, self.mdns)
            media.apply_direction()
        else:
            # 3PCC / MakeCall: the offer goes in our 200 OK, the answer comes in the ACK
            await pc.setLocalDescription(await pc.createOffer())
            body = self.offer_sdp(pc.localDescription.sdp)
        call.status = 200
        await self.send(sipmsg.response(msg, 200, "OK", to_tag=tag, extra=contact, body=body,
                                        record_route=True))
        self.incoming.put_nowait(call)

    async def _reinvite(self, call: PhoneCall, msg: Msg) -> None:
        pc = call.media.pc
        if msg.body:
            offer = call.take_remote_sdp(msg.body)
            await pc.setRemoteDescription(RTCSessionDescription(msg.body, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            body = browser_answer(pc.localDescription.sdp, offer, self.mdns)
            call.media.apply_direction()
        else:
            await pc.setLocalDescription(await pc.createOffer())
            body = self.offer_sdp(pc.localDescription.sdp)
        call.dialog.target = msg.uri("Contact") or call.dialog.target
        await self.send(sipmsg.response(msg, 200, "OK", to_tag=msg.tag("To"),
                                        extra=[("Contact", self.contact)], body=body, record_route=True))
