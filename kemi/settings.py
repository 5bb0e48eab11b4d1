"""The gateway's settings: read once from GW_* environment variables, validated.

Pure Python (no Kamailio): the launcher validates with it before anything starts,
and the KEMI app reads the same values inside Kamailio, so there is one source.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlparse

from kemi import sizing as sizing_mod

DEFAULTS: dict[str, str] = {
    "GW_WS_LISTEN": "127.0.0.1:8080",
    "GW_SIP_LISTEN": "127.0.0.1:5070",
    "GW_PBX": "127.0.0.1:5060",
    "GW_REDIS_URL": "redis://127.0.0.1:6379/0",
    "GW_RTPENGINE": "udp:127.0.0.1:2223",
    "GW_MEDIA_IP": "127.0.0.1",
    "GW_MEDIA_PORTS": "10000-20000",
    # Optional: space/comma separated; empty means "not restricted".
    "GW_WS_ORIGINS": "",
    "GW_PBX_ALLOW": "",
    # Seconds between SIP OPTIONS probes of each PBX (Kamailio's dispatcher) when
    # GW_PBX lists more than one; 0 turns probing off. A lone PBX is never probed.
    "GW_PBX_PROBE": "5",
    "GW_LOG_LEVEL": "info",
    # REGISTERs one source (IP:port) may send per 10 s before it is blocked for
    # a minute; an agent sends 2 every few minutes. 0 turns the limit off (load tests).
    "GW_FLOOD_LIMIT": "20",
    # coturn's REST-API shared secret (use-auth-secret); empty: /turn is off.
    "GW_TURN_SECRET": "",
    "GW_TURN_URIS": "",
    "GW_TURN_TTL": "3600",
    # Authentication failures (the PBX's 401/407 to a request that carried
    # credentials, or its 403) before the gateway answers 403 itself: per
    # (source IP, DN), and per source IP across DNs; 0 turns a limit off.
    "GW_AUTH_FAIL_LIMIT": "5",
    "GW_AUTH_FAIL_IP_LIMIT": "30",
    "GW_AUTH_FAIL_WINDOW": "600",
    "GW_AUTH_BAN": "3600",
    # Connected agents one node serves: sizes Kamailio's memory, connection and
    # file limits (kemi/sizing.py); beyond it new WebSockets get 503.
    "GW_MAX_AGENTS": "10000",
    # Open WebSocket-port connections per source address (a contact centre's
    # agents share one NAT address); 0 turns the limit off.
    "GW_WS_MAX_PER_IP": "1000",
    # Reverse proxies (nginx) in front of GW_WS_LISTEN whose X-Real-IP header
    # names the phone's address; empty: the TCP source is the phone's address.
    # They limit per client themselves, so their own address is not limited here.
    "GW_WS_PROXIES": "",
    # How comfort noise is kept from the phones (rtpengine/FLAGS.md): "auto" = an
    # nftables filter in front of rtpengine when `make run` finds one working,
    # else rtpengine's transcoder; "on" = the filter is required (make run
    # refuses to start without it); "off" = always the transcoder.
    "GW_CN_FILTER": "auto",
    # Seconds an in-dialog request for a phone whose WebSocket dropped waits for
    # the phone to reconnect and register again before it fails with 480.
    "GW_RECONNECT_WAIT": "5",
}

CN_FILTER_VALUES = ("auto", "on", "off")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    ws_listen: HostPort
    sip_listen: HostPort
    pbxs: tuple[HostPort, ...]   # GW_PBX, in priority order
    redis_url: str
    rtpengines: tuple[HostPort, ...]
    media_ip: str
    media_ports: tuple[int, int]
    ws_origins: tuple[str, ...] = ()
    pbx_allow: tuple[str, ...] = ()
    log_level: str = "info"
    flood_limit: int = 20
    turn_secret: str = field(default="", repr=False)
    turn_uris: tuple[str, ...] = ()
    turn_ttl: int = 3600
    auth_fail_limit: int = 5
    auth_fail_ip_limit: int = 30
    auth_fail_window: int = 600
    auth_ban: int = 3600
    max_agents: int = 10000
    ws_max_per_ip: int = 1000
    ws_proxies: tuple[str, ...] = ()
    cn_filter: str = "auto"
    pbx_probe: int = 5
    reconnect_wait: float = 5.0
    raw: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def rtpengine_sock(self) -> str:
        """The value for Kamailio's rtpengine module `rtpengine_sock` parameter."""
        return " ".join(f"udp:{r}" for r in self.rtpengines)

    @property
    def pbx(self) -> HostPort:
        """The first PBX of GW_PBX: the one everything goes to while it is up."""
        return self.pbxs[0]

    @property
    def pbx_uri(self) -> str:
        return pbx_uri(self.pbx)

    @property
    def pbx_probe_interval(self) -> int:
        """Seconds between dispatcher OPTIONS probes; 0 when there is nothing to
        fail over to (a lone PBX is left alone, as before GW_PBX took a list)."""
        return self.pbx_probe if len(self.pbxs) > 1 else 0

    @property
    def trusted_sources(self) -> tuple[str, ...]:
        """Addresses allowed to send calls toward agents: every PBX, and GW_PBX_ALLOW."""
        return (*dict.fromkeys(p.host for p in self.pbxs), *self.pbx_allow)

    def dispatcher_list(self) -> str:
        """Kamailio dispatcher's list file: set PBX_SET, GW_PBX in priority order
        (the first entry gets the highest priority; ds_select_dst algorithm 8).
        A host name gets flag 16: resolved when used, as a single GW_PBX always
        was, not once at start (where a name that fails to resolve is dropped)."""
        lines = ["# setid uri flags priority - generated from GW_PBX (kemi/settings.py)"]
        for i, pbx in enumerate(self.pbxs):
            flags = 0 if _is_ip(pbx.host) else 16
            lines.append(f"{PBX_SET} {pbx_uri(pbx)} {flags} {len(self.pbxs) - i}")
        return "\n".join(lines) + "\n"

    @property
    def sizing(self) -> sizing_mod.Sizing:
        return sizing_mod.plan(self.max_agents)

    def kamailio_defines(self) -> list[str]:
        """`-A` pre-processor defines for kamailio.cfg (listeners must be static)."""
        return [
            f"SIP_IP={self.sip_listen.host}",
            f"SIP_PORT={self.sip_listen.port}",
            f"WS_IP={self.ws_listen.host}",
            f"WS_PORT={self.ws_listen.port}",
            f'RTPENGINE_SOCK="{self.rtpengine_sock}"',
            f"TCP_MAX_CONNECTIONS={self.sizing.tcp_max_connections}",
            f"OPEN_FILES={self.sizing.nofile}",
            f"PBX_PROBE={self.pbx_probe_interval}",
            f'PBX_PING_FROM="sip:gateway@{self.sip_listen}"',
        ]


PBX_SET = 1   # the dispatcher set holding GW_PBX


def pbx_uri(pbx: HostPort) -> str:
    return f"sip:{pbx};transport=udp"


def _ip(name: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected an IP address") from None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _port(name: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SettingsError(f"{name}: port {value!r} is not in 1-65535")
    return int(value)


def _hostport(name: str, value: str, *, need_ip: bool = True) -> HostPort:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise SettingsError(f"{name}={value!r}: expected HOST:PORT")
    if need_ip:
        host = _ip(name, host)
    elif not all(part.replace("-", "").isalnum() for part in host.split(".")):
        raise SettingsError(f"{name}={value!r}: {host!r} is not a host name or address")
    return HostPort(host, _port(name, port))


def _pbxs(name: str, value: str) -> tuple[HostPort, ...]:
    """`h1:p1,h2:p2` (comma or space separated), IPs or host names, in priority order."""
    out: list[HostPort] = []
    for part in value.split(","):
        if not part.strip():
            raise SettingsError(f"{name}={value!r}: empty entry in the list (expected HOST:PORT,HOST:PORT)")
        for item in part.split():
            pbx = _hostport(name, item, need_ip=False)
            pbx = HostPort(pbx.host.lower(), pbx.port)
            if pbx in out:
                raise SettingsError(f"{name}={value!r}: {pbx} is listed twice")
            out.append(pbx)
    return tuple(out)


def _rtpengines(name: str, value: str) -> tuple[HostPort, ...]:
    items = value.replace(",", " ").split()
    if not items:
        raise SettingsError(f"{name}: at least one rtpengine ng address is required")
    out = []
    for item in items:
        proto, sep, rest = item.partition(":")
        if not sep or proto != "udp":
            raise SettingsError(f"{name}={item!r}: expected udp:IP:PORT (rtpengine ng control socket)")
        out.append(_hostport(name, rest))
    return tuple(out)


def _redis_url(name: str, value: str) -> str:
    url = urlparse(value)
    if url.scheme not in ("redis", "redis+sentinel") or not url.hostname:
        raise SettingsError(f"{name}={value!r}: expected redis://HOST:PORT/DB")
    if url.scheme == "redis+sentinel":
        # redis+sentinel://H1:P1,H2:P2/MASTER/DB: several Sentinels, no single port.
        for item in url.netloc.rsplit("@", 1)[-1].split(","):
            host, sep, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(f"{name}={value!r}: bad Sentinel address {item!r} (HOST:PORT)")
        parts = [p for p in url.path.split("/") if p]
        if not parts or (len(parts) > 1 and not parts[1].isdigit()):
            raise SettingsError(f"{name}={value!r}: expected redis+sentinel://H1:P1,H2:P2/MASTER/DB")
        return value
    try:
        url.port
    except ValueError:
        raise SettingsError(f"{name}={value!r}: bad port") from None
    db = url.path.lstrip("/")
    if db and not db.isdigit() and url.scheme == "redis":
        raise SettingsError(f"{name}={value!r}: database must be a number")
    return value


def _port_range(name: str, value: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not sep:
        raise SettingsError(f"{name}={value!r}: expected LOW-HIGH")
    lo, hi = _port(name, low), _port(name, high)
    if lo >= hi:
        raise SettingsError(f"{name}={value!r}: LOW must be below HIGH")
    return lo, hi


def _count(name: str, value: str) -> int:
    if not value.isdigit():
        raise SettingsError(f"{name}={value!r}: expected a whole number (0 disables)")
    return int(value)


def _seconds(name: str, value: str, most: int) -> int:
    if not value.isdigit() or not 0 < int(value) <= most:
        raise SettingsError(f"{name}={value!r}: expected seconds, 1 to {most}")
    return int(value)


def _turn_uris(name: str, value: str) -> tuple[str, ...]:
    uris = _list(value)
    for uri in uris:
        if uri.split(":", 1)[0] not in ("stun", "stuns", "turn", "turns"):
            raise SettingsError(f"{name}: {uri!r} must start with stun:, stuns:, turn: or turns:")
    return uris


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value.lower() not in allowed:
        raise SettingsError(f"{name}={value!r}: expected {', '.join(allowed[:-1])} or {allowed[-1]}")
    return value.lower()
def _wait_seconds(name: str, value: str, most: float) -> float:
    """Seconds, fractions allowed, 0 included (0 disables)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= most:
        raise SettingsError(f"{name}={value!r}: expected seconds from 0 to {most:g} (0 disables)")
    return seconds


def _list(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.replace(",", " ").split() if v)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the GW_* settings; raise SettingsError naming the variable."""
    src = os.environ if env is None else env
    raw = {k: (src.get(k) or "").strip() or d for k, d in DEFAULTS.items()}
    level = raw["GW_LOG_LEVEL"].lower()
    if level not in ("debug", "info", "warning", "error"):
        raise SettingsError(f"GW_LOG_LEVEL={level!r}: expected debug, info, warning or error")
    settings = Settings(
        ws_listen=_hostport("GW_WS_LISTEN", raw["GW_WS_LISTEN"]),
        sip_listen=_hostport("GW_SIP_LISTEN", raw["GW_SIP_LISTEN"]),
        pbxs=_pbxs("GW_PBX", raw["GW_PBX"]),
        redis_url=_redis_url("GW_REDIS_URL", raw["GW_REDIS_URL"]),
        rtpengines=_rtpengines("GW_RTPENGINE", raw["GW_RTPENGINE"]),
        media_ip=_ip("GW_MEDIA_IP", raw["GW_MEDIA_IP"]),
        media_ports=_port_range("GW_MEDIA_PORTS", raw["GW_MEDIA_PORTS"]),
        ws_origins=_list(raw["GW_WS_ORIGINS"]),
        pbx_allow=tuple(_ip("GW_PBX_ALLOW", a) for a in _list(raw["GW_PBX_ALLOW"])),
        log_level=level,
        flood_limit=_count("GW_FLOOD_LIMIT", raw["GW_FLOOD_LIMIT"]),
        turn_secret=raw["GW_TURN_SECRET"],
        turn_uris=_turn_uris("GW_TURN_URIS", raw["GW_TURN_URIS"]),
        turn_ttl=_count("GW_TURN_TTL", raw["GW_TURN_TTL"]),
        auth_fail_limit=_count("GW_AUTH_FAIL_LIMIT", raw["GW_AUTH_FAIL_LIMIT"]),
        auth_fail_ip_limit=_count("GW_AUTH_FAIL_IP_LIMIT", raw["GW_AUTH_FAIL_IP_LIMIT"]),
        auth_fail_window=_seconds("GW_AUTH_FAIL_WINDOW", raw["GW_AUTH_FAIL_WINDOW"], 7 * 24 * 3600),
        auth_ban=_seconds("GW_AUTH_BAN", raw["GW_AUTH_BAN"], 30 * 24 * 3600),
        max_agents=_count("GW_MAX_AGENTS", raw["GW_MAX_AGENTS"]),
        ws_max_per_ip=_count("GW_WS_MAX_PER_IP", raw["GW_WS_MAX_PER_IP"]),
        ws_proxies=tuple(_ip("GW_WS_PROXIES", a) for a in _list(raw["GW_WS_PROXIES"])),
        cn_filter=_choice("GW_CN_FILTER", raw["GW_CN_FILTER"], CN_FILTER_VALUES),
        pbx_probe=_count("GW_PBX_PROBE", raw["GW_PBX_PROBE"]),
        # At most 30 s: a PBX gives up on a non-INVITE request after 32 s (RFC 3261 Timer F).
        reconnect_wait=_wait_seconds("GW_RECONNECT_WAIT", raw["GW_RECONNECT_WAIT"], 30),
        raw=raw,
    )
    if settings.ws_listen == settings.sip_listen:
        raise SettingsError("GW_WS_LISTEN and GW_SIP_LISTEN must differ")
    if settings.turn_secret and not settings.turn_uris:
        raise SettingsError("GW_TURN_URIS: required when GW_TURN_SECRET is set (turn:host:3478)")
    if not 0 < settings.turn_ttl <= 7 * 24 * 3600:
        raise SettingsError("GW_TURN_TTL: must be 1 to 604800 seconds")
    if not 1 <= settings.max_agents <= 1_000_000:
        raise SettingsError("GW_MAX_AGENTS: must be 1 to 1000000 connected agents per node")
    if settings.sip_listen in settings.pbxs:
        raise SettingsError(f"GW_PBX: {settings.sip_listen} is the gateway itself (GW_SIP_LISTEN): "
                            "calls would loop")
    if settings.pbx_probe > 3600:
        raise SettingsError("GW_PBX_PROBE: must be 0 (off) to 3600 seconds")
    return settings
