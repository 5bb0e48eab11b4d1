"""Who may hold a connection on the WebSocket port, and for how long.

Pure Python (no Kamailio): the KEMI app feeds it what Kamailio reports and
carries out what it decides.

Kamailio 5.6 has no per-address accept limit and no handshake timer, and a
connection that never sends a byte is invisible to the script. So one process
(an rtimer, once a second) lists the TCP connections (`core.tcp_list`) and the
`Sweeper` below decides which to close:

* not upgraded to a WebSocket 5 s after it opened      -> handshake_timeout
* upgraded, but no SIP within 30 s of the upgrade       -> sip_timeout
* beyond GW_WS_MAX_PER_IP from one address (newest first,
  once they had a second to upgrade and be refused with a 503) -> per_ip

Phases are read from the listing itself: `type` turns from TCP to WS at the
upgrade, and the app marks a WebSocket that has not sent SIP yet with a
connection lifetime of AWAIT_SIP_LIFETIME_S (the first SIP request sets
LIFETIME_S). The listing costs O(connections), so it is taken only when
Kamailio accepted a connection since the last one or a connection is still in
a timed phase; a node with 10,000 settled agents does not list at all.

`admit()` is the check at the upgrade itself (the first bytes a client sends):
capacity, shared memory, and the address's count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Optional

HANDSHAKE_S = 5.0
FIRST_SIP_S = 30.0
SWEEP_INTERVAL_S = 1.0
# Connection lifetimes (idle timeouts) the app sets; their values mark phases.
AWAIT_SIP_LIFETIME_S = 31     # upgraded, no SIP yet: also closes it if idle
LIFETIME_S = 3605             # kamailio.cfg tcp_connection_lifetime

REASONS = ("per_ip", "connections", "shm", "handshake_timeout", "sip_timeout")


@dataclass(frozen=True)
class Conn:
    """One entry of Kamailio's core.tcp_list."""
    id: int
    type: str          # TCP before the upgrade, WS after (WSS behind TLS)
    state: str
    lifetime: int
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int

    @property
    def upgraded(self) -> bool:
        return self.type in ("WS", "WSS")


def parse_tcp_list(body: str) -> list[Conn]:
    """core.tcp_list's JSON-RPC reply (jsonrpcs) as Conn entries."""
    doc = json.loads(body) if body else {}
    if "error" in doc:
        raise ValueError(f"core.tcp_list: {doc['error']}")
    out = []
    for item in doc.get("result") or []:
        try:
            out.append(Conn(int(item["id"]), str(item["type"]), str(item["state"]),
                            int(item["lifetime"]), str(item["src_ip"]), int(item["src_port"]),
                            str(item["dst_ip"]), int(item["dst_port"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


@dataclass
class SweepResult:
    close: list[tuple[Conn, str]] = field(default_factory=list)
    # WebSocket connections per source address that changed since the last
    # sweep, and the addresses that have none left: the upgrade check reads
    # this count plus the upgrades since. Every address is counted (an address
    # left out would count from zero and let a burst past the limit); writing
    # only the changes keeps a storm of many addresses at one write per new one.
    ip_counts: dict[str, int] = field(default_factory=dict)
    ip_gone: list[str] = field(default_factory=list)
    listed: int = 0
    pending: int = 0


class Sweeper:
    """The sweeping process's memory: when it first saw each connection that
    is still in a timed phase."""

    def __init__(self, ws_ip: str, ws_port: int, max_per_ip: int, proxies: Iterable[str] = (),
                 interval: float = SWEEP_INTERVAL_S) -> None:
        self.ws_ip, self.ws_port = ws_ip, ws_port
        self.max_per_ip = max_per_ip
        self.proxies = frozenset(proxies)
        self.interval = interval
        self._opened: dict[int, float] = {}      # conid -> first seen not upgraded
        self._upgraded: dict[int, float] = {}    # conid -> first seen upgraded, no SIP yet
        self._accepted = -1
        self._ip_counts: dict[str, int] = {}     # the per-address counts last written

    def due(self, accepted: int) -> bool:
        """List now? `accepted`: Kamailio's count of accepted connections so far."""
        changed = accepted != self._accepted
        self._accepted = accepted
        return changed or bool(self._opened or self._upgraded)

    def _ours(self, c: Conn) -> bool:
        return c.dst_port == self.ws_port and (self.ws_ip in ("0.0.0.0", "::") or c.dst_ip == self.ws_ip)

    def sweep(self, conns: list[Conn], now: float) -> SweepResult:
        res = SweepResult(listed=len(conns))
        # A connection first seen now opened during the last interval: judge by
        # its oldest possible age, so none outlives its limit.
        slack = self.interval
        opened, upgraded = {}, {}
        per_ip: dict[str, list[Conn]] = {}
        closing: set[int] = set()
        for c in conns:
            if not self._ours(c) or c.state in ("CONN_BAD", "CONN_EOF", "CONN_ERROR"):
                continue
            if not c.upgraded:
                since = opened[c.id] = self._opened.get(c.id, now)
                if now - since + slack >= HANDSHAKE_S:
                    res.close.append((c, "handshake_timeout"))
                    closing.add(c.id)
            elif c.lifetime == AWAIT_SIP_LIFETIME_S:
                since = upgraded[c.id] = self._upgraded.get(c.id, now)
                if now - since + slack >= FIRST_SIP_S:
                    res.close.append((c, "sip_timeout"))
                    closing.add(c.id)
            if c.src_ip not in self.proxies and c.id not in closing:
                per_ip.setdefault(c.src_ip, []).append(c)
        if self.max_per_ip > 0:
            counts: dict[str, int] = {}
            for ip, group in per_ip.items():
                # Those first seen just now wait a sweep: their upgrade is
                # probably on its way and gets a clean 503. Then newest first.
                older = [c for c in group if c.upgraded or c.id in self._opened]
                excess = len(older) - self.max_per_ip
                if excess > 0:
                    older.sort(key=lambda c: c.id, reverse=True)
                    for c in older[:excess]:
                        res.close.append((c, "per_ip"))
                        closing.add(c.id)
                    group = [c for c in group if c.id not in closing]
                ws = sum(1 for c in group if c.upgraded)
                if ws:
                    counts[ip] = ws
            res.ip_counts = {ip: n for ip, n in counts.items() if self._ip_counts.get(ip) != n}
            res.ip_gone = [ip for ip in self._ip_counts if ip not in counts]
            self._ip_counts = counts
        self._opened = {k: v for k, v in opened.items() if k not in closing}
        self._upgraded = {k: v for k, v in upgraded.items() if k not in closing}
        res.pending = len(self._opened) + len(self._upgraded)
        return res


def admit(*, ws_connections: int, max_agents: int, shm_free: int, shm_reserve: int,
          ip_count: int, max_per_ip: int, proxied: bool) -> Optional[str]:
    """At the upgrade: None to accept, else the refusal reason.

    ws_connections: WebSockets open now; shm_free: free shared memory (bytes);
    ip_count: this address's WebSockets including this one (ignored when the
    connection comes from a proxy in GW_WS_PROXIES, which limits per client)."""
    if ws_connections >= max_agents:
        return "connections"
    if shm_free < shm_reserve:
        return "shm"
    if max_per_ip > 0 and not proxied and ip_count > max_per_ip:
        return "per_ip"
    return None


def client_address(src_ip: str, proxies: frozenset[str] | set[str] | tuple[str, ...],
                   real_ip: str) -> str:
    """The client's address: X-Real-IP when a trusted proxy forwarded it."""
    if src_ip in proxies and real_ip:
        return real_ip.split(",")[0].strip()
    return src_ip
