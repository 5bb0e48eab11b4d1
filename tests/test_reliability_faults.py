"""Issue 7, "Faults, nothing lost": rtpengine failover between two engines,
Redis restart, Kamailio restart. Each fault is followed by real calls both
ways; afterwards rtpengine holds no session."""
from __future__ import annotations

import time

from conftest import wait_until
from gw import stack
from kemi import settings as settings_mod
from kemi.settings import HostPort
from support import callcheck, relstack
from support.fakepbx import FakePbx
from support.wsphone import BlockingPhone

HOST = relstack.HOST


def _calls(pbx: FakePbx, gw_addr: tuple[str, int], phones: list[BlockingPhone]) -> list[str]:
    out = []
    for p in phones:
        out.append(callcheck.outbound(p, pbx))
        out.append(callcheck.inbound(pbx, gw_addr, p))
    return out


def test_rtpengine_failover_then_503_and_no_leaks(tmp_path):
    ng = [HostPort(HOST, stack.free_port(HOST)), HostPort(HOST, stack.free_port(HOST))]
    env = relstack.base_env(tmp_path, rtpengines=ng)
    cfg = settings_mod.load(env)
    assert len(cfg.rtpengines) == 2
    redis = stack.start_redis(stack.redis_addr(cfg.redis_url), tmp_path / "redis", tmp_path / "redis.log")
    rtp = [stack.start_rtpengine(cfg, ng[i], tmp_path / f"rtpengine-{i}.log", ports=relstack.media_range(i + 1),
                                 name=f"rtpengine-{i}")
           for i in range(2)]
    kam = stack.start_kamailio(cfg, env, tmp_path / "kam", tmp_path / "kam" / "kamailio.log")
    daemons = [redis, *rtp, kam]
    pbx = FakePbx(cfg.pbx.host, cfg.pbx.port)
    phones = [BlockingPhone(f"ws://{cfg.ws_listen}", f"12{i:02d}") for i in range(3)]
    gw_addr = (cfg.sip_listen.host, cfg.sip_listen.port)
    try:
        for p in phones:
            assert p.register().status == 200
        both = _calls(pbx, gw_addr, phones)
        assert both == ["ok"] * 6, both
        # Calls are spread over both engines (by Call-ID hash).
        used = set()
        for _ in range(12):
            call = phones[0].call("2000")
            assert call.status == 200
            used |= {i for i in (0, 1) if call.invite.call_id in relstack.ng_sessions(ng[i])}
            assert call.bye() == 200
            if used == {0, 1}:
                break
        assert used == {0, 1}, f"only engine(s) {used} used"
        assert relstack.ng_sessions(ng[0]) == [] and relstack.ng_sessions(ng[1]) == []

        # Kill one engine (SIGKILL, a crash): new calls go to the other one.
        relstack.kill(rtp[0])
        t0 = time.monotonic()
        one_left = _calls(pbx, gw_addr, phones) + _calls(pbx, gw_addr, phones)
        print(f"rtpengine A killed: {one_left.count('ok')}/{len(one_left)} calls ok "
              f"in {time.monotonic() - t0:.1f}s")
        assert one_left == ["ok"] * 12, one_left
        call = phones[0].call("2000")
        assert call.status == 200
        assert relstack.ng_sessions(ng[1]) == [call.invite.call_id], "the call's media is on engine B"
        assert call.bye() == 200
        assert relstack.ng_sessions(ng[1]) == [], "leaked rtpengine sessions"

        # Kill the other: no media relay at all -> 503 fast, nothing reaches the PBX.
        relstack.kill(rtp[1])
        seen = len(pbx.requests("INVITE"))
        t0 = time.monotonic()
        out = phones[1].call("2000")
        elapsed_out = time.monotonic() - t0
        t0 = time.monotonic()
        inb = pbx.call(gw_addr, phones[2].user)
        elapsed_in = time.monotonic() - t0
        print(f"no rtpengine: phone->PBX {out.status} in {elapsed_out:.2f}s, "
              f"PBX->phone {inb.status} in {elapsed_in:.2f}s")
        assert out.status == 503 and elapsed_out < 1.5
        assert inb.status == 503 and elapsed_in < 1.5
        assert len(pbx.requests("INVITE")) == seen
        assert phones[2].next_incoming(0.3) is None
        assert not kam.exited()
    finally:
        for p in phones:
            p.close()
        pbx.close()
        stack.stop_all(daemons)


def test_redis_restart_reconnects_and_keeps_bindings(fresh_gw):
    gw = fresh_gw
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)
    phones = [BlockingPhone(gw.ws_url, f"13{i:02d}") for i in range(3)]
    gw_addr = (gw.sip.host, gw.sip.port)
    addr = stack.redis_addr(gw.cfg.redis_url)
    try:
        for p in phones:
            assert p.register().status == 200
        before = {p.user: gw.redis_client().get(f"gw:reg:{p.user}") for p in phones}
        assert all(before.values())
        # Redis goes away (a restart: SIGTERM, append-only file on disk).
        gw.redis.stop()
        assert not stack.redis_ping(addr.host, addr.port)
        late = BlockingPhone(gw.ws_url, "1399")
        try:
            reg = late.register()
            assert reg.status == 503 and reg.get("Retry-After") == "5"
        finally:
            late.close()
        inv = pbx.call(gw_addr, phones[0].user)
        assert inv.status == 503 and inv.final.get("Retry-After") == "5"
        assert phones[0].next_incoming(0.3) is None
        # Redis is back on the same address and data directory; the gateway is
        # not restarted.
        gw.redis = relstack.restart(gw.redis)
        wait_until(lambda: stack.redis_ping(addr.host, addr.port), 10, "redis back")
        after = {p.user: gw.redis_client().get(f"gw:reg:{p.user}") for p in phones}
        assert after == before, "registrations lost across the Redis restart"
        assert all(gw.redis_client().ttl(f"gw:reg:{p.user}") > 500 for p in phones)
        # The workers reconnect by themselves: the old bindings route calls, and
        # REGISTER works again.
        results = [callcheck.inbound(pbx, gw_addr, p) for p in phones]
        results += [callcheck.outbound(p, pbx) for p in phones]
        print(f"after the Redis restart: {results.count('ok')}/{len(results)} calls ok")
        assert results == ["ok"] * 6, results
        assert all(p.register().status == 200 for p in phones)
        assert gw.rtpengine_sessions() == 0
    finally:
        for p in phones:
            p.close()
        pbx.close()


def test_kamailio_restart_bindings_stay_and_phones_reregister(fresh_gw):
    gw = fresh_gw
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)
    users = [f"14{i:02d}" for i in range(3)]
    phones = [BlockingPhone(gw.ws_url, u) for u in users]
    gw_addr = (gw.sip.host, gw.sip.port)
    try:
        for p in phones:
            assert p.register().status == 200
        before = {u: gw.redis_client().get(f"gw:reg:{u}") for u in users}
        gw.kamailio.stop()
        for p in phones:
            assert p.closed.wait(5), "the phone's WebSocket should drop with Kamailio"
        assert {u: gw.redis_client().get(f"gw:reg:{u}") for u in users} == before
        gw.kamailio = relstack.restart(gw.kamailio)
        stack.wait_for(lambda: (stack.sip_options(gw.sip.host, gw.sip.port) or "").startswith("SIP/2.0 200"),
                       20, "kamailio back", gw.kamailio)
        # A binding whose WebSocket is gone is not delivered to anyone.
        stale = pbx.call(gw_addr, users[0])
        assert stale.status == 480, stale.status
        # The phones reconnect and re-register: reachable at once.
        for p in phones:
            p.close()
        phones = [BlockingPhone(gw.ws_url, u) for u in users]
        results = []
        for p in phones:
            assert p.register().status == 200
            results.append(callcheck.inbound(pbx, gw_addr, p))
            results.append(callcheck.outbound(p, pbx))
        print(f"after the Kamailio restart: {results.count('ok')}/{len(results)} calls ok")
        assert results == ["ok"] * 6, results
        assert gw.rtpengine_sessions() == 0
    finally:
        for p in phones:
            p.close()
        pbx.close()
