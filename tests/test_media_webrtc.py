"""Real WebRTC media end to end (issue 4), against the real Kamailio, rtpengine
and Redis of the `gw` fixture.

The phone is a real WebRTC endpoint (aiortc: ICE, DTLS-SRTP, PCMU; SIP over
the gateway's WebSocket, support/webrtc_phone.py) at 127.0.0.2; the PBX speaks
plain RTP like Asterisk or a Genesys media server (support/rtp_pbx.py): PCMU
20 ms, CN (PT 13) in its silences, RFC 4733 telephone-events.

Every call runs once, in the module fixture, several at a time (the calls are
long and the box has 2 cores): three 31 s calls carrying a 1 kHz tone up and a
440 Hz tone down, one per call order, in parallel with a chain of shorter
groups (comfort noise, hold/resume, DTMF). Each test then asserts on its calls.
The figures every call produced are written to tests/_artifacts/media/figures.json
and printed in assertion messages.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from conftest import ARTIFACTS
from kemi.media import CnBlock
from support.media_calls import (PBX_TONE, PHONE_TONE, Scenario, hold_resume, run_all,
                                 send_digits)
from support.rtp_pbx import MediaPlan, RtpPbx
from support.rtpaudio import PT_CN
from support.webrtc_phone import LoopThread

pytestmark = pytest.mark.slow

OUT = ARTIFACTS / "media"
LONG_TALK = 31.5          # >= 30 s of DTLS-SRTP media per long call
TONE_WINDOW = 25.0        # >= 20 s of tone measured each way
MAX_MISSING_PCT = 1.0
FREQ_TOLERANCE = 5.0      # Hz
DIGITS = "0123456789*#"
PBX_DIGITS = "159#"


def cn_plan(sdp_cn: bool) -> MediaPlan:
    """Tone bursts of 1 s, 0.6 s silences filled with a CN packet every 20 ms,
    and a few digits, the way a PBX or media server plays prompts."""
    return MediaPlan(freq=PBX_TONE, burst_ms=1000, silence_ms=600, cn=True, cn_every=1,
                     sdp_cn=sdp_cn, dtmf=PBX_DIGITS, dtmf_at=2.2)


def scenarios() -> dict[str, list[Scenario]]:
    tone = lambda: MediaPlan(freq=PBX_TONE)  # noqa: E731
    return {
        "long": [
            Scenario("phone->pbx", "phone->pbx", "4611", tone(), talk=LONG_TALK, hangup="phone"),
            Scenario("pbx->phone", "pbx->phone", "4612", tone(), talk=LONG_TALK, mdns=True),
            Scenario("3pcc", "3pcc", "4613", tone(), talk=LONG_TALK),
        ],
        "cn": [
            Scenario("phone->pbx, PBX SDP has CN", "phone->pbx", "4621", cn_plan(True), talk=12),
            Scenario("phone->pbx, CN never in PBX SDP", "phone->pbx", "4622", cn_plan(False), talk=12),
            Scenario("pbx->phone, PBX offers CN", "pbx->phone", "4623", cn_plan(True), talk=12),
            Scenario("pbx->phone, CN never in PBX SDP", "pbx->phone", "4624", cn_plan(False), talk=12,
                     mdns=True),
            Scenario("3pcc, CN never in PBX SDP", "3pcc", "4625", cn_plan(False), talk=12),
        ],
        "hold": [
            Scenario("PBX holds a=sendonly (Asterisk MOH), pbx->phone", "pbx->phone", "4631", tone(),
                     script=hold_resume("pbx", "sendonly"), mdns=True),
            Scenario("PBX holds a=inactive (Genesys), 3pcc", "3pcc", "4632", tone(),
                     script=hold_resume("pbx", "inactive")),
            Scenario("phone holds (JsSIP), pbx->phone", "pbx->phone", "4633", tone(),
                     script=hold_resume("phone")),
            Scenario("phone holds (JsSIP), phone->pbx", "phone->pbx", "4634", tone(),
                     script=hold_resume("phone"), hangup="phone"),
        ],
        "dtmf": [
            Scenario("phone->pbx", "phone->pbx", "4641", tone(), script=send_digits(DIGITS),
                     hangup="phone"),
            Scenario("pbx->phone", "pbx->phone", "4642", tone(), script=send_digits(DIGITS), mdns=True),
        ],
    }


# ------------------------------------------------------------------ figures
def _fig_long(sc: Scenario) -> dict:
    c0, bye = sc.marks["connected"], sc.marks["bye"]
    t0, t1 = c0 + 1.0, c0 + 1.0 + TONE_WINDOW
    media = sc.call.media
    rx = [p.t for p in media.rx.audio(c0 + 1.0, bye)]
    gaps = [b - a for a, b in zip(rx, rx[1:])]
    pbx_rx = [p.t for p in sc.leg.ep.rx.audio(c0 + 1.0, bye)]
    return {
        "phone_to_pbx": sc.up_flow(t0, t1).as_dict(),
        "pbx_to_phone": sc.down_flow(t0, t1).as_dict(),
        "window_s": TONE_WINDOW,
        # from DTLS up to the BYE: the media never stopped
        "whole_call_phone_to_pbx": sc.up_flow(c0 + 0.5, bye - 0.3).as_dict(),
        "whole_call_pbx_to_phone": sc.down_flow(c0 + 0.5, bye - 0.3).as_dict(),
        "dtls_up_s_before_bye": round(bye - c0, 2),
        "dtls_state_at_bye": sc.notes.get("dtls_state_at_bye"),
        "failures_before_bye": sc.notes.get("failures_before_bye"),
        "dtls_close_alerts": media.close_alerts,
        "srtp_unprotect_errors": media.srtp_errors,
        "phone_last_audio_before_bye_ms": round(1000 * (bye - rx[-1]), 1) if rx else None,
        "pbx_last_audio_before_bye_ms": round(1000 * (bye - pbx_rx[-1]), 1) if pbx_rx else None,
        "phone_longest_audio_gap_ms": round(1000 * max(gaps), 1) if gaps else None,
        "events": [(round(t - c0, 3), k, s) for t, k, s in media.events],
    }


def _fig_cn(sc: Scenario) -> dict:
    c0, bye = sc.marks["connected"], sc.marks["bye"]
    media, ep = sc.call.media, sc.leg.ep
    return {
        "pbx_sent_per_pt": dict(sorted(ep.tx.by_pt.items())),
        "phone_received_per_pt": media.rx.pts(),
        "pt13_at_phone": media.rx.by_pt.get(PT_CN, 0),
        "pt13_sent_by_pbx": ep.tx.by_pt.get(PT_CN, 0),
        "pbx_sdp_declared_cn": any("CN/8000" in s for s in sc.leg.local_sdps),
        "sdp_to_phone": [s.codec_names() for s in sc.call.sdps_in],
        "sdp_to_pbx": [s.codec_names() for s in sc.leg.remote_sdps],
        "pbx_to_phone_tone": sc.down_flow(c0 + 0.5, bye - 0.3).as_dict(),
        "phone_to_pbx": sc.up_flow(c0 + 0.5, bye - 0.3).as_dict(),
        "pbx_digits_at_phone": media.rx.digits(media.te_pt) if media.te_pt is not None else "",
        "phone_te_pt": media.te_pt,
    }


def _fig_hold(sc: Scenario) -> dict:
    m = sc.marks
    windows = {"talk": (m["connected"] + 0.5, m["hold"]), "held": (m["held"] + 0.3, m["resume"]),
               "resumed": (m["resumed"] + 0.5, m["bye"] - 0.2)}
    out = {"statuses": dict(sc.statuses), **{k: v for k, v in sc.notes.items() if "sdp" in k}}
    for name, (a, b) in windows.items():
        out[name] = {"seconds": round(b - a, 2), "phone_to_pbx": sc.up_flow(a, b).as_dict(),
                     "pbx_to_phone": sc.down_flow(a, b).as_dict()}
    a, b = windows["held"]
    out["held"]["pcmu_packets_at_phone"] = len(sc.call.media.rx.audio(a, b))
    out["held"]["pcmu_packets_at_pbx"] = len(sc.leg.ep.rx.audio(a, b))
    out["failures_before_bye"] = sc.notes.get("failures_before_bye")
    return out


def _fig_dtmf(sc: Scenario) -> dict:
    ep = sc.leg.ep
    te = sc.leg.remote_sdps[-1].pt_of("telephone-event")
    return {
        "digits_sent": sc.call.media.dtmf_sent,
        "pbx_te_pt": te,
        "digits_at_pbx": ep.rx.digits(te) if te is not None else "",
        "te_packets_at_pbx": ep.rx.by_pt.get(te, 0) if te is not None else 0,
        "pbx_received_per_pt": ep.rx.pts(),
        "phone_sent_per_pt": dict(sorted(sc.call.media.tx.by_pt.items())),
        "audio_after_digits": sc.up_flow(sc.marks["dtmf_done"] + 0.2, sc.marks["bye"] - 0.2).as_dict(),
    }


FIGURES = {"long": _fig_long, "cn": _fig_cn, "hold": _fig_hold, "dtmf": _fig_dtmf}


@pytest.fixture(scope="module")
def media(gw):
    """Run every call once; {group: {name: (scenario, figures)}}."""
    OUT.mkdir(parents=True, exist_ok=True)
    pbx = RtpPbx(gw.pbx.host, gw.pbx.port, MediaPlan(freq=PBX_TONE))
    loop = LoopThread()
    groups = scenarios()

    async def chain() -> None:
        for name in ("cn", "hold", "dtmf"):
            await run_all(groups[name], gw, pbx)

    async def everything() -> None:
        await asyncio.gather(run_all(groups["long"], gw, pbx), chain())

    started = time.monotonic()
    try:
        loop.run(everything(), timeout=240)
        results: dict = {}
        report: dict = {"wall_s": round(time.monotonic() - started, 1)}
        for group, items in groups.items():
            results[group] = {}
            for sc in items:
                figs = {"error": sc.error} if sc.error else FIGURES[group](sc)
                figs["order"] = sc.order
                if sc.call is not None:
                    figs["phone_received_per_pt"] = sc.call.media.rx.pts()
                    figs["pt13_at_phone"] = sc.call.media.rx.by_pt.get(PT_CN, 0)
                figs["call_id"] = sc.call.call_id if sc.call else None
                figs["rtpengine_transcoding"] = transcoding(sc.notes.get("rtpengine_query"))
                figs["rtpengine_had_call"] = sc.in_rtpengine
                figs["rtpengine_still_has_call_after_bye"] = sc.left_in_rtpengine
                results[group][sc.name] = (sc, figs)
                report.setdefault(group, {})[sc.name] = figs
        (OUT / "figures.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        yield results
    finally:
        loop.close()
        pbx.close()


def _get(media, group: str, name: str) -> tuple[Scenario, dict]:
    sc, figs = media[group][name]
    sc.check()
    return sc, figs


def _show(figs: dict) -> str:
    return json.dumps({k: v for k, v in figs.items() if k != "events"}, indent=1, default=str)


# ------------------------------------------------------------------ 1. tones
@pytest.mark.parametrize("name", ["phone->pbx", "pbx->phone", "3pcc"])
def test_tone_each_way_at_least_20s(media, name):
    """A 1 kHz tone up and a 440 Hz tone down for >= 20 s: right frequency by
    FFT, no more than 1 % of the 20 ms frames missing, in each call order."""
    sc, figs = _get(media, "long", name)
    for direction, freq in (("phone_to_pbx", PHONE_TONE), ("pbx_to_phone", PBX_TONE)):
        f = figs[direction]
        assert f["frames_sent"] >= TONE_WINDOW / 0.020 * 0.95, (direction, _show(figs))
        assert abs(f["freq_hz"] - freq) <= FREQ_TOLERANCE, (direction, _show(figs))
        assert f["tone_purity"] >= 0.9, (direction, _show(figs))
        assert f["missing_pct"] <= MAX_MISSING_PCT, (direction, _show(figs))


# ------------------------------------------------------------------ 2. comfort noise
CN_CALLS = ["phone->pbx, PBX SDP has CN", "phone->pbx, CN never in PBX SDP",
            "pbx->phone, PBX offers CN", "pbx->phone, CN never in PBX SDP", "3pcc, CN never in PBX SDP"]


@pytest.mark.parametrize("name", CN_CALLS)
def test_no_comfort_noise_reaches_the_phone(media, name):
    """The PBX sends CN (PT 13) in every silence between tone bursts, declared
    in its SDP or not: the phone gets 0 packets with PT 13 and no CN in any
    SDP, while the tone and the PBX's telephone-events still arrive."""
    sc, figs = _get(media, "cn", name)
    assert figs["pt13_sent_by_pbx"] >= 100, _show(figs)
    assert not any(s.has_cn() for s in sc.call.sdps_in), _show(figs)
    assert figs["pt13_at_phone"] == 0, _show(figs)
    tone = figs["pbx_to_phone_tone"]
    assert tone["missing_pct"] <= MAX_MISSING_PCT, _show(figs)
    assert abs(tone["freq_hz"] - PBX_TONE) <= FREQ_TOLERANCE, _show(figs)
    assert figs["pbx_digits_at_phone"] == PBX_DIGITS, _show(figs)
    up = figs["phone_to_pbx"]
    assert up["missing_pct"] <= MAX_MISSING_PCT and abs(up["freq_hz"] - PHONE_TONE) <= FREQ_TOLERANCE, \
        _show(figs)


# ------------------------------------------------------------------ 3. DTLS
@pytest.mark.parametrize("name", ["phone->pbx", "pbx->phone", "3pcc"])
def test_dtls_stays_up_until_bye(media, name):
    """>= 30 s of DTLS-SRTP: no DTLS close alert, no DTLS/ICE failure before
    the BYE, and audio still arriving at both ends right up to it."""
    sc, figs = _get(media, "long", name)
    assert figs["dtls_up_s_before_bye"] >= 30.0, _show(figs)
    assert figs["dtls_state_at_bye"] == "connected", _show(figs)
    assert figs["failures_before_bye"] == [], _show(figs)
    assert figs["dtls_close_alerts"] == 0, _show(figs)
    assert figs["srtp_unprotect_errors"] == 0, _show(figs)
    for direction in ("whole_call_phone_to_pbx", "whole_call_pbx_to_phone"):
        assert figs[direction]["missing_pct"] <= MAX_MISSING_PCT, (direction, _show(figs))
    # arrival times are taken by Python, which a busy box can stall for a while
    assert figs["phone_last_audio_before_bye_ms"] < 1000, _show(figs)
    assert figs["pbx_last_audio_before_bye_ms"] < 1000, _show(figs)


# ------------------------------------------------------------------ 4. hold
HOLD_CALLS = ["PBX holds a=sendonly (Asterisk MOH), pbx->phone", "PBX holds a=inactive (Genesys), 3pcc",
              "phone holds (JsSIP), pbx->phone", "phone holds (JsSIP), phone->pbx"]


@pytest.mark.parametrize("name", HOLD_CALLS)
def test_hold_and_resume_by_reinvite(media, name):
    """Hold by re-INVITE (from the PBX: sendonly or inactive; from the phone:
    sendonly), then resume: the hold takes effect, and after the resume audio
    flows again both ways, with no DTLS/ICE failure."""
    sc, figs = _get(media, "hold", name)
    assert sc.statuses.get("hold") == 200 and sc.statuses.get("resume") == 200, _show(figs)
    for phase in ("talk", "resumed"):
        for direction, freq in (("phone_to_pbx", PHONE_TONE), ("pbx_to_phone", PBX_TONE)):
            f = figs[phase][direction]
            assert f["frames_sent"] >= 100, (phase, direction, _show(figs))
            assert f["missing_pct"] <= MAX_MISSING_PCT, (phase, direction, _show(figs))
            assert abs(f["freq_hz"] - freq) <= FREQ_TOLERANCE, (phase, direction, _show(figs))
    held = figs["held"]
    if "phone holds" in name:       # JsSIP: a=sendonly; the PBX answers recvonly
        expected = ("recvonly", "sendonly")
        silent, playing = "pcmu_packets_at_phone", "phone_to_pbx"
    elif "sendonly" in name:        # Asterisk: a=sendonly and music on hold
        expected = ("sendonly", "recvonly")
        silent, playing = "pcmu_packets_at_pbx", "pbx_to_phone"
    else:                           # Genesys: a=inactive, nobody sends
        expected = ("inactive", "inactive")
        silent, playing = "pcmu_packets_at_pbx", None
    assert (figs["held_sdp_to_phone"], figs["held_sdp_to_pbx"]) == expected, _show(figs)
    assert held[silent] <= 2, _show(figs)
    if playing is None:
        assert held["pcmu_packets_at_phone"] <= 2, _show(figs)
    else:
        assert held[playing]["frames_sent"] >= 100, _show(figs)
        assert held[playing]["missing_pct"] <= MAX_MISSING_PCT, _show(figs)
    assert (figs["resumed_sdp_to_phone"], figs["resumed_sdp_to_pbx"]) == ("sendrecv", "sendrecv"), \
        _show(figs)
    assert figs["failures_before_bye"] == [], _show(figs)


# ------------------------------------------------------------------ 5. DTMF
@pytest.mark.parametrize("name", ["phone->pbx", "pbx->phone"])
def test_dtmf_from_phone_reaches_pbx_as_telephone_events(media, name):
    sc, figs = _get(media, "dtmf", name)
    assert figs["pbx_te_pt"] is not None, _show(figs)
    assert figs["digits_at_pbx"] == DIGITS, _show(figs)
    assert figs["te_packets_at_pbx"] >= 11 * len(DIGITS) * 0.95, _show(figs)
    assert figs["audio_after_digits"]["missing_pct"] <= MAX_MISSING_PCT, _show(figs)


# ------------------------------------------------------------------ 6. rtpengine
def transcoding(query: dict | None) -> list[str] | None:
    """The call's media that rtpengine transcodes (its `query` flags a media
    "transcoding" when any codec handler on it decodes/encodes); None: no query."""
    if query is None:
        return None
    return [f"tag {tag}: media {m.get('index')} {m.get('protocol')} {m.get('codec', '')}"
            for tag, t in (query.get("tags") or {}).items()
            for m in t.get("medias") or [] if "transcoding" in (m.get("flags") or [])]


def test_every_call_is_a_plain_relay(media, gw):
    """No call engages rtpengine's transcoder: the gateway keeps CN from the phone
    with the nftables filter in front of rtpengine (the fixture installs it as
    make run does), so rtpengine's `query` of every call, taken after the PBX's
    CN went through it, shows no transcoding media; the CN calls above prove PT 13
    still never reached the phone."""
    assert gw.cn is not None and gw.cn.cn is CnBlock.FILTER, \
        f"the CN filter is not in effect here: {gw.cn.message if gw.cn else None}"
    seen = {}
    for group, items in media.items():
        for name, (sc, figs) in items.items():
            sc.check()
            seen[f"{group}/{name}"] = figs["rtpengine_transcoding"]
    assert None not in seen.values(), seen
    assert {k: v for k, v in seen.items() if v} == {}, seen


def test_rtpengine_holds_no_session_after_any_call(media, gw):
    left = {}
    for group, items in media.items():
        for name, (sc, figs) in items.items():
            sc.check()
            assert figs["rtpengine_had_call"], f"{group}/{name}: rtpengine never had the call"
            if figs["rtpengine_still_has_call_after_bye"]:
                left[f"{group}/{name}"] = figs["call_id"]
    assert left == {}, f"rtpengine kept sessions after the BYE: {left}"
    ours = {figs["call_id"] for items in media.values() for _, figs in items.values()}
    assert ours.isdisjoint(gw.ng().list_calls())
