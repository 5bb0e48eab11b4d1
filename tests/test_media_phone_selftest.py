"""The media test endpoints checked against each other, without the gateway:
what tests/test_media_webrtc.py asserts the absence of (a DTLS close alert,
PT 13 packets, missing frames) must be something these tools do see when it
happens. Two aiortc phones (support/webrtc_phone.py) talk straight to each
other over loopback, and the plain-RTP PBX endpoint (support/rtp_pbx.py)
talks to a bare socket."""
from __future__ import annotations

import asyncio
import socket
import time

import numpy as np

from support.rtp_pbx import MediaPlan, RtpEndpoint
from support.rtpaudio import PT_CN, RxLog, flow, mark_frame, read_mark, rtp_parse, tone, ulaw_encode
from support.webrtc_phone import LoopThread, PhoneMedia, use_host_address


def test_frame_marks_survive_and_cost_the_tone_little():
    payload = ulaw_encode(tone(440.0, 0))
    for mark in (1, 2, 1000, 0xFFFFF):
        assert read_mark(mark_frame(payload, mark)) == mark
    # frames nobody marked (comfort noise a relay makes up) pass the 4-bit check
    # about 1 time in 16, and then name a frame number that was hardly ever sent
    rng = np.random.default_rng(7)
    noise = [ulaw_encode(rng.normal(0, 200, 160).astype(np.int16)) for _ in range(500)]
    assert sum(read_mark(p) is not None for p in noise) < 50


def test_two_phones_dtls_srtp_tone_and_close_alert():
    use_host_address()
    loop = LoopThread()

    async def go():
        a, b = PhoneMedia.create(1000.0), PhoneMedia.create(440.0)
        await a.pc.setLocalDescription(await a.pc.createOffer())
        await b.pc.setRemoteDescription(a.pc.localDescription)
        await b.pc.setLocalDescription(await b.pc.createAnswer())
        await a.pc.setRemoteDescription(b.pc.localDescription)
        deadline = time.monotonic() + 10
        while not (a.connected_at and b.connected_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert a.connected_at and b.connected_at, (a.events, b.events)
        t0 = time.monotonic() + 0.3
        await asyncio.sleep(2.3)
        t1 = time.monotonic() - 0.2
        up = flow(a.tx, b.rx, t0, t1)
        await b.pc.close()             # sends a DTLS close_notify to a
        await asyncio.sleep(0.5)
        await a.close()
        return a, up

    try:
        a, up = loop.run(go(), 30)
    finally:
        loop.close()
    assert up.sent >= 90 and up.missing == 0 and abs(up.freq - 1000.0) <= 5, up
    assert a.close_alerts == 1, a.events
    assert any(s == "close-alert" for _, _, s in a.events)


def test_pbx_endpoint_sends_cn_in_silences_and_dtmf():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.2)
    ep = RtpEndpoint(MediaPlan(freq=440.0, burst_ms=200, silence_ms=200, cn=True, dtmf="7#",
                               dtmf_at=0.5))
    ep.remote, ep.sending = sink.getsockname(), True
    rx = RxLog()
    ep.start()
    end = time.monotonic() + 2.0
    try:
        while True:
            try:
                h = rtp_parse(sink.recv(2048))
            except socket.timeout:
                if time.monotonic() > end + 0.3:
                    break
                continue
            if h is not None:
                rx.add(h)
            if time.monotonic() > end and ep.sending:
                ep.sending = False     # then drain what is in flight
    finally:
        ep.stop()
        sink.close()
    assert rx.by_pt[PT_CN] >= 20 and rx.by_pt[0] >= 20
    assert rx.digits(ep.pt_te) == "7#"
    tone_flow = flow(ep.tx, rx, 0.0, float("inf"))
    assert tone_flow.missing == 0 and abs(tone_flow.freq - 440.0) <= 5
