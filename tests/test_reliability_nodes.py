"""Issue 7, "Faults, nothing lost": two gateway nodes on one machine share one
Redis. Chosen design (the product's): the node that receives the PBX's INVITE
and finds the binding held by the other node *relays* it to
sip:<DN>@<that node> (no Record-Route, no media on the relaying node); the
node holding the phone's WebSocket records the route and sets up media, so the
rest of the dialog goes PBX <-> that node directly. Each node trusts the
other's address (GW_PBX_ALLOW).

Each node has its own loopback address (127.0.0.21 / .22), its own rtpengine;
the PBX is 127.0.0.1."""
from __future__ import annotations

import json

import pytest

from conftest import wait_until
from gw import stack
from kemi import settings as settings_mod
from kemi.settings import HostPort
from support import callcheck, relstack
from support.fakepbx import FakePbx
from support.wsphone import BlockingPhone

HOST = relstack.HOST
NODE_IP = {"A": "127.0.0.21", "B": "127.0.0.22"}


@pytest.fixture
def two_nodes(tmp_path):
    redis_url = f"redis://{HOST}:{relstack.free_tcp()}/0"
    pbx = HostPort(HOST, stack.free_port(HOST))
    daemons: list[stack.Daemon] = []
    nodes = {}
    try:
        daemons.append(stack.start_redis(stack.redis_addr(redis_url), tmp_path / "redis", tmp_path / "redis.log"))
        for i, (name, ip) in enumerate(NODE_IP.items()):
            other = NODE_IP["B" if name == "A" else "A"]
            ng = HostPort(HOST, stack.free_port(HOST))
            base = tmp_path / f"node-{name}"
            base.mkdir()
            env = relstack.base_env(base, listen=ip, pbx=pbx, redis_url=redis_url, rtpengines=[ng],
                                    extra={"GW_PBX_ALLOW": other})
            cfg = settings_mod.load(env)
            rtp = stack.start_rtpengine(cfg, ng, base / f"rtpengine-{name}.log", ports=relstack.media_range(i + 3),
                                        name=f"rtpengine-{name}")
            daemons.append(rtp)
            kam = stack.start_kamailio(cfg, env, base, base / "kamailio.log", name=f"kamailio-{name}")
            daemons.append(kam)
            nodes[name] = {"cfg": cfg, "kam": kam, "rtp": rtp, "ng": ng,
                           "sip": (cfg.sip_listen.host, cfg.sip_listen.port), "ws": f"ws://{cfg.ws_listen}"}
        yield nodes, pbx, redis_url
    finally:
        stack.stop_all(daemons)


def _redis(url):
    import redis
    return redis.Redis.from_url(url, decode_responses=True)


def _bindings(url) -> dict[str, str]:
    r = _redis(url)
    return {k: json.loads(r.get(k))["node"] for k in r.scan_iter("gw:reg:*")}


def test_two_nodes_share_redis_and_relay(two_nodes):
    nodes, pbx_addr, redis_url = two_nodes
    pbx = FakePbx(pbx_addr.host, pbx_addr.port)
    on_a = BlockingPhone(nodes["A"]["ws"], "1501")
    on_b = BlockingPhone(nodes["B"]["ws"], "1502")
    try:
        assert on_a.register().status == 200 and on_b.register().status == 200
        assert _bindings(redis_url) == {"gw:reg:1501": str(nodes["A"]["cfg"].sip_listen),
                                        "gw:reg:1502": str(nodes["B"]["cfg"].sip_listen)}
        # The PBX sends the call for the agent on A to node B: B hands it to A.
        call = pbx.call(nodes["B"]["sip"], "1501")
        assert call.status == 200
        got = on_a.next_incoming(3)
        assert got is not None and got.acked.wait(3)
        # Media is set up on A only; the dialog's route set is A's alone.
        assert relstack.ng_sessions(nodes["A"]["ng"]) == [call.invite.call_id]
        assert relstack.ng_sessions(nodes["B"]["ng"]) == []
        assert all(NODE_IP["A"] in rr for rr in call.route), call.route
        assert call.bye() == 200 and got.ended.wait(3)
        wait_until(lambda: "event=location.peer_node" in nodes["B"]["kam"].log_text(), 3, "B relayed")
        # And the other way round, and calls through each node's own phone.
        results = [callcheck.inbound(pbx, nodes["A"]["sip"], on_b),
                   callcheck.inbound(pbx, nodes["A"]["sip"], on_a),
                   callcheck.inbound(pbx, nodes["B"]["sip"], on_b),
                   callcheck.outbound(on_a, pbx), callcheck.outbound(on_b, pbx)]
        print(f"two nodes: {results.count('ok') + 1}/{len(results) + 1} calls ok")
        assert results == ["ok"] * 5, results

        # Node B dies (SIGKILL). No registration is lost: both bindings stay in Redis.
        before = _bindings(redis_url)
        relstack.kill(nodes["B"]["kam"])
        assert on_b.closed.wait(5)
        assert _bindings(redis_url) == before
        # The agent on A is unaffected.
        assert callcheck.inbound(pbx, nodes["A"]["sip"], on_a) == "ok"
        # B's phone reconnects to A (its WebSocket URL fails over) and re-registers.
        on_b.close()
        on_b = BlockingPhone(nodes["A"]["ws"], "1502")
        assert on_b.register().status == 200
        after = _bindings(redis_url)
        assert set(after) == set(before) and after["gw:reg:1502"] == str(nodes["A"]["cfg"].sip_listen)
        results = [callcheck.inbound(pbx, nodes["A"]["sip"], on_b), callcheck.outbound(on_b, pbx),
                   callcheck.inbound(pbx, nodes["A"]["sip"], on_a)]
        print(f"after node B died: {len(after)}/{len(before)} registrations kept, "
              f"{results.count('ok')}/{len(results)} calls ok")
        assert results == ["ok"] * 3, results
        assert relstack.ng_sessions(nodes["A"]["ng"]) == []
        assert relstack.ng_sessions(nodes["B"]["ng"]) == []
    finally:
        on_a.close()
        on_b.close()
        pbx.close()
