"""The agent's side end to end: WWE's connector calls -> the bridge
(`gateway-agent` installed from the wheel into a fresh venv without Node.js,
as on an agent's PC) -> the JsSIP page it serves, in Debian's headless chromium
-> the real gateway (Kamailio, rtpengine, Redis) -> SIPp as the PBX (Genesys
SIP Server style).

Tests run in file order on one bridge and one page (one agent, one page); a
test that needs the agent registered registers it itself when it is not.
Screenshots of each state are kept in tests/_artifacts/agent/.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from support.agent_harness import (Bridge, Browser, Sipp, free_udp_pair, make_media, png_pixels,
                                   wait_for)
from support.tcpproxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "_artifacts" / "agent"
WWE = "https://wwe.contact-centre.test"
DN = "2401"
PASSWORD = "secret"
CUSTOMER = "0612345678"
MIN_BYTES = 8000      # 1 s of PCMU each way: RTP really flows, not a stray packet


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def workdir() -> Path:
    # Never skip: without the browser these tests would prove nothing.
    if shutil.which("chromium") is None:
        pytest.fail("chromium is missing: run agent/install.sh (make deps)")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    make_media(ARTIFACTS)  # the PBX's audio (pcap files SIPp plays)
    return ARTIFACTS


@pytest.fixture(scope="module")
def ws_proxy(gw):
    """The page reaches the gateway through a TCP relay (as through nginx), which a
    test can cut to drop the page's WebSocket without touching the page."""
    proxy = TcpProxy((gw.cfg.ws_listen.host, gw.cfg.ws_listen.port))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def bridge(gw, workdir, agent_install, ws_proxy):
    b = Bridge.start(ws_proxy.ws_url, WWE, workdir / "cert", workdir / "bridge.log",
                     command=agent_install.command, base_env=agent_install.env())
    yield b
    b.stop()


@pytest.fixture(scope="module")
def browser(bridge, workdir):
    br = Browser(f"{bridge.base}/phone", bridge.spki, workdir)
    try:
        wait_for(lambda: bridge.get("/health")[1]["page"], 30, "the phone page to connect to the bridge")
        yield br
    finally:
        (workdir / "page_console.log").write_text("\n".join(br.console))
        br.close()


@pytest.fixture
def sipps(gw):
    """SIPp runs a test starts; stopped (if still running) after it."""
    runs: list[Sipp] = []
    yield runs
    for s in runs:
        s.stop()


@pytest.fixture(autouse=True)
def _no_call_left(gw, bridge):
    """After each test: no call on the page and no session in rtpengine. A test
    that failed mid-call has its calls hung up here (and, as a last resort, its
    rtpengine sessions deleted) so the next test starts clean; it still fails."""
    yield
    if bridge.get("/health")[1].get("calls"):
        bridge.delete("/calls")
    try:
        wait_for(lambda: gw.rtpengine_sessions() == 0, 10, "rtpengine to hold no session after the test")
    except AssertionError:
        for call_id in gw.ng().list_calls():
            gw.ng().request({"command": "delete", "call-id": call_id})
        raise


# ------------------------------------------------------------------ helpers
def registrar(gw, workdir: Path, sipps: list, name: str = "registrar") -> Sipp:
    """The PBX as registrar on GW_PBX (tests/sipp/pbx_registrar.xml): one round, 401 then 200."""
    s = Sipp(name, "pbx_registrar.xml",
             ["-i", "127.0.0.1", "-p", str(gw.pbx.port), "-t", "u1", "-deadcall_wait", "0",
              "-key", "password", PASSWORD, "-key", "realm", "pbx.test", "-key", "qop", "auth"],
             workdir)
    sipps.append(s)
    return s


def pbx_calls_agent(gw, workdir: Path, sipps: list, name: str) -> Sipp:
    s = Sipp(name, "agent_pbx_calls_agent.xml",
             [str(gw.sip), "-i", "127.0.0.1", "-p", str(free_udp_pair()), "-t", "u1", "-s", DN,
              "-key", "caller", CUSTOMER, "-mp", str(free_udp_pair())],
             workdir, twin=True)
    sipps.append(s)
    return s


def pbx_answers(gw, workdir: Path, sipps: list, name: str) -> Sipp:
    s = Sipp(name, "agent_pbx_answers.xml",
             ["-i", "127.0.0.1", "-p", str(gw.pbx.port), "-t", "u1", "-mp", str(free_udp_pair())],
             workdir, twin=True)
    sipps.append(s)
    return s


def binding(gw) -> dict | None:
    raw = gw.redis_client().get(f"gw:reg:{DN}")
    return json.loads(raw) if raw else None


def ensure_registered(gw, bridge, browser, workdir, sipps) -> None:
    """Tests after the first need a registered agent; register with the v2 API if not."""
    if bridge.get("/GetIsEndpointActive")[1]["GetIsEndpointActiveResult"] and binding(gw):
        return
    reg = registrar(gw, workdir, sipps, "registrar_v2")
    status, body, _ = bridge.post("/register", {"connections": [
        {"user": DN, "server": str(gw.pbx), "password": PASSWORD}]}, origin=WWE)
    assert status == 200, body
    browser.wait_state("registered", 20)
    reg.assert_ok(10)
    wait_for(lambda: binding(gw), 5, "the binding in Redis")


def rtp_flows(browser: Browser, what: str, timeout: float = 15) -> dict:
    """Wait until the page's WebRTC stats show MIN_BYTES more received and sent."""
    wait_for(lambda: browser.stats()["bytesReceived"] > 0, timeout, f"first RTP from the PBX ({what})")
    s0 = browser.stats()
    t0 = time.monotonic()

    def grown():
        s = browser.stats()
        ok = (s["bytesReceived"] >= s0["bytesReceived"] + MIN_BYTES
              and s["bytesSent"] >= s0["bytesSent"] + MIN_BYTES)
        return s if ok else None
    s1 = wait_for(grown, timeout, f"RTP both ways ({what})", interval=0.2)
    result = {"what": what, "seconds": round(time.monotonic() - t0, 2),
              "rx_bytes": [s0["bytesReceived"], s1["bytesReceived"]],
              "tx_bytes": [s0["bytesSent"], s1["bytesSent"]],
              "codec": s1["codec"], "ice": s1["iceState"], "audio_level": s1["audioLevel"]}
    print(f"media {json.dumps(result)}")
    with open(ARTIFACTS / "media.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def talking_call(gw, bridge, browser: Browser, workdir: Path, sipps: list, name: str, what: str) -> Sipp:
    """The PBX calls the registered agent and answers it remotely (NOTIFY talk);
    audio flows both ways. Returns the PBX (SIPp, waiting for commands)."""
    ensure_registered(gw, bridge, browser, workdir, sipps)
    pbx = pbx_calls_agent(gw, workdir, sipps, name)
    browser.wait_state("ringing", 20)
    pbx.command("talk")
    browser.wait_state("talking", 20)
    rtp_flows(browser, what)
    return pbx


def relay_legs(gw, call_id: str) -> dict[str, int]:
    """Packets rtpengine received per call leg (tag), from an ng query."""
    q = gw.ng().query(call_id)
    legs = {}
    for tag, info in (q.get("tags") or {}).items():
        n = 0
        for media in info.get("medias", []):
            for stream in media.get("streams", []):
                n += int(stream.get("stats", {}).get("packets", 0))
        legs[tag] = n
    return legs


def current_call(bridge) -> dict:
    calls = [c for c in bridge.get("/calls")[1]["calls"] if c["state"] != "ended"]
    assert len(calls) == 1, calls
    return calls[0]


def sdp_of(msg: str) -> str:
    return msg.split("\n\n", 1)[1] if "\n\n" in msg else ""


# ------------------------------------------------------------------ 1
def test_1_wwe_v1_sequence_registers_the_dn(gw, bridge, browser, workdir, sipps):
    """GetDnSIP -> SetOptions -> SetSIPEndpointParameters -> RegisterDn -> poll
    GetIsEndpointActive, as WWE 8.5 does it, cross-origin with CORS: the DN ends
    up registered in the gateway's Redis."""
    browser.wait_state("unregistered", 20)
    reg = registrar(gw, workdir, sipps)

    def wwe(method: str, path: str, body=None):
        status, payload, headers = bridge.request(method, path, body=body, origin=WWE)
        assert status == 200, (path, status, payload)
        assert headers.get("access-control-allow-origin") == WWE, (path, headers)
        return payload

    # Preflight, as the browser sends it before WWE's JSON POSTs.
    status, _, headers = bridge.request("OPTIONS", "/RegisterDn/", origin=WWE, headers={
        "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type",
        "Access-Control-Request-Private-Network": "true"})
    assert status == 204
    assert headers["access-control-allow-origin"] == WWE
    assert headers["access-control-allow-private-network"] == "true"

    assert wwe("GET", "/GetDnSIP") == {"GetDnSIPResult": ""}
    assert wwe("POST", "/SetOptions", {"value": {"sipendpoint.dtmf-method": "rfc2833",
                                                 "sipendpoint.display-name": f"Agent {DN}"}}) \
        == {"SetOptionsResult": True}
    assert wwe("POST", "/SetSIPEndpointParameters", {"value": {"password": PASSWORD}}) \
        == {"SetSIPEndpointParametersResult": True}
    assert wwe("POST", "/SetPingPeriod", {"value": 5}) == {"SetPingPeriodResult": True}
    assert wwe("POST", "/RegisterDn/", {"addresses": [str(gw.pbx)], "users": [DN]}) \
        == {"RegisterDnResult": True}

    polls = 0

    def active() -> bool:
        nonlocal polls
        polls += 1
        return wwe("GET", "/GetIsEndpointActive")["GetIsEndpointActiveResult"]
    wait_for(active, 20, "GetIsEndpointActive to turn true", interval=0.25)
    reg.assert_ok(10)

    b = wait_for(lambda: binding(gw), 5, f"gw:reg:{DN} in Redis")
    assert b["user"] == DN
    assert b["contact"].endswith(".invalid;transport=ws"), b
    assert b["received"].startswith("sip:127.0.0.1:") and b["received"].endswith(";transport=ws"), b
    assert b["user_agent"].startswith("AgentPhone/"), b
    assert 0 < gw.redis_client().ttl(f"gw:reg:{DN}") <= b["expires"]

    assert wwe("GET", "/GetDnSIP") == {"GetDnSIPResult": DN}
    params = wwe("GET", "/GetSIPEndpointParameters")["GetSIPEndpointParametersResult"]
    assert params["EndpointStatus"] == "EndpointStatus_Ready"
    assert params["DN"] == DN and "password" not in json.dumps(params)
    pings = wwe("GET", "/Ping")["PingResult"]
    assert pings[0]["status"] == "EndpointStatus_Ready"
    assert any(e["event"] == "registration" and e["state"] == "registered" for e in pings), pings
    browser.wait_state("registered", 5)
    assert browser.eval("document.getElementById('status-detail').textContent") == \
        f"DN {DN} · ready for calls"
    browser.screenshot("1_registered")
    print(f"registered after {polls} GetIsEndpointActive polls; binding {b}")


# ------------------------------------------------------------------ 2
def test_2_pbx_call_answered_by_notify_talk_with_rtp_both_ways(gw, bridge, browser, workdir, sipps):
    """The PBX calls the agent and sends NOTIFY Event: talk: the page answers by
    itself and RTP flows both ways (page stats and rtpengine's two legs)."""
    ensure_registered(gw, bridge, browser, workdir, sipps)
    pbx = pbx_calls_agent(gw, workdir, sipps, "inbound_talk")
    browser.wait_state("ringing", 20)
    call = current_call(bridge)
    assert call["direction"] == "incoming" and call["peer"] == CUSTOMER and call["state"] == "ringing"
    assert call["call_id"] == pbx.call_id
    session = bridge.get("/session")[1]
    assert [c["state"] for c in session["phone"]["calls"] if c["uuid"] == call["uuid"]] == ["RINGING"]
    browser.screenshot("2_ringing")

    pbx.command("talk")  # WWE's "answer": Genesys SIP Server sends NOTIFY Event: talk
    browser.wait_state("talking", 20)
    media = rtp_flows(browser, "inbound call answered by NOTIFY talk")
    assert media["codec"] == "audio/PCMU" and media["ice"] in ("connected", "completed")
    legs = relay_legs(gw, pbx.call_id)
    assert len(legs) == 2 and all(n > 25 for n in legs.values()), legs
    browser.screenshot("2_talking")

    pbx.command("bye")
    pbx.assert_ok(20)
    browser.wait_state("registered", 15)

    notify_ok = [m for m in pbx.received("SIP/2.0 200") if "NOTIFY" in m.split("CSeq:")[1].split("\n")[0]]
    assert notify_ok, "the page did not answer 200 to NOTIFY Event: talk"
    answer = [m for m in pbx.received("SIP/2.0 200") if "application/sdp" in m]
    assert answer, "no 200 OK with SDP reached the PBX"
    sdp = sdp_of(answer[0])
    assert "RTP/AVP" in sdp and "SAVPF" not in sdp and "a=ice-ufrag" not in sdp and "a=fingerprint" not in sdp


# ------------------------------------------------------------------ 3
def test_3_notify_hold_then_talk_holds_and_retrieves(gw, bridge, browser, workdir, sipps):
    """Event: hold puts the call on hold (re-INVITE a=sendonly, page 'held', no
    audio from the PBX); Event: talk retrieves it and audio flows again. The
    agent then hangs up through the bridge."""
    pbx = talking_call(gw, bridge, browser, workdir, sipps, "inbound_hold", "before hold")

    pbx.command("hold")
    browser.wait_state("held", 20)
    call = current_call(bridge)
    assert call["state"] == "held"
    assert [c["state"] for c in bridge.get("/session")[1]["phone"]["calls"]
            if c["uuid"] == call["uuid"]] == ["HELD"]
    # Once the hold re-INVITE is through (its ACK reached the PBX), the PBX has
    # stopped sending: what the page receives stays put.
    wait_for(lambda: pbx.received("ACK "), 10, "the ACK of the hold re-INVITE at the PBX")
    before = browser.stats()["bytesReceived"]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert browser.stats()["bytesReceived"] <= before + 400, "audio still arriving while held"
        time.sleep(0.1)
    browser.screenshot("3_held")

    pbx.command("talk")
    browser.wait_state("talking", 20)
    rtp_flows(browser, "after retrieve")
    browser.screenshot("3_retrieved")

    status, body, _ = bridge.post("/calls/current/hangup", origin=WWE)
    assert status == 200, body
    pbx.assert_ok(20)  # the scenario ends on the agent's BYE
    browser.wait_state("registered", 15)

    reinvites = pbx.received("INVITE ")
    assert len(reinvites) == 2, [m.split("\n")[0] for m in reinvites]
    hold_sdp, retrieve_sdp = sdp_of(reinvites[0]), sdp_of(reinvites[1])
    assert "a=sendonly" in hold_sdp and "RTP/AVP" in hold_sdp, hold_sdp
    assert "a=sendonly" not in retrieve_sdp and "a=inactive" not in retrieve_sdp, retrieve_sdp
    assert pbx.received("BYE "), "the agent's hang-up did not reach the PBX"


# ------------------------------------------------------------------ 4
def test_4_makecall_through_bridge_and_hangup_from_either_side(gw, bridge, browser, workdir, sipps):
    """MakeCall via the bridge reaches the PBX (RTP/AVP offer, the dialled
    number); the agent hangs up the first call, the PBX the second; both end
    cleanly on the page, at the PBX and in rtpengine."""
    ensure_registered(gw, bridge, browser, workdir, sipps)
    for n, who_hangs_up in enumerate(("agent", "pbx"), 1):
        pbx = pbx_answers(gw, workdir, sipps, f"makecall_{who_hangs_up}")
        status, made, headers = bridge.post("/calls", {"to": "5000"}, origin=WWE)
        assert status == 201, made
        assert headers.get("access-control-allow-origin") == WWE
        browser.wait_state("dialing", 20)
        pbx.call_id = made["call_id"]
        wait_for(lambda: pbx.received("INVITE "), 10, "the INVITE at the PBX")
        if n == 1:
            browser.screenshot("4_dialing")
        pbx.command("answer")
        browser.wait_state("talking", 20)
        rtp_flows(browser, f"outbound call {n}")
        legs = relay_legs(gw, made["call_id"])
        assert len(legs) == 2 and all(x > 25 for x in legs.values()), legs
        if n == 1:
            status, body, _ = bridge.post(f"/calls/{made['uuid']}/dtmf", {"tones": "12#"}, origin=WWE)
            assert status == 200 and body["transport"] == "RFC2833", body
            browser.screenshot("4_talking_outbound")
            status, body, _ = bridge.post(f"/calls/{made['uuid']}/hangup", origin=WWE)
            assert status == 200, body
        else:
            pbx.command("bye")
        pbx.assert_ok(20)
        browser.wait_state("registered", 15)
        wait_for(lambda: gw.rtpengine_sessions() == 0, 10, "rtpengine session deleted")

        invite = pbx.received("INVITE ")[0]
        assert invite.startswith("INVITE sip:5000@"), invite.split("\n")[0]
        assert f"sip:{DN}@" in invite.split("From:", 1)[1].split("\n")[0]
        sdp = sdp_of(invite)
        assert "RTP/AVP" in sdp and "a=ice-ufrag" not in sdp and "a=fingerprint" not in sdp, sdp
        if who_hangs_up == "agent":
            assert pbx.received("BYE "), "the agent's BYE did not reach the PBX"
        else:
            assert pbx.received("SIP/2.0 200"), "the page did not answer the PBX's BYE"
    events = bridge.get("/Ping", origin=WWE)[1]["PingResult"]
    ended = [e for e in events if e["event"] == "call" and e["state"] == "ended"]
    assert len(ended) >= 2, events


# ------------------------------------------------------------------ 5
STATE_COLOURS = {
    "registered": (0x15, 0x80, 0x3D), "ringing": (0xEA, 0x58, 0x0C), "talking": (0x1D, 0x4E, 0xD8),
    "held": (0x7E, 0x22, 0xCE), "dialing": (0xB4, 0x53, 0x09), "unregistered": (0x6B, 0x72, 0x80),
}


def _nearest_state(rgb: tuple[int, int, int]) -> str:
    return min(STATE_COLOURS, key=lambda s: sum((a - b) ** 2 for a, b in zip(STATE_COLOURS[s], rgb)))


def test_5_screenshot_of_each_state(gw, bridge, browser, workdir, sipps):
    """A screenshot per state (registered, ringing, talking, held) is kept under
    tests/_artifacts/agent/, and each shows that state: the status banner's
    words and colour are read back from the PNG and the DOM."""
    ensure_registered(gw, bridge, browser, workdir, sipps)
    shots = {}

    def shoot(state: str) -> None:
        browser.wait_state(state, 20)
        banner = browser.eval("(() => { const r = document.getElementById('status').getBoundingClientRect();"
                              " return [Math.round(r.left), Math.round(r.top), Math.round(r.width),"
                              " Math.round(r.height)]; })()")
        text = browser.eval("document.getElementById('status-text').textContent")
        path = browser.screenshot(f"5_{state}")
        w, h, px = png_pixels(path)
        assert (w, h) == (480, 900), (w, h)
        x, y = banner[0] + 8, banner[1] + banner[3] - 6   # inside the banner, below its text
        colour = px(x, y)
        shots[state] = {"file": str(path.relative_to(ROOT)), "text": text, "banner_rgb": colour}
        assert _nearest_state(colour) == state, (state, colour, path)

    shoot("registered")
    pbx = pbx_calls_agent(gw, workdir, sipps, "screenshots")
    shoot("ringing")
    pbx.command("talk")
    shoot("talking")
    pbx.command("hold")
    shoot("held")
    pbx.command("talk")
    browser.wait_state("talking", 20)
    pbx.command("bye")
    pbx.assert_ok(20)
    browser.wait_state("registered", 15)
    assert {s["text"] for s in shots.values()} == {"Registered", "Ringing", "Talking", "On hold"}
    (workdir / "screenshots.json").write_text(json.dumps(shots, indent=2))
    print(json.dumps(shots, indent=2))


# ------------------------------------------------------------------ reconnect
def test_5b_websocket_cut_mid_call_notify_hold_and_talk_still_work(gw, bridge, browser, workdir, sipps,
                                                                    ws_proxy):
    """Mid-call the page's WebSocket is cut (the relay in front of the gateway
    closes it; the page is not touched). JsSIP reconnects and registers again by
    itself with the same Contact and +sip.instance; the audio never depended on
    the WebSocket; the PBX's NOTIFY hold and talk reach the page over its new
    connection, and the agent still hangs up."""
    pbx = talking_call(gw, bridge, browser, workdir, sipps, "reconnect", "before the WebSocket is cut")
    before = binding(gw)
    reg = registrar(gw, workdir, sipps, "registrar_reconnect")  # answers the page's new REGISTER

    def registration() -> str:
        return browser.eval("window.phone.state().registration")
    assert ws_proxy.cut() >= 1
    # JsSIP reports 'disconnected', then 'unregistered' (its registrator lost the transport).
    wait_for(lambda: registration() != "registered", 10, "the page to lose its WebSocket")
    t0 = time.monotonic()
    wait_for(lambda: registration() == "registered", 30, "JsSIP to reconnect and register again")
    back_after = time.monotonic() - t0
    reg.assert_ok(10)
    after = wait_for(lambda: (b := binding(gw)) and b["conid"] != before["conid"] and b, 5,
                     "the binding of the new connection")
    assert (after["contact"], after["instance"]) == (before["contact"], before["instance"])
    assert browser.state() == "talking", "the call went on while the WebSocket was down"
    rtp_flows(browser, "after the reconnect")
    browser.screenshot("5b_reconnected")

    pbx.command("hold")
    browser.wait_state("held", 20)
    pbx.command("talk")
    browser.wait_state("talking", 20)
    rtp_flows(browser, "held and retrieved after the reconnect")
    status, body, _ = bridge.post("/calls/current/hangup", origin=WWE)
    assert status == 200, body
    pbx.assert_ok(20)
    browser.wait_state("registered", 15)

    rerouted = [line.split("event=", 1)[1] for line in gw.kamailio_log().splitlines()
                if "event=dialog.rerouted" in line and pbx.call_id in line]
    assert len(rerouted) == 2 and all("method=NOTIFY" in r and f"to_conid={after['conid']}" in r
                                      for r in rerouted), rerouted
    assert len(pbx.received("INVITE ")) == 2, "the page's hold and retrieve re-INVITEs reached the PBX"
    print(f"reconnect: page registered again {back_after:.1f} s after the cut "
          f"(JsSIP connection_recovery_min_interval 2 s); conid {before['conid']} -> {after['conid']}")


# ------------------------------------------------------------------ logout
def test_6_logout_unregisters_the_dn(gw, bridge, browser, workdir, sipps):
    """WWE logout (v2 DELETE /session): the page un-REGISTERs and the binding
    leaves Redis; the connector reports the endpoint not ready."""
    ensure_registered(gw, bridge, browser, workdir, sipps)
    reg = registrar(gw, workdir, sipps, "registrar_logout")
    status, body, _ = bridge.delete("/session", origin=WWE)
    assert status == 200, body
    wait_for(lambda: binding(gw) is None, 20, f"gw:reg:{DN} to leave Redis")
    reg.assert_ok(10)
    browser.wait_state("unregistered", 10)
    assert bridge.get("/GetIsEndpointActive")[1] == {"GetIsEndpointActiveResult": False}
    assert bridge.get("/GetSIPEndpointParameters")[1]["GetSIPEndpointParametersResult"][
        "EndpointStatus"] == "EndpointStatus_NotRegistered"
