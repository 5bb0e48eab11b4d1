"""Issue 7, "Faults, nothing lost": Redis is not a single point of failure.
GW_REDIS_URL=redis+sentinel://... (Debian's redis-sentinel, three Sentinels,
quorum 2, a primary and one replica); the test kills the primary (SIGKILL)
under a running gateway: Sentinel promotes the replica, the gateway follows it
without a restart, and no registration is lost."""
from __future__ import annotations

import time

import redis

from gw import stack
from kemi import settings as settings_mod
from kemi.settings import HostPort
from support import callcheck, relstack
from support.fakepbx import FakePbx
from support.wsphone import BlockingPhone

HOST = relstack.HOST


def test_sentinel_failover_keeps_registrations(tmp_path):
    ss = relstack.start_sentinel_set(tmp_path / "redis")
    daemons: list[stack.Daemon] = []
    phones: list[BlockingPhone] = []
    pbx = None
    try:
        primary, replica = list(ss.redis)
        assert ss.master() == (HOST, primary)
        ng = HostPort(HOST, stack.free_port(HOST))
        env = relstack.base_env(tmp_path, redis_url=ss.url, rtpengines=[ng])
        cfg = settings_mod.load(env)
        daemons.append(stack.start_rtpengine(cfg, ng, tmp_path / "rtpengine.log", ports=relstack.media_range(5)))
        kam = stack.start_kamailio(cfg, env, tmp_path / "kam", tmp_path / "kam" / "kamailio.log")
        daemons.append(kam)
        pbx = FakePbx(cfg.pbx.host, cfg.pbx.port)
        gw_addr = (cfg.sip_listen.host, cfg.sip_listen.port)
        ws_url = f"ws://{cfg.ws_listen}"
        users = [f"16{i:02d}" for i in range(5)]
        phones = [BlockingPhone(ws_url, u) for u in users]
        for p in phones:
            assert p.register().status == 200
        # Written through Sentinel to the primary, replicated to the replica.
        on_replica = redis.Redis(HOST, replica, socket_timeout=0.5, decode_responses=True)
        stack.wait_for(lambda: all(on_replica.get(f"gw:reg:{u}") for u in users), 10, "replicated")
        before = {u: on_replica.get(f"gw:reg:{u}") for u in users}

        relstack.kill(ss.redis[primary])
        t0 = time.monotonic()
        stack.wait_for(lambda: ss.master() == (HOST, replica), 30, "Sentinel promoted the replica")
        promoted = time.monotonic() - t0
        # The gateway (same Kamailio, never restarted) finds the new primary by itself.
        outage_503 = 0
        status = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            reply = phones[0].register()
            status = reply.status if reply is not None else 0
            if status == 200:
                break
            assert status == 503 and reply.get("Retry-After") == "5", status
            outage_503 += 1
            time.sleep(0.2)
        followed = time.monotonic() - t0
        assert status == 200
        assert not kam.exited()
        new_primary = redis.Redis(HOST, replica, socket_timeout=0.5, decode_responses=True)
        assert new_primary.role()[0] == "master"
        after = {u: new_primary.get(f"gw:reg:{u}") for u in users}
        assert all(after.values()), f"registrations lost: {[u for u, v in after.items() if not v]}"
        assert {u: v for u, v in after.items() if u != users[0]} == \
               {u: v for u, v in before.items() if u != users[0]}
        results = [callcheck.inbound(pbx, gw_addr, p) for p in phones]
        results += [callcheck.outbound(phones[1], pbx)]
        assert all(p.register().status == 200 for p in phones)
        print(f"sentinel: replica promoted after {promoted:.1f}s, gateway followed after {followed:.1f}s "
              f"({outage_503} REGISTERs got 503 meanwhile); {len(after)}/{len(before)} registrations kept; "
              f"{results.count('ok')}/{len(results)} calls ok")
        assert results == ["ok"] * len(results), results
        assert relstack.ng_sessions(ng) == []
    finally:
        for p in phones:
            p.close()
        if pbx is not None:
            pbx.close()
        stack.stop_all(daemons)
        ss.stop()
