"""kemi/quality.py against real rtpengine 10.5 `query` replies, captured from
calls through the gateway (tests/support/capture_quality.py; documentation
addresses only)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from kemi import logfmt, quality
from kemi.quality import PBX, PHONE

DATA = Path(__file__).resolve().parents[1] / "data" / "rtpengine"


def load(name: str) -> dict:
    return json.loads((DATA / f"query_{name}.json").read_text())


def test_clean_call_both_directions_measured():
    call = quality.parse(load("clean_phone_to_pbx"), call_id="c1")
    assert {leg.side for leg in call.legs} == {PHONE, PBX}
    for side in (PHONE, PBX):
        f = call.figures(side)
        assert f.mos == 4.4 and f.loss == 0.0 and f.samples >= 5
        assert f.jitter_ms is not None and f.rtt_ms is not None and f.rtt_ms > 0
    assert call.mos == 4.4
    phone, pbx = call.leg(PHONE), call.leg(PBX)
    assert phone.protocol == "UDP/TLS/RTP/SAVPF" and phone.crypto and phone.peer.startswith("203.0.113.50:")
    assert pbx.protocol == "RTP/AVP" and pbx.peer.startswith("198.51.100.20:")
    assert pbx.local.startswith("192.0.2.10:") and pbx.codec == "PCMU/8000"
    assert pbx.packets > 400 and phone.packets > 400


@pytest.mark.parametrize("name", ["lossy_pbx_leg_phone_to_pbx", "lossy_pbx_leg_pbx_to_phone"])
def test_loss_on_the_pbx_leg_is_reported_by_the_phone(name):
    """The PBX dropped 10 %: the phone's receiver reports (under the phone's
    SSRC) say so, and they are the figures of what came from the PBX."""
    reply = load(name)
    call = quality.parse(reply)
    phone_ssrcs = {str(s) for s in call.leg(PHONE).ssrcs}
    assert phone_ssrcs & set(reply["SSRC"])
    assert call.figures(PBX).loss == pytest.approx(0.09)
    assert call.figures(PHONE).loss == 0.0
    assert call.figures(PBX).mos < call.figures(PHONE).mos
    assert call.mos == call.figures(PBX).mos


def test_pbx_without_rtcp_gives_no_figures_only_packets():
    """rtpengine lists no SSRC stats unless both ends send RTCP: nothing is
    invented, but the packets it relayed are known."""
    call = quality.parse(load("pbx_without_rtcp"))
    assert call.came_from == {} and call.mos is None and call.rtt_ms is None
    fields = {k: v for k, v in quality.log_fields(call).items() if v is not None}
    assert set(fields) == {"packets_phone", "packets_pbx"}
    assert int(fields["packets_pbx"]) > 400


def test_log_fields_format_and_order():
    call = quality.parse(load("lossy_pbx_leg_phone_to_pbx"))
    line = logfmt.line("call.quality", call_id="abc", dn="4682", direction="outbound", duration=10,
                       **quality.log_fields(call))
    assert line.startswith("event=call.quality call_id=abc dn=4682 direction=outbound duration=10 mos=3.5 "
                           "loss_phone=0.00 loss_pbx=0.09 jitter_ms_phone=")
    parsed = logfmt.parse(line)
    assert float(parsed["rtt_ms"]) > 0 and parsed["packets_pbx"].isdigit()


def test_json_from_kamailio_is_the_same_reply():
    """rtpengine_query_v("j", ...) hands the reply over as JSON."""
    reply = load("clean_phone_to_pbx")
    assert quality.parse_json(json.dumps(reply)) == quality.parse(reply)
    assert quality.parse_json("") is None and quality.parse_json("[1]") is None


def test_plain_sip_phone_legs_told_apart_by_the_callers_tag():
    """Both legs plain RTP (a desk phone or a load test calling the PBX): the
    protocol cannot tell, the From-tag of the INVITE and its direction can."""
    reply = copy.deepcopy(load("clean_phone_to_pbx"))
    tags = reply["tags"]
    phone_tag = next(t for t, v in tags.items() if "SAVP" in v["medias"][0]["protocol"])
    for media in tags[phone_tag]["medias"]:
        media["protocol"] = "RTP/AVP"
        media["flags"] = [f for f in media["flags"] if f not in ("DTLS-SRTP", "ICE", "trickle ICE")]
    assert {leg.side for leg in quality.parse(reply).legs} == {PBX}
    call = quality.parse(reply, caller_tag=phone_tag, caller_side=PHONE)
    assert call.leg(PHONE).tag == phone_tag and call.figures(PHONE).mos == 4.4


def test_had_media():
    quiet = quality.CallQuality("x", None, (quality.Leg(PHONE, "a"), quality.Leg(PBX, "b")))
    assert not quality.had_media(quiet, answered=False)   # CANCEL before answer
    assert quality.had_media(quiet, answered=True)        # answered, no packets: worth a line
    early = quality.CallQuality("x", None, (quality.Leg(PBX, "b", packets=50),))
    assert quality.had_media(early, answered=False)


def test_garbage_never_raises():
    for reply in ({}, {"tags": "x"}, {"tags": {"a": {"medias": [{"streams": "x"}]}}},
                  {"SSRC": {"1": {"average MOS": {"MOS": "x"}}}, "tags": {}}):
        call = quality.parse(reply)
        assert call.mos is None
    reply = load("clean_phone_to_pbx")
    for entry in reply["SSRC"].values():
        entry["average MOS"]["MOS"] = 0      # rtpengine: 0 = no MOS
    assert quality.parse(reply).mos is None


def test_at_end_answered_call_line():
    reply = json.dumps(load("lossy_pbx_leg_pbx_to_phone"))
    dlg = quality.dlg_call("inbound", "4683", "pbxtag")
    end = quality.at_end(reply, dlg, "1000", answered=True, now=1031.7)
    assert end is not None and end.call.figures(PBX).loss == pytest.approx(0.09)
    f = end.fields
    assert (f["dn"], f["direction"], f["duration"], f["loss_pbx"]) == ("4683", "inbound", "31", "0.09")
    assert list(f)[:5] == ["dn", "direction", "duration", "mos", "loss_phone"]


def test_at_end_unanswered_or_unknown():
    reply = load("clean_phone_to_pbx")
    quiet = copy.deepcopy(reply)
    for tag in quiet["tags"].values():
        for media in tag["medias"]:
            for stream in media["streams"]:
                stream["stats"]["packets"] = 0
    dlg = quality.dlg_call("outbound", "4681", "x")
    assert quality.at_end(json.dumps(quiet), dlg, "0", answered=False) is None   # CANCEL, no media
    early = quality.at_end(json.dumps(reply), dlg, "0", answered=False)         # early media
    assert early is not None and early.fields["duration"] is None
    # no dialog values (a dialog the module did not keep): no DN, no direction, never made up
    blind = quality.at_end(json.dumps(reply), "", "", answered=True)
    assert blind.fields["dn"] is None and blind.fields["direction"] is None
    assert blind.fields["duration"] is None and blind.fields["mos"] == "4.4"
    assert quality.at_end("not json", dlg, "0", answered=True) is None


def test_at_end_reports_a_call_once():
    reply = json.dumps(load("clean_phone_to_pbx"))
    assert quality.at_end(reply, quality.dlg_call("outbound", "1", "t"), "0", answered=True) is not None
    assert quality.at_end(reply, quality.REPORTED, "0", answered=True) is None


def test_queue_key_round_trip():
    """kemi/qualityroute.py queues what at_end needs with rtpengine's reply."""
    dlg = quality.dlg_call("inbound", "4683", "tag\twith a tab")
    key = quality.queue_key("abc@198.51.100.1", dlg, "1000", True, 1031.7)
    assert quality.read_queue_key(key) == ("abc@198.51.100.1", dlg, "1000", True, 1031.7)
    assert quality.read_queue_key(quality.queue_key("x", "", "", False, 1.0)) == ("x", "", "", False, 1.0)
    with pytest.raises(ValueError):
        quality.read_queue_key("not a key")


def test_light_parse_counts_what_the_full_one_does():
    """at_end's legs (detail=False) carry the same side, tag, SSRCs and packets."""
    for name in ("clean_phone_to_pbx", "lossy_pbx_leg_phone_to_pbx", "lossy_pbx_leg_pbx_to_phone",
                 "pbx_without_rtcp"):
        full, light = quality.parse(load(name)), quality.parse(load(name), detail=False)
        assert [(x.side, x.tag, x.ssrcs, x.packets) for x in full.legs] == \
            [(x.side, x.tag, x.ssrcs, x.packets) for x in light.legs]
        assert full.came_from == light.came_from
        assert quality.log_fields(full) == quality.log_fields(light)
