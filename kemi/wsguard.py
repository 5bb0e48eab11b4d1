"""The connection guard's Kamailio side: the checks and closes that
kemi/conns.py decides, carried out with KSR.

A mixin of the Gateway (kemi/app.py): `_upgrade_ws` runs at every WebSocket
upgrade, `_sip_seen` at every SIP request over a WebSocket, `ksr_conn_sweep`
once a second in its own rtimer process (kamailio.cfg), `_connection_stats` at
every /metrics scrape, `_client_ip` where the failure limits need the phone's
address.
"""
from __future__ import annotations

import json
import time

import KSR  # noqa: E402  (provided by app_python3)

from kemi import authguard, conns, logfmt, metrics, settings as settings_mod
from kemi.flags import current

WS_CLIENTS = "gwwsip"      # htable: WebSocket conid -> the phone's address behind a proxy
IP_CONNS = "gwipconn"      # htable: WebSockets per address at the last sweep
IP_NEW = "gwipnew"         # htable: upgrades per address since the last sweep
REFUSED = "gwrefused"      # htable: a key per refusal reason while a burst lasts
LOCKS = "gwlock"           # htable holding no data: its slot lock serialises upgrades
ADMIT_LOCK = "admit"
TCP_LIST = '{"jsonrpc": "2.0", "method": "core.tcp_list", "id": 1}'
SHMMEM = '{"jsonrpc": "2.0", "method": "core.shmmem", "id": 1}'
STATISTICS = json.dumps({"jsonrpc": "2.0", "method": "stats.get_statistics",
                         "params": list(metrics.STAT_GROUPS), "id": 1})
RETRY_AFTER_S = 30


def _stat(name: str) -> int:
    """A Kamailio statistic ($stat): websocket, tcp and shmem groups."""
    try:
        return int(KSR.pv.get(f"$stat({name})") or 0)
    except (TypeError, ValueError):
        return 0


def _shmmem() -> dict:
    """Kamailio's core.shmmem now (the shmem statistics are cached for a second)."""
    if KSR.jsonrpcs.exec(SHMMEM) < 0:
        return {}
    return json.loads(str(KSR.jsonrpcs.response() or "{}")).get("result") or {}


def kamailio_statistics() -> dict:
    """Kamailio's own counters for /metrics (kemi/metrics.py kamailio_families)."""
    if KSR.jsonrpcs.exec(STATISTICS) < 0:
        return {}
    return metrics.parse_statistics(json.loads(str(KSR.jsonrpcs.response() or "{}")).get("result"))


def _warn(event: str, **fields: object) -> None:
    KSR.warn(logfmt.line(event, **fields) + "\n")


class ConnectionGuard:
    cfg: settings_mod.Settings
    ws_proxies: set[str]              # GW_WS_PROXIES (the Gateway's)
    live: metrics.LiveCollector

    def _init_guard(self, cfg: settings_mod.Settings) -> None:
        self.size = cfg.sizing
        self.sweeper = conns.Sweeper(cfg.ws_listen.host, cfg.ws_listen.port, cfg.ws_max_per_ip,
                                     cfg.ws_proxies)
        self.live.connection_stats = self._connection_stats

    @staticmethod
    def _sip_seen() -> None:
        """Why: a WebSocket that sent SIP leaves the 30 s "no SIP yet" phase
        (its lifetime is what the sweep reads: kemi/conns.py). For SIP over a
        WebSocket only (app.py asks)."""
        KSR.tcpops.tcp_set_connection_lifetime(conns.LIFETIME_S)

    def _upgrade_ws(self) -> bool:
        """Why: refuse at the first bytes (the upgrade), with a 503 and a closed
        connection, what would exhaust the node or one address's share of it.
        True when the connection became a WebSocket."""
        src = KSR.kx.get_srcip()
        proxied = src in self.ws_proxies
        client = conns.client_address(src, self.ws_proxies, str(KSR.pv.get("$hdr(X-Real-IP)") or ""))
        # One upgrade at a time across the TCP readers, and none while the sweep
        # recounts: the checks and the handshake (which counts the new
        # WebSocket) together, so no limit is passed by a race.
        KSR.htable.sht_lock(LOCKS, ADMIT_LOCK)
        try:
            ip_count = 0
            if self.cfg.ws_max_per_ip > 0 and not proxied:
                ip_count = int(KSR.htable.sht_get(IP_CONNS, client) or 0) + KSR.htable.sht_inc(IP_NEW, client)
            # Unknown free memory (RPC failed) must not refuse everyone.
            free = int(_shmmem().get("free", self.size.shm_reserve_bytes))
            reason = conns.admit(ws_connections=_stat("ws_current_connections"),
                                 max_agents=self.cfg.max_agents, shm_free=free,
                                 shm_reserve=self.size.shm_reserve_bytes, ip_count=ip_count,
                                 max_per_ip=self.cfg.ws_max_per_ip, proxied=proxied)
            ok = reason is None and KSR.websocket.handle_handshake() > 0
        finally:
            KSR.htable.sht_unlock(LOCKS, ADMIT_LOCK)
        if reason is None:
            if ok:  # no SIP yet: closed if idle 31 s, or 30 s on (kemi/conns.py)
                KSR.tcpops.tcp_set_connection_lifetime(conns.AWAIT_SIP_LIFETIME_S)
            KSR.info(logfmt.line("ws.open" if ok else "ws.handshake_failed",
                                 src=f"{src}:{KSR.kx.get_srcport()}",
                                 client=client if proxied else None) + "\n")
            return ok
        self._refused(reason, 1, src=client)
        KSR.set_reply_close()
        KSR.hdr.append_to_reply(f"Retry-After: {RETRY_AFTER_S}\r\n")
        KSR.xhttp.xhttp_reply(503, "Service Unavailable", "text/plain",
                              f"new connections refused: {reason}\n")
        return False

    @staticmethod
    def _refused(reason: str, count: int, **fields: object) -> None:
        """Count refusals; log the first of each burst (a burst ends after 10 s
        without one: the gwrefused htable's autoexpire)."""
        metrics.CONN_REFUSED.labels(reason).inc(count)
        if KSR.htable.sht_inc(REFUSED, reason) == 1:
            _warn("ws.refused", reason=reason, count=count, **fields,
                  note="burst started, later refusals are counted in gateway_connections_refused_total")

    def ksr_conn_sweep(self, msg: object, evname: str = "") -> int:
        """Why: Kamailio 5.6 cannot limit or time connections before they send
        SIP; once a second this (rtimer) process closes those that overstay."""
        if not self.sweeper.due(_stat("passive_open")):
            return 1
        # The listing and the new per-address counts with upgrades held off, so
        # none is counted twice or lost (0.1-0.2 s at 10,000 connections).
        KSR.htable.sht_lock(LOCKS, ADMIT_LOCK)
        try:
            if KSR.jsonrpcs.exec(TCP_LIST) < 0:
                raise RuntimeError("jsonrpcs exec core.tcp_list failed")
            res = self.sweeper.sweep(conns.parse_tcp_list(str(KSR.jsonrpcs.response() or "")),
                                     time.monotonic())
            for ip in res.ip_gone:
                KSR.htable.sht_rm(IP_CONNS, ip)
            for ip, count in res.ip_counts.items():
                KSR.htable.sht_seti(IP_CONNS, ip, count)
            KSR.htable.sht_reset(IP_NEW)
        except Exception as exc:  # the next second tries again
            KSR.err(logfmt.line("conn.sweep_failed", error=repr(exc)) + "\n")
            return 1
        finally:
            KSR.htable.sht_unlock(LOCKS, ADMIT_LOCK)
        closed: dict[str, int] = {}
        for conn, reason in res.close:
            if conn.upgraded:  # tell the browser why (1008: policy violation) ...
                KSR.websocket.close_conid(1008, reason, conn.id)
            # ... and close now, not when its reply to the close frame comes in.
            KSR.tcpops.tcp_close_connection_id(conn.id)
            closed[reason] = closed.get(reason, 0) + 1
        for reason, count in closed.items():
            self._refused(reason, count, listed=res.listed)
        return 1

    def _remember_client(self) -> None:
        """Behind nginx every WebSocket comes from nginx: keep the phone's address
        (X-Real-IP, set by nginx, never the client's) so the limits count phones."""
        if KSR.kx.get_srcip() not in self.ws_proxies:
            return
        real = str(KSR.pv.get("$hdr(X-Real-IP)") or "")
        try:
            KSR.htable.sht_sets(WS_CLIENTS, str(KSR.kx.get_conid()), authguard.norm_ip(real))
        except ValueError:
            _warn("ws.no_client_address", src=KSR.kx.get_srcip(), header=real[:60])

    def _client_ip(self) -> str:
        """The phone's address: behind nginx (GW_WS_PROXIES) the one nginx saw."""
        src = KSR.kx.get_srcip()
        if src in self.ws_proxies and current.ws:
            real = KSR.htable.sht_get(WS_CLIENTS, str(KSR.kx.get_conid()))
            if real:
                return str(real)
        return authguard.norm_ip(src)

    def _connection_stats(self) -> dict:
        """For /metrics: WebSockets open, the limit, Kamailio's own shm use."""
        out: dict = {"connections": _stat("ws_current_connections"), "max_agents": self.cfg.max_agents}
        shm = _shmmem()
        if shm.get("total"):
            out["shm_used_ratio"] = int(shm["real_used"]) / int(shm["total"])
        return out
