"""Issue 20, "Calls survive an agent's WebSocket reconnect", against the real
daemons: an answered call, the phone's WebSocket drops and comes back (same
Contact, same +sip.instance, REGISTER again) and the PBX's in-dialog requests
(NOTIFY hold/talk, BYE) still reach the phone, over its new connection, on
this node or on the node it reconnected to. The PBX is tests/support/fakepbx.py
(UDP, the PBX's own timing), the phone tests/support/wsphone.py."""
from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import wait_until
from kemi import logfmt
from support import relstack
from support.fakepbx import PBX_SDP, FakePbx
from support.wsphone import AnswerPolicy, WsPhone, sdp_set_direction, webrtc_sdp

HOLD = [("Event", "hold")]
TALK = [("Event", "talk")]


@pytest.fixture
def pbx(gw):
    p = FakePbx(gw.pbx.host, gw.pbx.port)
    yield p
    p.close()


def sip_addr(stack) -> tuple[str, int]:
    return stack.sip.host, stack.sip.port


def binding(stack, dn: str) -> dict | None:
    raw = stack.redis_client().get(f"gw:reg:{dn}")
    return json.loads(raw) if raw else None


def log_events(stack, event: str, call_id: str) -> list[dict[str, str]]:
    out = []
    for line in stack.kamailio_log().splitlines():
        if f"event={event} " in line and call_id in line:
            out.append(logfmt.parse(line[line.index("event="):]))
    return out


def counter(stack, name: str) -> float:
    with urllib.request.urlopen(f"http://{stack.cfg.ws_listen}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def registered_phone(stack, dn: str, **kw) -> WsPhone:
    phone = await WsPhone.connect(stack.ws_url, user=dn, domain="pbx.test",
                                  policy=AnswerPolicy(mode="auto"), **kw)
    assert (await phone.register()).status == 200
    return phone


async def answered_call(stack, pbx: FakePbx, phone: WsPhone, via=None):
    """The PBX calls the phone's DN (through `via`, default the phone's node); answered."""
    call = await asyncio.to_thread(pbx.call, sip_addr(via or stack), phone.user)
    assert call.status == 200, call.final
    incoming = await phone.wait_incoming(5)
    await incoming.wait_confirmed()
    return call, incoming


async def dropped_mid_call(stack, pbx: FakePbx, dn: str):
    """A registered phone takes the PBX's call, then its WebSocket drops:
    (phone, its binding before the drop, the PBX's call, the phone's call)."""
    phone = await registered_phone(stack, dn)
    old = binding(stack, dn)
    call, incoming = await answered_call(stack, pbx, phone)
    await drop(stack, phone, old["conid"])
    return phone, old, call, incoming


def connection_open(stack, conid: int) -> bool:
    return re.search(rf"^\s*id: {conid}$", relstack.kamcmd(stack.ctl(), "core.tcp_list"), re.M) is not None


async def drop(stack, phone: WsPhone, conid: int) -> None:
    """Close the phone's WebSocket; wait until the gateway has closed its side."""
    await phone.ws.close()
    await asyncio.to_thread(wait_until, lambda: not connection_open(stack, conid), 5,
                            f"the gateway to close connection {conid}")


async def come_back(stack, phone: WsPhone, old: dict) -> dict:
    """Reconnect (to `stack`'s node) and register again; the new binding."""
    await phone.reconnect(stack.ws_url)
    assert (await phone.register()).status == 200
    new = binding(stack, phone.user)
    assert new is not None and (new["node"], new["conid"]) != (old["node"], old["conid"])
    return new


# The PBX's requests block a thread each until their final response: enough
# threads that many can wait at once (asyncio's default pool has cores + 4).
_PBX_THREADS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="pbx")


async def pbx_request(call, method: str, cseq: int, extra=(), timeout: float = 10.0, body: str = ""):
    return await asyncio.get_running_loop().run_in_executor(
        _PBX_THREADS, call.request, method, cseq, list(extra), timeout, body)


# ------------------------------------------------------------------ the scenario
def test_notify_hold_talk_and_bye_reach_the_phone_over_its_new_connection(gw, pbx):
    dn = "1201"
    rerouted0 = counter(gw, "gateway_dialog_rerouted_total")

    async def go():
        phone, old, call, incoming = await dropped_mid_call(gw, pbx, dn)
        call_id = call.invite.call_id
        new = await come_back(gw, phone, old)
        assert new["contact"] == old["contact"] and new["instance"] == old["instance"]
        statuses = []
        for cseq, (method, extra) in enumerate((("NOTIFY", HOLD), ("NOTIFY", TALK)), start=2):
            final = await pbx_request(call, method, cseq, extra)
            statuses.append(final.status if final else None)
        # Media was not touched: rtpengine still holds the call until the BYE.
        assert call_id in gw.ng().list_calls()
        final = await pbx_request(call, "BYE", 4)
        statuses.append(final.status if final else None)
        await incoming.wait_state("terminated", timeout=5)
        await phone.close()
        return call_id, statuses, incoming, old, new

    call_id, statuses, incoming, old, new = asyncio.run(go())
    assert statuses == [200, 200, 200]
    got = [(m.method, m.get("Event")) for m in incoming.received if m.method != "ACK"]
    assert got == [("NOTIFY", "hold"), ("NOTIFY", "talk"), ("BYE", None)], got
    lines = log_events(gw, "dialog.rerouted", call_id)
    assert [(x["method"], x["from_conid"], x["to_conid"]) for x in lines] == \
        [(m, str(old["conid"]), str(new["conid"])) for m in ("NOTIFY", "NOTIFY", "BYE")], lines
    assert counter(gw, "gateway_dialog_rerouted_total") - rerouted0 == 3
    wait_until(lambda: call_id not in gw.ng().list_calls(), 5, "rtpengine session deleted by the BYE")


def test_reinvite_update_info_refer_reach_the_phone_after_it_reconnected(gw, pbx):
    """The PBX's other in-dialog requests too; the re-INVITE's SDP goes through
    rtpengine as always (WebRTC toward the phone, plain RTP back to the PBX)."""
    dn = "1205"

    async def go():
        phone, old, call, incoming = await dropped_mid_call(gw, pbx, dn)
        await come_back(gw, phone, old)
        hold = PBX_SDP.replace("a=sendrecv", "a=sendonly")
        contact = [("Contact", f"<sip:pbx@{pbx.host}:{pbx.port}>")]  # target refresh requests carry one
        finals = {"INVITE": await pbx_request(call, "INVITE", 2, contact, body=hold)}
        call.ack(2)
        finals["UPDATE"] = await pbx_request(call, "UPDATE", 3, contact)
        finals["INFO"] = await pbx_request(call, "INFO", 4, [("Content-Type", "application/dtmf-relay")])
        finals["REFER"] = await pbx_request(call, "REFER", 5, [("Refer-To", "<sip:3000@pbx.test>")])
        # The phone's own requests on its new connection reach the PBX as before.
        finals["phone INFO"] = await incoming.info()
        finals["BYE"] = await pbx_request(call, "BYE", 6)
        await incoming.wait_state("terminated", timeout=5)
        await phone.close()
        return call.invite.call_id, finals, incoming

    call_id, finals, incoming = asyncio.run(go())
    assert {m: f.status if f else None for m, f in finals.items()} == \
        {"INVITE": 200, "UPDATE": 200, "INFO": 200, "REFER": 202, "phone INFO": 200, "BYE": 200}
    got = [m.method for m in incoming.received[1:]]   # after the first ACK
    assert sorted(got) == sorted(["INVITE", "ACK", "UPDATE", "INFO", "REFER", "BYE"]), got
    reinvite = incoming.received[1]
    assert "UDP/TLS/RTP/SAVPF" in reinvite.sdp and "a=sendonly" in reinvite.sdp
    answer = finals["INVITE"].body
    assert "RTP/AVP" in answer and "a=fingerprint" not in answer and "a=recvonly" in answer
    assert len(log_events(gw, "dialog.rerouted", call_id)) == 6  # the ACK too
    wait_until(lambda: call_id not in gw.ng().list_calls(), 5, "rtpengine session deleted by the BYE")


# ------------------------------------------------------------------ the gap
def test_notify_in_the_gap_waits_for_the_phone_to_register_again(gw, pbx):
    dn = "1202"

    async def go():
        phone, old, call, incoming = await dropped_mid_call(gw, pbx, dn)
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        notify = asyncio.create_task(pbx_request(call, "NOTIFY", 2, TALK))
        await asyncio.sleep(2.0)
        new = await come_back(gw, phone, old)
        final = await notify
        waited = time.monotonic() - t0
        bye = await pbx_request(call, "BYE", 3)
        await phone.close()
        return call.invite.call_id, final, waited, incoming, bye, old, new

    call_id, final, waited, incoming, bye, old, new = asyncio.run(go())
    assert final is not None and final.status == 200, final
    assert 2.0 <= waited < 5.0, f"the NOTIFY was answered {waited:.2f} s after it was sent"
    assert [m.method for m in incoming.received if m.method != "ACK"] == ["NOTIFY", "BYE"]
    assert bye is not None and bye.status == 200
    (waiting,) = log_events(gw, "dialog.waiting", call_id)
    assert waiting["from_conid"] == str(old["conid"])
    first = log_events(gw, "dialog.rerouted", call_id)[0]
    assert first["to_conid"] == str(new["conid"]) and int(first["waited_ms"]) >= 1900
    print(f"gap: NOTIFY answered {waited:.2f} s after it was sent (phone back after 2 s)")


def test_notify_in_the_gap_without_reconnect_gets_480_after_the_wait(gw, pbx):
    dn = "1203"
    timeouts0 = counter(gw, "gateway_dialog_reconnect_timeouts_total")

    async def go():
        phone, old, call, _ = await dropped_mid_call(gw, pbx, dn)
        t0 = time.monotonic()
        final = await pbx_request(call, "NOTIFY", 2, TALK, timeout=15)
        waited = time.monotonic() - t0
        # The phone never came back: the PBX hangs up; the gateway frees the media.
        bye = await pbx_request(call, "BYE", 3, timeout=15)
        await phone.close()
        return call.invite.call_id, final, waited, bye

    call_id, final, waited, bye = asyncio.run(go())
    assert final is not None and final.status == 480, final
    assert 4.9 <= waited < 6.5, f"480 came {waited:.2f} s after the NOTIFY (GW_RECONNECT_WAIT=5)"
    assert bye is not None and bye.status == 480
    assert counter(gw, "gateway_dialog_reconnect_timeouts_total") - timeouts0 == 2
    wait_until(lambda: call_id not in gw.ng().list_calls(), 5, "rtpengine session deleted by the BYE")
    print(f"no reconnect: 480 after {waited:.2f} s")


# ------------------------------------------------------------------ the wrong phone
def test_a_second_phone_under_the_same_dn_never_gets_the_first_phones_bye(gw, pbx):
    dn = "1204"

    async def go():
        first, old, call, incoming = await dropped_mid_call(gw, pbx, dn)
        # Another browser (its own Contact and +sip.instance) registers the same DN.
        second = await registered_phone(gw, dn)
        now = binding(gw, dn)
        assert now["instance"] != old["instance"] and now["contact"] != old["contact"]
        t0 = time.monotonic()
        bye = await pbx_request(call, "BYE", 2, timeout=10)
        waited = time.monotonic() - t0
        await asyncio.sleep(0.3)  # anything wrongly sent to the second phone has arrived by now
        stray = [m.summary() for m in second.received if m.is_request]
        await first.close()
        await second.close()
        return call.invite.call_id, bye, waited, stray, incoming

    call_id, bye, waited, stray, incoming = asyncio.run(go())
    assert stray == [], f"the second phone got the first phone's requests: {stray}"
    assert bye is not None and bye.status == 480, bye
    assert waited < 2, "no reason to wait: the DN's binding is another phone's"
    assert "BYE" not in [m.method for m in incoming.received]
    assert log_events(gw, "dialog.rerouted", call_id) == []
    wait_until(lambda: call_id not in gw.ng().list_calls(), 5, "rtpengine session deleted by the BYE")


# ------------------------------------------------------------------ no worker held
@pytest.fixture
def short_wait_gw(tmp_path):
    """A private gateway (children=2, as every test stack) with GW_RECONNECT_WAIT=2."""
    from conftest import _start_stack, _stop_stack
    s = _start_stack(tmp_path / "stack", {"GW_RECONNECT_WAIT": "2"})
    yield s
    _stop_stack(s)


def test_waiting_requests_hold_no_worker(short_wait_gw):
    """12 NOTIFYs wait at once for their phones on a gateway with 2 SIP workers,
    while a new agent registers and takes a whole call; then half the phones come
    back (their NOTIFY gets 200) and the other half's get 480 after GW_RECONNECT_WAIT."""
    gw, n = short_wait_gw, 12
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)

    async def go():
        phones, calls = [], []
        for i in range(n):
            phone = await registered_phone(gw, f"13{i:02d}")
            calls.append(await answered_call(gw, pbx, phone))
            phones.append(phone)
        olds = [binding(gw, p.user) for p in phones]
        for phone, old in zip(phones, olds):
            await drop(gw, phone, old["conid"])
        t0 = time.monotonic()
        notifies = [asyncio.create_task(pbx_request(call, "NOTIFY", 2, TALK)) for call, _ in calls]
        await asyncio.to_thread(wait_until, lambda: gw.kamailio_log().count("event=dialog.waiting") >= n,
                                5, f"{n} NOTIFYs waiting")
        suspended_after = time.monotonic() - t0
        # Meanwhile: a new agent registers and takes a complete call.
        t1 = time.monotonic()
        other = await registered_phone(gw, "1399")
        call, incoming = await answered_call(gw, pbx, other)
        assert await asyncio.to_thread(call.bye, 5) == 200
        call_took = time.monotonic() - t1
        still_waiting = not any(t.done() for t in notifies)
        for phone, old in list(zip(phones, olds))[: n // 2]:
            await come_back(gw, phone, old)
        finals = [await t for t in notifies]
        waited = time.monotonic() - t0
        # The PBX hangs up every call: the phones that came back answer, the
        # others' BYEs wait too and get 480 (and the media is freed either way).
        byes = await asyncio.gather(*(pbx_request(c, "BYE", 3) for c, _ in calls))
        for phone in phones + [other]:
            await phone.close()
        return suspended_after, call_took, still_waiting, finals, waited, byes

    try:
        suspended_after, call_took, still_waiting, finals, waited, byes = asyncio.run(go())
    finally:
        pbx.close()
    print(f"{n} NOTIFYs suspended within {suspended_after:.2f} s with 2 SIP workers; a new "
          f"REGISTER + call + BYE meanwhile took {call_took * 1000:.0f} ms")
    assert still_waiting, "the new call had to wait for the suspended requests"
    assert [f.status if f else None for f in finals] == [200] * (n // 2) + [480] * (n - n // 2)
    assert 2.0 <= waited < 4.0, f"480s after {waited:.2f} s (GW_RECONNECT_WAIT=2)"
    assert [b.status if b else None for b in byes] == [200] * (n // 2) + [480] * (n - n // 2)
    wait_until(lambda: gw.rtpengine_sessions() == 0, 10, "every rtpengine session deleted")


# ------------------------------------------------------------------ two nodes
NODE_IP = {"A": "127.0.0.31", "B": "127.0.0.32"}


@pytest.fixture
def two_nodes(tmp_path):
    """Two gateway nodes sharing one Redis, each with its own rtpengine, each
    trusting the other (GW_PBX_ALLOW), as tests/test_reliability_nodes.py runs them."""
    from conftest import Stack
    from gw import stack
    from kemi import settings as settings_mod
    from kemi.settings import HostPort

    redis_url = f"redis://{relstack.HOST}:{relstack.free_tcp()}/0"
    pbx = HostPort(relstack.HOST, stack.free_port(relstack.HOST))
    daemons: list = []
    nodes = {}
    try:
        redis = stack.start_redis(stack.redis_addr(redis_url), tmp_path / "redis", tmp_path / "redis.log")
        daemons.append(redis)
        for i, (name, ip) in enumerate(NODE_IP.items()):
            ng = HostPort(relstack.HOST, stack.free_port(relstack.HOST))
            base = tmp_path / f"node-{name}"
            base.mkdir()
            env = relstack.base_env(base, listen=ip, pbx=pbx, redis_url=redis_url, rtpengines=[ng],
                                    extra={"GW_PBX_ALLOW": NODE_IP["B" if name == "A" else "A"]})
            cfg = settings_mod.load(env)
            ports = relstack.media_range(i + 7)
            rtp = stack.start_rtpengine(cfg, ng, base / "rtpengine.log", ports=ports, name=f"rtpengine-{name}")
            daemons.append(rtp)
            kam = stack.start_kamailio(cfg, env, base, base / "kamailio.log", name=f"kamailio-{name}")
            daemons.append(kam)
            nodes[name] = Stack(env=env, cfg=cfg, run_dir=base, redis=redis, rtpengine=rtp, kamailio=kam,
                                cn=None, pbx=pbx, media_ports=ports)
        yield nodes
    finally:
        stack.stop_all(daemons)


def test_two_nodes_pbx_requests_through_the_first_node_reach_the_phone_on_the_other(two_nodes):
    """The phone reconnects to node B; the PBX's NOTIFYs and BYE keep following the
    dialog's route through node A, which hands them to B. The phone's own requests
    (re-INVITE hold, BYE) on B go to A, which keeps the media."""
    a, b = two_nodes["A"], two_nodes["B"]
    dn = "1401"
    pbx = FakePbx(a.pbx.host, a.pbx.port)

    async def go():
        phone = await registered_phone(a, dn)
        old = binding(a, dn)
        inbound, incoming = await answered_call(a, pbx, phone)
        outbound = await phone.invite("sip:2000@pbx.test", webrtc_sdp())
        assert outbound.response.status == 200
        await drop(a, phone, old["conid"])
        new = await come_back(b, phone, old)
        assert new["node"] == str(b.sip) and new["contact"] == old["contact"]
        statuses = []
        for cseq, (method, extra) in enumerate((("NOTIFY", HOLD), ("NOTIFY", TALK), ("BYE", ())), start=2):
            final = await pbx_request(inbound, method, cseq, extra)
            statuses.append(final.status if final else None)
        await incoming.wait_state("terminated", timeout=5)
        hold = await outbound.reinvite(sdp_set_direction(webrtc_sdp(), "sendonly"))
        bye = await outbound.bye()
        await phone.close()
        return inbound.invite.call_id, outbound.call_id, statuses, incoming, hold, bye, old, new

    try:
        in_id, out_id, statuses, incoming, hold, bye, old, new = asyncio.run(go())
        pbx_saw = [(m.method, m.call_id) for m in pbx.requests()]
        reinvite = [m for m in pbx.requests("INVITE") if m.call_id == out_id][-1]
    finally:
        pbx.close()
    assert statuses == [200, 200, 200]
    assert [(m.method, m.get("Event")) for m in incoming.received if m.method != "ACK"] == \
        [("NOTIFY", "hold"), ("NOTIFY", "talk"), ("BYE", None)]
    handed = log_events(a, "dialog.rerouted", in_id)
    assert [(x["method"], x["via"], x["dst"]) for x in handed] == \
        [(m, "peer", f"sip:{b.sip};transport=udp") for m in ("NOTIFY", "NOTIFY", "BYE")], handed
    assert all(x["from_conid"] == str(old["conid"]) and x["to_conid"] == str(new["conid"]) for x in handed)
    assert len(log_events(b, "dialog.from_peer", in_id)) == 3
    # The phone's hold re-INVITE went through A's rtpengine, with the phone's and the
    # PBX's flags: plain RTP offer to the PBX, WebRTC answer to the phone.
    assert [m for m, c in pbx_saw if c == out_id].count("INVITE") == 2
    assert "RTP/AVP" in reinvite.body and "a=sendonly" in reinvite.body
    assert "a=fingerprint" not in reinvite.body and "a=ice-ufrag" not in reinvite.body
    assert hold.status == 200 and "UDP/TLS/RTP/SAVPF" in hold.sdp and "a=fingerprint" in hold.sdp
    assert bye.status == 200 and ("BYE", out_id) in pbx_saw
    # Media lived on A all along and is gone with the BYEs; B never held any.
    wait_until(lambda: relstack.ng_sessions(a.cfg.rtpengines[0]) == [], 5, "A's sessions deleted")
    assert relstack.ng_sessions(b.cfg.rtpengines[0]) == []


def test_two_nodes_a_request_waiting_on_the_first_node_follows_the_phone_to_the_other(two_nodes):
    """The gap across nodes: the NOTIFY waits on node A (the phone is away), the
    phone comes back on node B, and A's timer hands the NOTIFY over to B."""
    a, b = two_nodes["A"], two_nodes["B"]
    pbx = FakePbx(a.pbx.host, a.pbx.port)

    async def go():
        phone, old, call, incoming = await dropped_mid_call(a, pbx, "1402")
        notify = asyncio.create_task(pbx_request(call, "NOTIFY", 2, HOLD))
        await asyncio.to_thread(wait_until, lambda: log_events(a, "dialog.waiting", call.invite.call_id),
                                5, "the NOTIFY waiting on A")
        new = await come_back(b, phone, old)
        final = await notify
        bye = await pbx_request(call, "BYE", 3)
        await phone.close()
        return call.invite.call_id, final, bye, incoming, new

    try:
        call_id, final, bye, incoming, new = asyncio.run(go())
    finally:
        pbx.close()
    assert final is not None and final.status == 200, final
    assert bye is not None and bye.status == 200
    assert [m.method for m in incoming.received[1:]] == ["NOTIFY", "BYE"]
    (first, _) = log_events(a, "dialog.rerouted", call_id)
    assert first["via"] == "peer" and first["to_conid"] == str(new["conid"]) and int(first["waited_ms"]) > 0
    wait_until(lambda: relstack.ng_sessions(a.cfg.rtpengines[0]) == [], 5, "A's session deleted")
