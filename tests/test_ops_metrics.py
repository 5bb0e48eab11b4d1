"""Operations, against the real daemons: /metrics counts what really happened
(registrations through the PBX's digest challenge, a wrong password, an agent's
call out and a call to an agent, played by the WebSocket test phone and SIPp),
/health turns 503 and names the dependency that is down, and every SIP
transaction decision is one logfmt line carrying Call-ID, method and outcome.
(TURN credentials: tests/test_turn_register.py.)

Counters are compared as deltas around what the test does. Whatever the SIPp PBX
sends over UDP is counted from its own message trace (retransmissions included),
so the expected figures are exact even when a packet is sent twice."""
from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from conftest import ARTIFACTS, wait_until
from gw import stack
from kemi import logfmt
from support.sipp import SippRun
from support.wsphone import AnswerPolicy, WsPhone, webrtc_sdp
from test_core_calls import finished, sipp_messages

PASSWORD = "secret"
LOGS = ARTIFACTS / "ops"

# What issue 6 asks /metrics to carry (Prometheus names: gateway_ prefix, _total
# counters, base units).
FAMILIES = {
    "gateway_sip_requests": "counter", "gateway_sip_replies": "counter",
    "gateway_calls": "counter", "gateway_calls_active": "gauge",
    "gateway_call_setup_seconds": "histogram", "gateway_registrations_active": "gauge",
    "gateway_register_failures": "counter", "gateway_rtpengine_sessions": "gauge",
    "gateway_rtpengine_packets": "counter", "gateway_rtpengine_errors": "counter",
    "gateway_rtpengine_control_errors": "counter", "gateway_redis_errors": "counter",
    "gateway_up": "gauge",
    # issue 11
    "gateway_auth_failures": "counter", "gateway_auth_blocked": "counter",
}


# ----------------------------------------------------------------- helpers
def http_get(s, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    conn = http.client.HTTPConnection(s.cfg.ws_listen.host, s.cfg.ws_listen.port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


class Scrape:
    """One parsed /metrics exposition."""

    def __init__(self, s) -> None:
        status, body, headers = http_get(s, "/metrics")
        assert status == 200, body
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        self.families = {f.name: f for f in text_string_to_metric_families(body)}
        self.samples: dict[tuple[str, tuple], float] = {}
        for fam in self.families.values():
            for sample in fam.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {dict(k[1])[label]: v for k, v in self.samples.items() if k[0] == name}


def deltas(before: Scrape, after: Scrape, name: str, label: str) -> dict[str, float]:
    b, a = before.by_label(name, label), after.by_label(name, label)
    return {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b) if a.get(k, 0) != b.get(k, 0)}


class PbxSent(Counter):
    """What the SIPp PBX sent, by request method or reply class, from its trace."""

    def add(self, run: SippRun) -> None:
        for msg in sipp_messages(run, "sent"):
            first = msg.split("\n", 1)[0]
            m = re.match(r"^SIP/2\.0 (\d)\d\d", first)
            self[f"{m.group(1)}xx" if m else first.split(" ", 1)[0]] += 1


def wait_port_free(port: int, timeout: float = 3.0) -> None:
    """The previous test's PBX may still hold the port for a moment (a socket closed
    while another thread sits in recvfrom is released when that call returns)."""
    wait_until(lambda: stack.udp_port_free(port), timeout, f"UDP port {port} free for SIPp")


def pbx(name: str, gw, **kw) -> SippRun:
    LOGS.mkdir(parents=True, exist_ok=True)
    port = kw.pop("port", gw.pbx.port)
    wait_port_free(port)
    return SippRun(name, port=port, log_dir=LOGS, **kw)


async def register(gw, user: str, password: str, sent: PbxSent, policy=None) -> tuple[WsPhone, int]:
    # One registration round (-m 1), and SIPp left to exit by itself: killed, it
    # may lose the end of its trace, and the count of what it sent with it.
    with pbx("pbx_registrar.xml", gw, calls=1, keys={"password": PASSWORD}) as reg:
        phone = await WsPhone.connect(gw.ws_url, user=user, domain="pbx.test", password=password,
                                      policy=policy or AnswerPolicy())
        resp = await phone.register(expires=600)
        assert await finished(reg, 10) == 0, reg.errors()
    sent.add(reg)
    return phone, resp.status


async def unregister(gw, phone: WsPhone, sent: PbxSent) -> int:
    with pbx("pbx_registrar.xml", gw, calls=1, keys={"password": PASSWORD}) as reg:
        resp = await phone.unregister()
        assert await finished(reg, 10) == 0, reg.errors()
    sent.add(reg)
    await phone.close()
    return resp.status


def decision_lines(log: str, call_id: str) -> list[dict[str, str]]:
    """The app's logfmt lines (after Kamailio's prefix) for one Call-ID."""
    out = []
    for line in log.splitlines():
        i = line.find("event=")
        if i >= 0 and f"call_id={call_id}" in line:
            fields = logfmt.parse(line[i:])
            if fields.get("call_id") == call_id:
                out.append(fields)
    return out


# ---------------------------------------------------------- counters match
def test_metrics_count_what_registrations_and_calls_did(gw):
    r = gw.redis_client()
    sent = PbxSent()
    keys_before = set(r.scan_iter("gw:reg:*"))
    before = Scrape(gw)

    async def go():
        caller, st1 = await register(gw, "1401", PASSWORD, sent)
        callee, st2 = await register(gw, "1402", PASSWORD, sent, AnswerPolicy(mode="auto"))
        assert (st1, st2) == (200, 200)
        keys_mid = set(r.scan_iter("gw:reg:*"))
        registered = Scrape(gw)
        # a wrong password: the PBX's 403 is a REGISTER failure with that reason
        intruder, st3 = await register(gw, "1409", "wrong", sent)
        await intruder.close()
        assert st3 == 403

        # the agent calls out; the PBX rings 100 ms before answering
        with pbx("pbx_uas.xml", gw, keys={"hangup": "phone"}) as uas:
            out_call = await caller.invite("sip:2000@pbx.test", webrtc_sdp())
            assert (await out_call.wait_final()).status == 200
            sessions = gw.ng().list_calls()
            during = Scrape(gw)
            await out_call.bye()
            assert await finished(uas, 10) == 0, uas.errors()
        sent.add(uas)

        # the PBX calls the other agent, who answers; the PBX hangs up
        with pbx("pbx_uac.xml", gw, port=stack.free_port(), remote=str(gw.sip), service="1402",
                 keys={"hangup": "pbx", "call_ms": 300}) as uac:
            in_call = await callee.wait_incoming(10)
            await in_call.wait_state("terminated", timeout=10)
            assert await finished(uac, 10) == 0, uac.errors()
        sent.add(uac)

        assert await unregister(gw, caller, sent) == 200
        assert await unregister(gw, callee, sent) == 200
        return keys_mid, registered, sessions, during, out_call.call_id, in_call.call_id

    keys_mid, registered, sessions, during, out_id, in_id = asyncio.run(go())
    wait_until(lambda: Scrape(gw).value("gateway_calls_active") == 0, 5, "media sessions deleted")
    after = Scrape(gw)

    # names and types
    for name, kind in FAMILIES.items():
        assert name in after.families, f"{name} missing from /metrics"
        assert after.families[name].type == kind, (name, after.families[name].type)

    # SIP requests by method: the phones' (WebSocket, no retransmissions) plus the PBX's
    assert deltas(before, after, "gateway_sip_requests_total", "method") == {
        "REGISTER": 2 * 2 + 2 + 2 * 2,         # 401 then 200, twice; 401 then 403; unregister x2
        "INVITE": 1 + sent["INVITE"],
        "ACK": 1 + sent["ACK"],
        "BYE": 1 + sent["BYE"],
    }
    # replies by class: the PBX's, plus the callee's 180, 200 (INVITE) and 200 (BYE)
    assert deltas(before, after, "gateway_sip_replies_total", "code_class") == {
        "1xx": sent["1xx"] + 1, "2xx": sent["2xx"] + 2, "4xx": sent["4xx"]}
    assert sent["4xx"] == 5 + 1      # a 401 challenge per REGISTER round, and the 403

    # calls and their setup time: one each way; the outbound one rang >= 100 ms
    assert deltas(before, after, "gateway_calls_total", "direction") == {"outbound": 1, "inbound": 1}
    count = after.value("gateway_call_setup_seconds_count") - before.value("gateway_call_setup_seconds_count")
    total = after.value("gateway_call_setup_seconds_sum") - before.value("gateway_call_setup_seconds_sum")
    assert count == 2 and 0.1 <= total < 10, (count, total)
    inf = after.value("gateway_call_setup_seconds_bucket", le="+Inf") - \
        before.value("gateway_call_setup_seconds_bucket", le="+Inf")
    fast = after.value("gateway_call_setup_seconds_bucket", le="0.1") - \
        before.value("gateway_call_setup_seconds_bucket", le="0.1")
    assert inf == 2 and fast <= 1, "the outbound call rang 100 ms: it cannot be in le=0.1"

    # registrations: the gauge is Redis's count, +2 while registered, back after
    assert registered.value("gateway_registrations_active") == len(keys_mid)
    assert keys_mid - keys_before == {"gw:reg:1401", "gw:reg:1402"}
    assert (registered.value("gateway_registrations_active") - before.value("gateway_registrations_active")
            == 2 - len(keys_before - keys_mid))
    assert after.value("gateway_registrations_active") == len(set(r.scan_iter("gw:reg:*")))
    assert r.get("gw:reg:1401") is None and r.get("gw:reg:1409") is None

    # REGISTER failures: exactly the wrong password, by the PBX's status
    assert deltas(before, after, "gateway_register_failures_total", "reason") == {"403": 1}

    # live gauges from rtpengine while the call was up, and the dependencies
    assert out_id in sessions
    assert during.value("gateway_calls_active") == len(sessions) >= 1
    assert during.value("gateway_rtpengine_sessions") == len(sessions)
    assert after.value("gateway_up", dependency="redis") == 1
    assert after.value("gateway_up", dependency="rtpengine") == 1
    assert after.value("gateway_rtpengine_packets_total") >= before.value("gateway_rtpengine_packets_total")
    for name in ("gateway_redis_errors_total", "gateway_rtpengine_control_errors_total"):
        assert after.value(name) == before.value(name), name

    # one logfmt line per decision, with the Call-ID: INVITE and BYE of both calls
    log = gw.kamailio_log()
    for call_id in (out_id, in_id):
        lines = decision_lines(log, call_id)
        for method in ("INVITE", "BYE"):
            decisions = [f for f in lines if f.get("method") == method and "outcome" in f]
            assert decisions, f"no decision logged for {method} of {call_id}:\n{lines}"
            assert all(f["event"] for f in decisions)
    out_lines = decision_lines(log, out_id)
    # the phone's requests (WebSocket: never retransmitted) were decided exactly once each
    for method in ("INVITE", "BYE"):
        assert len([f for f in out_lines if f.get("method") == method and "outcome" in f]) == 1, out_lines
    assert any(f["event"] == "media.delete" for f in out_lines)
    failed = [f for f in re.findall(r"event=registrar\.reply .*", log) if "user=1409" in f]
    assert failed and "outcome=403" in failed[-1] and "call_id=" in failed[-1]


# ------------------------------------------------------------------ /health
def test_health_turns_503_and_names_what_is_down(fresh_gw):
    s = fresh_gw
    engine = f"rtpengine udp:{s.cfg.rtpengines[0]}"
    status, body, headers = http_get(s, "/health")
    assert status == 200 and headers["content-type"] == "application/json"
    pbx = f"pbx {s.pbx}"   # a lone PBX: not probed, counted up
    assert json.loads(body) == {"dependencies": {"redis": "up", engine: "up", pbx: "up"},
                                "node": str(s.sip), "status": "up"}

    s.rtpengine.stop()
    status, body, _ = http_get(s, "/health")
    data = json.loads(body)
    assert status == 503, body
    assert data["status"] == "down" and data["dependencies"] == {"redis": "up", engine: "down", pbx: "up"}
    scrape = Scrape(s)
    assert scrape.value("gateway_up", dependency="rtpengine") == 0
    assert scrape.value("gateway_up", dependency="redis") == 1
    assert "gateway_rtpengine_sessions" not in scrape.families

    s.redis.stop()
    status, body, _ = http_get(s, "/health")
    assert status == 503 and json.loads(body)["dependencies"] == {"redis": "down", engine: "down",
                                                                  pbx: "up"}
    scrape = Scrape(s)
    assert scrape.value("gateway_up", dependency="redis") == 0
    assert "gateway_registrations_active" not in scrape.families


# ------------------------------------------------- retransmitted in-dialog requests
def test_indialog_retransmission_is_one_decision(gw, monkeypatch):
    """The PBX resends an in-dialog INFO (UDP, 500 ms) while the phone takes 1.3 s to
    answer: the phone gets it once, the log has one decision for it, and
    gateway_sip_requests_total counts both arrivals."""
    from support import wsphone

    answer_now = wsphone.Call._on_request

    async def slow_info(self, req):
        if req.method == "INFO":
            await asyncio.sleep(1.3)
        await answer_now(self, req)

    monkeypatch.setattr(wsphone.Call, "_on_request", slow_info)
    sent = PbxSent()
    before = Scrape(gw)

    async def go():
        phone, status = await register(gw, "1403", PASSWORD, sent, AnswerPolicy(mode="auto"))
        assert status == 200
        with pbx("pbx_uac.xml", gw, port=stack.free_port(), remote=str(gw.sip), service="1403",
                 keys={"steps": "info", "step_ms": 50, "hangup": "pbx", "call_ms": 200}) as uac:
            call = await phone.wait_incoming(10)
            await call.wait_state("terminated", timeout=15)
            assert await finished(uac, 15) == 0, uac.errors()
        sent.add(uac)
        assert await unregister(gw, phone, sent) == 200
        return call

    call = asyncio.run(go())
    after = Scrape(gw)
    assert sent["INFO"] >= 2, "SIPp did not retransmit the INFO: the phone answered too fast"
    assert [r.method for r in call.received].count("INFO") == 1
    assert deltas(before, after, "gateway_sip_requests_total", "method")["INFO"] == sent["INFO"]
    infos = [f for f in decision_lines(gw.kamailio_log(), call.call_id)
             if f.get("method") == "INFO" and "outcome" in f]
    assert len(infos) == 1, infos
