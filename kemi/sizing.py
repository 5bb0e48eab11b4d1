"""How big one gateway node is, from one number: GW_MAX_AGENTS.

Pure arithmetic (no Kamailio), shared by the launcher (Kamailio's -m/-M, the
file-descriptor limit it gives each daemon), kamailio.cfg (tcp_max_connections
through a -A define), the KEMI app (when to refuse new WebSockets) and gwctl.

The per-connection figures are Kamailio 5.6's own allocations, read from
`kamcmd mod.stats all shm` with 1,000 agents connected (README, "Capacity"):

* every TCP connection: `tcpconn_new` = struct + a read buffer of
  tcp_rd_buf_size (16 kB, kamailio.cfg)                       17,312 bytes
* every WebSocket on top: `wsconn_add` = struct + a frame buffer of the
  core's BUF_SIZE (64 kB), allocated and zeroed at the handshake  65,832 bytes

Everything else an agent costs is transient: a REGISTER transaction ~16 kB for
its few seconds, a call's INVITE transaction and dialog. That is what the
reserve is for: shared memory that new connections may never take, so an
agent who is connected can always register and take calls. On top of it, room
for every agent's REGISTER transaction at once: the login storm after a
restart, when all phones reconnect within seconds and tm keeps each REGISTER
for its wait timer (5 s). Without it, that storm ate into the reserve and
refused 359 of 10,000 agents (make bench, 2,284 logins/s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MB = 1024 * 1024

TCP_CONN_BYTES = 17_312          # tcpconn_new(): struct + 16 kB read buffer
WS_CONN_BYTES = 65_832           # wsconn_add(): struct + 64 kB frame buffer
# Shared memory per connected agent kept free for its transactions, dialog and
# htable entries: a REGISTER (~16 kB while tm keeps it), a call (INVITE
# transaction with its SDP ~20 kB, dialog ~1 kB) at the same time.
RESERVE_PER_AGENT = 40 * 1024
# Every agent's REGISTER transaction alive at once (the login storm).
STORM_BYTES_PER_AGENT = 16 * 1024
BASE_SHM_BYTES = 32 * MB         # tm/dialog hash tables, htables, timers, stats, cfg
BASE_RESERVE_BYTES = 32 * MB
# Connections Kamailio accepts beyond GW_MAX_AGENTS: room to answer a refusal
# (a 503 needs an accepted connection), for half-open connections until they
# are closed (5 s) and for the PBX's own TCP connections.
HEADROOM_MIN = 256
HEADROOM_RATIO = 0.25
BASE_PKG_MB = 16                 # per process: parsing, the app's RPC replies
PKG_BYTES_PER_CONN = 160         # tcp_main/reader io_wait tables, tcp_list replies
BASE_FDS = 1024                  # listeners, logs, Redis/rtpengine sockets, Python
RTPENGINE_PORTS_PER_CALL = 4     # RTP+RTCP pairs on the phone side and the PBX side
REDIS_BYTES_PER_AGENT = 1024     # gw:reg:<DN> hash with its TTL (measured ~0.6 kB)


class SizingError(ValueError):
    """GW_MAX_AGENTS cannot be served; the message says what to change."""


@dataclass(frozen=True)
class Sizing:
    max_agents: int
    tcp_max_connections: int     # kamailio.cfg tcp_max_connections
    shm_mb: int                  # kamailio -m
    pkg_mb: int                  # kamailio -M
    shm_reserve_bytes: int       # refuse new WebSockets when less shm than this is free
    nofile: int                  # RLIMIT_NOFILE for Kamailio
    media_ports_wanted: int      # rtpengine ports for every agent on a call at once
    redis_bytes: int             # Redis memory for the bindings

    @property
    def shm_refuse_ratio(self) -> float:
        """Used/total shm above which new WebSockets are refused."""
        return 1.0 - self.shm_reserve_bytes / (self.shm_mb * MB)

    def rtpengine_nofile(self, media_ports: tuple[int, int]) -> int:
        """One socket per media port, plus its control and log descriptors."""
        return media_ports[1] - media_ports[0] + 1 + BASE_FDS

    def media_shortfall(self, media_ports: tuple[int, int]) -> int:
        """How many calls short GW_MEDIA_PORTS is of one call per agent (0: none)."""
        have = (media_ports[1] - media_ports[0] + 1) // RTPENGINE_PORTS_PER_CALL
        return max(0, self.max_agents - have)


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def plan(max_agents: int) -> Sizing:
    """The node's sizes for `max_agents` connected WebRTC agents."""
    if max_agents < 1:
        raise SizingError("GW_MAX_AGENTS must be at least 1")
    headroom = max(HEADROOM_MIN, int(max_agents * HEADROOM_RATIO))
    tcp_max = max_agents + headroom
    reserve = BASE_RESERVE_BYTES + max_agents * RESERVE_PER_AGENT
    # Every TCP slot may be taken (half-open floods included), every agent
    # upgraded and logging in at once, and the reserve is still untouched.
    shm = (BASE_SHM_BYTES + tcp_max * TCP_CONN_BYTES + max_agents * (WS_CONN_BYTES + STORM_BYTES_PER_AGENT)
           + reserve)
    shm_mb = max(128, _round_up(shm / MB, 64))
    pkg_mb = max(BASE_PKG_MB, _round_up(BASE_PKG_MB + tcp_max * PKG_BYTES_PER_CONN / MB, 8))
    return Sizing(
        max_agents=max_agents,
        tcp_max_connections=tcp_max,
        shm_mb=shm_mb,
        pkg_mb=pkg_mb,
        shm_reserve_bytes=reserve,
        nofile=tcp_max + BASE_FDS,
        media_ports_wanted=max_agents * RTPENGINE_PORTS_PER_CALL,
        redis_bytes=max_agents * REDIS_BYTES_PER_AGENT,
    )


def check_nofile(need: int, hard: int, who: str) -> None:
    """Fail with the fix when the hard RLIMIT_NOFILE is below what `who` needs."""
    if hard != -1 and hard < need:
        raise SizingError(
            f"GW_MAX_AGENTS needs {need} open files for {who}, but the hard limit is {hard}: "
            f"raise it (ulimit -Hn, systemd LimitNOFILE=, compose `ulimits: nofile:`) "
            f"or lower GW_MAX_AGENTS")
