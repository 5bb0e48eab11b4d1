"""The connection guard's decisions (kemi/conns.py), without Kamailio."""
import json

from kemi import conns
from kemi.conns import Conn

WS = ("127.0.0.1", 8080)


def conn(cid, src="127.0.0.9", typ="TCP", lifetime=3605, port=8080, state="CONN_OK"):
    return Conn(cid, typ, state, lifetime, src, 40000 + cid, WS[0], port)


def sweeper(max_per_ip=1000, proxies=()):
    return conns.Sweeper(WS[0], WS[1], max_per_ip, proxies)


def test_parse_tcp_list_reply():
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": [
        {"id": 7, "type": "WS", "state": "CONN_OK", "timeout": 30, "lifetime": 31, "ref_count": 1,
         "src_ip": "127.0.0.9", "src_port": 40001, "dst_ip": "127.0.0.1", "dst_port": 8080},
        {"id": "junk"}]})
    assert conns.parse_tcp_list(body) == [Conn(7, "WS", "CONN_OK", 31, "127.0.0.9", 40001, "127.0.0.1", 8080)]
    assert conns.parse_tcp_list(json.dumps({"result": None})) == []


def test_handshake_timeout_within_5_seconds():
    s = sweeper()
    listing = [conn(1), conn(2, typ="WS", lifetime=conns.LIFETIME_S)]
    assert s.sweep(listing, 100.0).close == []
    assert s.sweep(listing, 103.0).close == []
    # First seen at 100, so opened after 99: closed by 104, at most 5 s after it opened.
    res = s.sweep(listing, 104.0)
    assert [(c.id, r) for c, r in res.close] == [(1, "handshake_timeout")]
    assert res.pending == 0


def test_upgrade_stops_the_handshake_clock():
    s = sweeper()
    s.sweep([conn(1)], 100.0)
    res = s.sweep([conn(1, typ="WS", lifetime=conns.AWAIT_SIP_LIFETIME_S)], 103.0)
    assert res.close == [] and res.pending == 1


def test_no_sip_within_30_seconds_after_the_upgrade():
    s = sweeper()
    waiting = [conn(1, typ="WS", lifetime=conns.AWAIT_SIP_LIFETIME_S)]
    s.sweep(waiting, 10.0)
    assert s.sweep(waiting, 38.0).close == []
    assert [r for _, r in s.sweep(waiting, 39.0).close] == ["sip_timeout"]
    # SIP came (the app set the normal lifetime): never closed.
    s2 = sweeper()
    s2.sweep(waiting, 10.0)
    assert s2.sweep([conn(1, typ="WS")], 60.0).close == []
    assert s2.sweep([conn(1, typ="WS")], 60.0).pending == 0


def test_other_listeners_and_dying_connections_are_not_ours():
    s = sweeper()
    listing = [conn(1, port=5070), conn(2, state="CONN_BAD"), conn(3, state="CONN_EOF")]
    s.sweep(listing, 0.0)
    assert s.sweep(listing, 50.0).close == []


def test_per_ip_limit_closes_the_newest_first():
    s = sweeper(max_per_ip=3)
    listing = [conn(i, typ="WS") for i in (5, 1, 4, 2, 3)] + [conn(9, src="127.0.0.8")]
    res = s.sweep(listing, 0.0)
    assert sorted((c.id, r) for c, r in res.close) == [(4, "per_ip"), (5, "per_ip")]
    assert res.ip_counts == {"127.0.0.9": 3}


def test_half_open_count_toward_the_limit():
    s = sweeper(max_per_ip=1000)
    flood = [conn(i) for i in range(1, 5001)]
    # Seen for the first time: their upgrade (and its 503) may be on the way.
    assert s.sweep(flood, 0.0).close == []
    res = s.sweep(flood, 1.0)
    assert len(res.close) == 4000 and {r for _, r in res.close} == {"per_ip"}
    assert min(c.id for c, _ in res.close) == 1001
    # The 1,000 left are closed at the handshake deadline.
    res = s.sweep(flood[:1000], 4.0)
    assert len(res.close) == 1000 and {r for _, r in res.close} == {"handshake_timeout"}


def test_fresh_connections_over_the_limit_wait_for_their_upgrade():
    s = sweeper(max_per_ip=2)
    s.sweep([conn(1, typ="WS"), conn(2, typ="WS")], 0.0)
    res = s.sweep([conn(1, typ="WS"), conn(2, typ="WS"), conn(3)], 1.0)
    assert res.close == []
    res = s.sweep([conn(1, typ="WS"), conn(2, typ="WS"), conn(3)], 2.0)
    assert [(c.id, r) for c, r in res.close] == [(3, "per_ip")]


def test_proxy_address_is_not_limited():
    s = sweeper(max_per_ip=2, proxies=("127.0.0.1",))
    res = s.sweep([conn(i, src="127.0.0.1", typ="WS") for i in range(1, 50)], 0.0)
    assert res.close == [] and res.ip_counts == {}


def test_every_address_counted_and_only_changes_written():
    """An address under the limit is counted too: left out, its count would
    restart from zero at the upgrade check and a burst would pass the limit."""
    s = sweeper(max_per_ip=10)
    listing = [conn(i, typ="WS") for i in range(1, 6)] + [conn(i, src="127.0.0.8", typ="WS") for i in (20, 21)]
    res = s.sweep(listing, 0.0)
    assert res.ip_counts == {"127.0.0.9": 5, "127.0.0.8": 2} and res.ip_gone == []
    res = s.sweep(listing + [conn(6, typ="WS")], 1.0)
    assert res.ip_counts == {"127.0.0.9": 6} and res.ip_gone == []
    res = s.sweep([conn(i, typ="WS") for i in range(1, 7)], 2.0)
    assert res.ip_counts == {} and res.ip_gone == ["127.0.0.8"]


def test_listing_only_when_something_changed():
    s = sweeper()
    assert s.due(10)                 # first time
    s.sweep([], 0.0)
    assert not s.due(10)             # nothing accepted, nothing pending: no O(n) listing
    assert s.due(11)                 # a new connection
    s.sweep([conn(1)], 1.0)
    assert s.due(11)                 # still pending its handshake


def test_admit():
    base = dict(ws_connections=10, max_agents=300, shm_free=100, shm_reserve=50, ip_count=5,
                max_per_ip=1000, proxied=False)
    assert conns.admit(**base) is None
    assert conns.admit(**{**base, "ws_connections": 300}) == "connections"
    assert conns.admit(**{**base, "shm_free": 49}) == "shm"
    assert conns.admit(**{**base, "ip_count": 1001}) == "per_ip"
    assert conns.admit(**{**base, "ip_count": 1001, "proxied": True}) is None
    assert conns.admit(**{**base, "ip_count": 1001, "max_per_ip": 0}) is None


def test_client_address():
    proxies = frozenset({"127.0.0.1"})
    assert conns.client_address("127.0.0.1", proxies, "198.51.100.7") == "198.51.100.7"
    assert conns.client_address("127.0.0.1", proxies, "198.51.100.7, 10.0.0.1") == "198.51.100.7"
    assert conns.client_address("127.0.0.5", proxies, "198.51.100.7") == "127.0.0.5"   # not a proxy
    assert conns.client_address("127.0.0.1", proxies, "") == "127.0.0.1"


def test_connection_gauges():
    from kemi import metrics
    fams = {f.name: f.samples[0].value for f in metrics.connection_gauges(
        {"connections": 12, "max_agents": 300, "shm_used_ratio": 0.25})}
    assert fams == {"gateway_connections": 12, "gateway_connections_limit": 300,
                    "gateway_shm_used_ratio": 0.25}
    assert [f.name for f in metrics.connection_gauges({"connections": 1})] == ["gateway_connections"]
