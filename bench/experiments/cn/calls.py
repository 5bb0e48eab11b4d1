"""The flag variants and call shapes, one call's signalling through rtpengine, and the
media both ends play (per 20 ms tick)."""
from __future__ import annotations

import dataclasses
import random
import re
import selectors
import time
from typing import Optional

from bench.experiments.cn.engine import RtpEngine
from bench.experiments.cn.wire import (Endpoint, Sdp, inject_cn, parse_sdp, pbx_answer_sdp, pbx_offer_sdp,
                                       phone_answer_sdp, phone_offer_sdp)
from kemi import media


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


_STRIP = "codec-strip=CN"
_CONSUME = "codec-consume-CN"
_CN_TRANSCODE = "codec-strip=CN codec-transcode=CN"
_FULL = ("codec-strip=full codec-except=opus codec-except=G722 codec-except=PCMU "
         "codec-except=PCMA codec-except=telephone-event codec-transcode=CN")
_FULL_G711 = ("codec-strip=full codec-except=PCMU codec-except=PCMA "
              "codec-except=telephone-event/8000 codec-transcode=CN")

# (name, offer to PBX, answer to phone, offer to phone, answer to PBX, note)
VARIANTS = [Variant(*row) for row in [
    ("none", "", "", "", "", "no codec flags: CN negotiated end to end"),
    ("strip", _STRIP, _STRIP, _STRIP, _STRIP, "strip CN everywhere (SDP only)"),
    ("strip+always-transcode", f"{_STRIP} always-transcode", _STRIP, f"{_STRIP} always-transcode", _STRIP,
     "strip + force the transcoding engine"),
    ("mask", "codec-mask=CN", "", "codec-mask=CN", "",
     "mask CN (hidden from the other side, kept on the offerer side)"),
    ("cn-transcode", _CN_TRANSCODE, "", _CONSUME, "",
     "A: offer CN to PBX as a transcoded codec; B: consume PBX CN"),
    ("cn-transcode+answer-strip", _CN_TRANSCODE, _STRIP, _CONSUME, _STRIP,
     "same, plus codec-strip=CN in the answers"),
    ("full+transcode", _FULL, "", _CONSUME, "",
     "A: strip=full (no re-add on the phone side) + fresh transcoded CN to PBX"),
    ("full-g711+transcode", _FULL_G711, "", _CONSUME, "",
     "like full+transcode, but offer only G.711 + telephone-event/8000 to the PBX"),
    ("full-g711+transcode+answer-strip", _FULL_G711, _STRIP, _CONSUME, _STRIP,
     "winning flags + codec-strip=CN in answers: A still blocked, but CN dropped, not noise"),
    ("mask+transcode", "codec-mask=CN codec-transcode=CN", "", "codec-mask=CN codec-accept-CN", "",
     "A: mask phone CN + transcoded CN to PBX; B: mask+accept"),
]]

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
    msg.update(media.ng_params(media.Flags(tuple(flags.split()))))
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
