"""Calls whose phone leg is a real aiortc peer (ICE + DTLS-SRTP)."""
from __future__ import annotations

import asyncio
import random
from collections import Counter

from bench.experiments.cn.calls import BASE_FLAGS, TICKS, Variant, _ng_op, pbx_action
from bench.experiments.cn.engine import RtpEngine
from bench.experiments.cn.report import _cn_in
from bench.experiments.cn.wire import Endpoint, parse_sdp, pbx_answer_sdp, pbx_offer_sdp


async def _dtls_call(rtpe: RtpEngine, shape: str, variant: Variant, seconds: float = 3.0) -> dict:
    """One call whose phone leg is a real aiortc peer (ICE + DTLS-SRTP); counts decrypted PTs."""
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection
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
    call_id = f"dtls-{shape}-{variant.name}-{random.getrandbits(32):08x}"
    errors = []
    to_phone = None

    def ng(command, from_tag, to_tag, sdp, flags):
        r = _ng_op(rtpe, command, call_id, from_tag, to_tag, sdp, flags)
        if r.get("result") != "ok":
            raise RuntimeError(f"{command}: {r.get('error-reason')}")
        return r["sdp"]

    try:
        to_phone, pbx_sdp = await _signal(pc, ng, shape, variant, pbx)
        for _ in range(100):
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        else:
            errors.append(f"phone leg not connected ({pc.connectionState})")
        await _play(pbx, pbx_sdp, seconds)
    except RuntimeError as exc:
        errors.append(str(exc))
    finally:
        RTCDtlsTransport._handle_rtp_data = original
        await pc.close()
        rtpe.ng({"command": "delete", "call-id": call_id,
                 "from-tag": "phone-tag" if shape == "A" else "pbx-tag"})
        pbx.close()
    phone_sdp = parse_sdp(to_phone) if to_phone is not None else None
    return dict(variant=variant.name, shape=shape, sdp_phone=_cn_in(phone_sdp),
                phone_codecs=" ".join(phone_sdp.names()) if phone_sdp else "-",
                ph=dict(sorted(received.items())), pbx_sent=dict(sorted(pbx.sent.items())),
                px=dict(sorted(pbx.received.items())), errors="; ".join(errors))


async def _signal(pc, ng, shape: str, variant: Variant, pbx: Endpoint):
    """Offer/answer through rtpengine between the aiortc phone and the fake PBX (shape A:
    the phone offers, B: the PBX offers). Returns the SDP the phone got, and the PBX's."""
    from aiortc import RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack

    base = BASE_FLAGS["webrtc"]
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
    return to_phone, pbx_sdp


async def _play(pbx: Endpoint, pbx_sdp, seconds: float) -> None:
    """The PBX's audio / CN / DTMF script (pbx_action) for `seconds`, then a drain."""
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


def dtls_test(rtpe: RtpEngine, variants: list):
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
