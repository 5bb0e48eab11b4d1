"""Call quality you can see (issue 15), against the real Kamailio, rtpengine and
Redis of the `gw` fixture: a real WebRTC phone (aiortc: DTLS-SRTP, RTCP sender
and receiver reports) and a plain-RTP PBX that sends RTCP the way Asterisk does
(support/rtp_pbx.py, support/rtcp.py).

Three calls run at once: a clean one, and two where the PBX leg loses 10 % of
its packets (the PBX emulator never sends one RTP packet in ten, sequence
numbers counting them, as a lossy network would), one in each call order. At
each call's end the gateway logs one `event=call.quality` line with what
rtpengine measured and observes the gateway_call_* histograms once. A call
cancelled before it was answered carries no media: no line, no observation;
one cancelled after early media gets a line with only what was measured.
While the lossy call is up, `gwctl calls` and `gwctl call CALL-ID` show its
live figures. With two rtpengines, each call's figures come from the one that
holds it. The figures are written to tests/_artifacts/quality/figures.json.
"""
from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest

from conftest import ARTIFACTS, Stack, wait_until
from gw import stack
from kemi import settings as settings_mod
from kemi.ng import NgClient
from kemi.settings import HostPort
from support import relstack
from support.media_calls import PBX_TONE, Scenario, run_all
from support.rtp_pbx import MediaPlan, RtpPbx
from support.webrtc_phone import LoopThread
from support.wsphone import WsPhone, webrtc_sdp
from test_gwctl import gwctl, stack_env
from test_ops_metrics import Scrape, decision_lines

pytestmark = pytest.mark.slow

OUT = ARTIFACTS / "quality"
TALK = 12.0
LOSS = 0.10
FAMILIES = ("gateway_call_mos", "gateway_call_packet_loss_ratio", "gateway_call_jitter_seconds")


def live_gwctl(gw):
    """A script: while the call is up, what `gwctl calls` and `gwctl call` show."""
    async def script(sc: Scenario) -> None:
        await asyncio.sleep(TALK - 3)
        cid = sc.call.call_id
        runs = [("calls", "--json"), ("calls",), ("call", cid, "--json"), ("call", cid),
                ("call", "no-such-call")]
        sc.notes["gwctl"] = {" ".join(a): await asyncio.to_thread(gwctl, stack_env(gw), *a) for a in runs}
        await asyncio.sleep(3)
    return script


def scenarios(gw) -> list[Scenario]:
    lossy = lambda: MediaPlan(freq=PBX_TONE, drop_ratio=LOSS)  # noqa: E731
    return [
        Scenario("clean", "phone->pbx", "4651", MediaPlan(freq=PBX_TONE), talk=TALK, hangup="phone"),
        Scenario("lossy, phone->pbx", "phone->pbx", "4652", lossy(), script=live_gwctl(gw)),
        Scenario("lossy, pbx->phone", "pbx->phone", "4653", lossy(), talk=TALK, hangup="phone"),
    ]


def histogram(scrape: Scrape, name: str, **labels: str) -> tuple[float, float]:
    return scrape.value(f"{name}_count", **labels), scrape.value(f"{name}_sum", **labels)


def quality_line(gw, call_id: str) -> dict[str, str] | None:
    lines = [f for f in decision_lines(gw.kamailio_log(), call_id) if f.get("event") == "call.quality"]
    assert len(lines) <= 1, lines
    return lines[0] if lines else None


async def cancelled_call(gw, pbx: RtpPbx, dn: str, early_media: bool = False) -> str:
    """An agent dials, the PBX rings (or plays a prompt as early media), the
    agent gives up: CANCEL, 487."""
    target = f"2{dn}"
    pbx.ring_only.add(target)
    if early_media:
        pbx.early_media.add(target)
    phone = await WsPhone.connect(gw.ws_url, user=dn, domain="pbx.test")
    try:
        assert (await phone.register()).status == 200
        call = await phone.invite(f"sip:{target}@pbx.test", webrtc_sdp(), wait=False)
        await call.wait_state("early", timeout=5)
        if early_media:
            await asyncio.sleep(2.0)
        assert (await call.cancel()).status == 487
        return call.call_id
    finally:
        await phone.close()


@pytest.fixture(scope="module")
def calls(gw):
    OUT.mkdir(parents=True, exist_ok=True)
    pbx = RtpPbx(gw.pbx.host, gw.pbx.port, MediaPlan(freq=PBX_TONE))
    loop = LoopThread()
    items = scenarios(gw)
    try:
        before = Scrape(gw)
        loop.run(run_all(items, gw, pbx), timeout=120)
        for sc in items:
            sc.check()
        lines = {sc.name: wait_until(lambda: quality_line(gw, sc.call.call_id), 5,
                                     f"the quality line of {sc.name}") for sc in items}
        after_calls = Scrape(gw)
        cancelled = loop.run(cancelled_call(gw, pbx, "4659"), timeout=30)
        early = loop.run(cancelled_call(gw, pbx, "4658", early_media=True), timeout=30)
        for call_id in (cancelled, early):
            wait_until(lambda: call_id not in gw.ng().list_calls(), 5, "rtpengine to drop the call")
        early_line = wait_until(lambda: quality_line(gw, early), 5, "the early media call's quality line")
        after_cancel = Scrape(gw)
        figures = {
            name: {"call_id": sc.call.call_id, "line": lines[name],
                   "pbx_rtp_sent": sc.leg.ep.rtp_sent, "pbx_rtp_dropped": sc.leg.ep.rtp_dropped,
                   "pbx_rtcp_sent": sc.leg.ep.rtcp_tx, "pbx_rtcp_received": sc.leg.ep.rtcp_rx}
            for name, sc in zip(lines, items)}
        figures["cancelled"] = {"call_id": cancelled, "line": quality_line(gw, cancelled)}
        figures["gwctl while the lossy call was up"] = {
            k: {"rc": v[0], "stdout": v[1], "stderr": v[2]}
            for k, v in items[1].notes.get("gwctl", {}).items()}
        figures["cancelled after early media"] = {"call_id": early, "line": early_line}
        (OUT / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
        yield {"gw": gw, "items": {sc.name: sc for sc in items}, "lines": lines, "figures": figures,
               "before": before, "after_calls": after_calls, "after_cancel": after_cancel,
               "cancelled": cancelled}
    finally:
        loop.close()
        pbx.close()


def _show(calls) -> str:
    return json.dumps(calls["figures"], indent=1)


def test_quality_line_per_call_with_its_call_id(calls):
    """One line per call, carrying the call's Call-ID, DN, direction and length,
    and the figures rtpengine measured for both legs."""
    for name, sc in calls["items"].items():
        line = calls["lines"][name]
        assert line["call_id"] == sc.call.call_id, _show(calls)
        assert line["dn"] == sc.dn, _show(calls)
        assert line["direction"] == ("outbound" if sc.order == "phone->pbx" else "inbound"), _show(calls)
        assert int(line["duration"]) >= TALK - 1, _show(calls)
        for key in ("mos", "loss_phone", "loss_pbx", "jitter_ms_phone", "jitter_ms_pbx", "rtt_ms"):
            assert key in line, (key, _show(calls))
        assert 1.0 <= float(line["mos"]) <= 5.0, _show(calls)
        assert int(line["packets_phone"]) > 0 and int(line["packets_pbx"]) > 0, _show(calls)


def test_lossy_pbx_leg_shows_its_loss_and_a_lower_mos(calls):
    """The PBX leg loses 10 %: loss_pbx is 0.10 +- 0.03 (rtpengine counts whole
    percents, rounded down), the phone leg stays clean, and the MOS is lower
    than the clean call's. The clean call shows loss under 0.01 both ways."""
    lines = calls["lines"]
    clean = lines["clean"]
    assert float(clean["loss_pbx"]) < 0.01 and float(clean["loss_phone"]) < 0.01, _show(calls)
    for name in ("lossy, phone->pbx", "lossy, pbx->phone"):
        line = lines[name]
        assert abs(float(line["loss_pbx"]) - LOSS) <= 0.03, (name, _show(calls))
        assert float(line["loss_phone"]) < 0.01, (name, _show(calls))
        assert float(line["mos"]) < float(clean["mos"]), (name, _show(calls))


def test_histograms_observed_once_per_call(calls):
    """Counts and sums of gateway_call_* in /metrics grew by exactly what the
    three quality lines say."""
    before, after = calls["before"], calls["after_calls"]
    lines = list(calls["lines"].values())
    count, total = (a - b for a, b in zip(histogram(after, "gateway_call_mos"),
                                          histogram(before, "gateway_call_mos")))
    assert count == 3 and total == pytest.approx(sum(float(x["mos"]) for x in lines), abs=1e-6)
    for leg in ("phone", "pbx"):
        count, total = (a - b for a, b in zip(histogram(after, "gateway_call_packet_loss_ratio", leg=leg),
                                              histogram(before, "gateway_call_packet_loss_ratio", leg=leg)))
        assert count == 3, (leg, _show(calls))
        assert total == pytest.approx(sum(float(x[f"loss_{leg}"]) for x in lines), abs=1e-6)
        count, total = (a - b for a, b in zip(histogram(after, "gateway_call_jitter_seconds", leg=leg),
                                              histogram(before, "gateway_call_jitter_seconds", leg=leg)))
        assert count == 3, (leg, _show(calls))
        assert total == pytest.approx(sum(float(x[f"jitter_ms_{leg}"]) for x in lines) / 1000, abs=1e-6)
    # two calls of three lost 10 % from the PBX: those fall above the 0.05 bucket
    b = after.value("gateway_call_packet_loss_ratio_bucket", leg="pbx", le="0.05") - \
        before.value("gateway_call_packet_loss_ratio_bucket", leg="pbx", le="0.05")
    assert b == 1, _show(calls)


def test_cancelled_call_gives_no_quality_observation(calls):
    """CANCEL before answer: no media, so no quality line and no histogram
    observation (no invented zeros). A call cancelled after early media from
    the PBX gets its line, with the packets rtpengine counted but no loss,
    jitter or MOS: the phone (JsSIP-like, no media) sent no RTCP to measure by."""
    assert calls["figures"]["cancelled"]["line"] is None, _show(calls)
    early = calls["figures"]["cancelled after early media"]["line"]
    assert early["dn"] == "4658" and early["direction"] == "outbound", _show(calls)
    assert int(early["packets_pbx"]) >= 50 and early["packets_phone"] == "0", _show(calls)
    unmeasured = {"duration", "mos", "loss_phone", "loss_pbx", "jitter_ms_phone", "jitter_ms_pbx", "rtt_ms"}
    assert unmeasured.isdisjoint(early), _show(calls)
    after, later = calls["after_calls"], calls["after_cancel"]
    for name in FAMILIES:
        for key in [k for k in later.samples if k[0].startswith(name)]:
            assert later.samples[key] == after.samples.get(key, 0.0), key


# ------------------------------------------------------------ several engines
def call_id_for_node(index: int, nodes: int = 2) -> str:
    """A Call-ID the rtpengine module sends to its index-th node: with equal
    weights it picks node (sum of the Call-ID's bytes & 0xff) % nodes (Kamailio
    5.6 rtpengine.c, hash_algo 0). The test checks where each call really went."""
    while True:
        cid = uuid.uuid4().hex
        if (sum(cid.encode()) & 0xFF) % nodes == index:
            return cid


def test_several_rtpengines_figures_from_the_one_holding_the_call(tmp_path):
    """GW_RTPENGINE lists two engines; calls are spread over both. Each call's
    quality line carries the figures of the engine that held it: a clean call
    on one, a lossy one on the other."""
    ng = [HostPort(relstack.HOST, stack.free_port(relstack.HOST)) for _ in range(2)]
    env = relstack.base_env(tmp_path, rtpengines=ng)
    cfg = settings_mod.load(env)
    daemons: list[stack.Daemon] = []
    loop = LoopThread()
    pbx = None
    try:
        daemons.append(stack.start_rtpengine(cfg, ng[1], tmp_path / "rtpengine-1.log",
                                             ports=relstack.media_range(6), name="rtpengine-1"))
        g = stack.start_gateway(tmp_path, env)      # Redis, the first rtpengine, Kamailio
        daemons += g.daemons()
        gw2 = Stack(**vars(g), pbx=cfg.pbx, media_ports=cfg.media_ports)
        pbx = RtpPbx(cfg.pbx.host, cfg.pbx.port, MediaPlan(freq=PBX_TONE))
        held: dict[str, list[int]] = {}

        async def where(sc: Scenario) -> None:
            await asyncio.sleep(2)
            held[sc.name] = [i for i, addr in enumerate(ng)
                             if sc.call.call_id in NgClient(addr.host, addr.port, 1.0).list_calls()]
            await asyncio.sleep(6)

        items = [Scenario("clean", "phone->pbx", "4671", MediaPlan(freq=PBX_TONE), script=where,
                          hangup="phone", call_id=call_id_for_node(0)),
                 Scenario("lossy", "phone->pbx", "4672", MediaPlan(freq=PBX_TONE, drop_ratio=LOSS),
                          script=where, call_id=call_id_for_node(1))]
        loop.run(run_all(items, gw2, pbx), timeout=90)
        for sc in items:
            sc.check()
        lines = {sc.name: wait_until(lambda: quality_line(gw2, sc.call.call_id), 5, sc.name) for sc in items}
        shown = json.dumps({"held_by_engine": held, "lines": lines}, indent=1)
        assert sorted(held.values()) == [[0], [1]], shown
        assert float(lines["clean"]["loss_pbx"]) < 0.01, shown
        assert abs(float(lines["lossy"]["loss_pbx"]) - LOSS) <= 0.03, shown
        assert float(lines["lossy"]["mos"]) < float(lines["clean"]["mos"]), shown
    finally:
        loop.close()
        if pbx is not None:
            pbx.close()
        stack.stop_all(daemons)


# ------------------------------------------------------------------- gwctl
def test_gwctl_shows_live_loss_jitter_and_mos_per_leg(calls):
    """While the lossy call is up, `gwctl calls` shows per leg what came from it
    so far (the PBX leg's loss), and `gwctl call CALL-ID` the call's legs with
    their addresses, codecs, crypto and figures, from the rtpengine that holds it."""
    sc = calls["items"]["lossy, phone->pbx"]
    runs = sc.notes["gwctl"]
    shown = json.dumps({k: v[1][-3000:] for k, v in runs.items()}, indent=1)
    rc, out, err = runs["calls --json"]
    assert rc == 0, shown
    row = next(c for c in json.loads(out)["calls"] if c["call_id"] == sc.call.call_id)
    phone, pbx = row["media"]["legs"]
    assert (phone["side"], pbx["side"]) == ("phone", "pbx"), shown
    assert abs(pbx["loss"] - LOSS) <= 0.03 and phone["loss"] < 0.01, shown
    assert pbx["mos"] < phone["mos"] and pbx["jitter_ms"] is not None, shown
    rc, out, err = runs["calls"]
    ours = next((line for line in out.splitlines() if line.startswith(sc.call.call_id)), "")
    text_loss = re.search(r"\| pbx 127\.0\.0\.1:\d+ \d+p loss (\d+)%", ours)
    assert rc == 0 and text_loss and abs(int(text_loss.group(1)) / 100 - LOSS) <= 0.03, shown

    rc, out, err = runs[f"call {sc.call.call_id} --json"]
    assert rc == 0, shown
    report = json.loads(out)
    assert report["engine"] == f"udp:{sc_engine(calls)}" and report["dialog"]["state"] == "confirmed", shown
    phone, pbx = report["legs"]
    assert phone["protocol"] == "UDP/TLS/RTP/SAVPF" and phone["crypto"] and phone["peer"].startswith("127.0.0.2:")
    assert pbx["protocol"] == "RTP/AVP" and pbx["codec"] == "PCMU/8000"
    assert pbx["peer"] == f"127.0.0.1:{sc.leg.ep.port}", shown
    assert abs(pbx["loss"] - LOSS) <= 0.03 and pbx["reports"] >= 2 and report["mos"] == pbx["mos"], shown
    rc, out, err = runs[f"call {sc.call.call_id}"]
    assert rc == 0 and "WHAT CAME FROM IT" in out and "MOS" in out and "UDP/TLS/RTP/SAVPF" in out, shown
    rc, out, err = runs["call no-such-call"]
    assert rc == 1 and "no rtpengine in GW_RTPENGINE" in err and "no-such-call" in err, shown


def sc_engine(calls) -> str:
    return str(calls["gw"].cfg.rtpengines[0])
