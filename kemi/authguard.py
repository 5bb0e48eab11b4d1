"""Authentication-failure limits: who may still try a password through the gateway.

The PBX checks the passwords; the gateway counts the PBX's refusals and stops a
source before the PBX sees more guesses (and before a fail2ban on the PBX bans
the gateway's address, and every agent with it). Pure Python around a redis
client handed in: the key layout, the counting and the decisions, testable
without Kamailio.

Redis keys, all with TTLs, shared by every gateway node on the same Redis:

    gw:auth:fail:<ip>:<dn>   failures for one DN from one address (TTL: the window,
                             counted from the first failure)
    gw:auth:failip:<ip>      failures from one address, whatever the DN
    gw:auth:ban:<ip>:<dn>    that address may not try that DN (JSON; TTL GW_AUTH_BAN)
    gw:auth:banip:<ip>       that address may not REGISTER a DN it holds no live
                             binding for (JSON; TTL GW_AUTH_BAN)

A DN never contains ':' (bindings.valid_user), so the last ':' splits <ip>:<dn>,
IPv6 addresses included. Addresses are kept in Python's canonical text form.

What lets the real phone through a ban (an attacker cannot know either): a DN
ban spares a request from the address of the DN's live binding that names the
same phone, i.e. the binding's Contact URI (user@host, JsSIP's random
`<token>@<token>.invalid`) or its +sip.instance. An address ban spares the DNs
that have a live binding from that address.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from kemi.bindings import Binding, ContactSpec, uri_user_host

PREFIX = "gw:auth:"
# Scanners announce themselves in User-Agent; answering them only invites more traffic.
SCANNER_UA = ("friendly-scanner", "sipvicious", "sipcli", "sip-scan", "sipsak", "sundayddr",
              "iwar", "vaxsipuseragent", "pplsip", "sipbomber", "smap", "nessus")
FAIL = PREFIX + "fail:"
FAIL_IP = PREFIX + "failip:"
BAN = PREFIX + "ban:"
BAN_IP = PREFIX + "banip:"
SCOPES = ("dn", "ip")


@functools.lru_cache(maxsize=16384)
def norm_ip(ip: str) -> str:
    """The canonical text of an address; ValueError when it is not one. (Every
    phone's request asks: remembered for the addresses seen lately.)"""
    return str(ipaddress.ip_address(ip.strip().strip("[]")))


def fail_key(ip: str, dn: str) -> str:
    return f"{FAIL}{ip}:{dn}"


def fail_ip_key(ip: str) -> str:
    return f"{FAIL_IP}{ip}"


def ban_key(ip: str, dn: str) -> str:
    return f"{BAN}{ip}:{dn}"


def ban_ip_key(ip: str) -> str:
    return f"{BAN_IP}{ip}"


def ban_keys(ip: str, dn: str) -> list[str]:
    """The keys a request's lookup reads (after the binding): DN ban, address ban."""
    return [ban_key(ip, dn), ban_ip_key(ip)]


@dataclass(frozen=True)
class Limits:
    dn_limit: int = 5        # failures per (address, DN); 0: no limit
    ip_limit: int = 30       # failures per address across DNs; 0: no limit
    window: int = 600        # seconds the failures are counted over
    ban: int = 3600          # seconds a ban lasts

    @classmethod
    def from_settings(cls, cfg: Any) -> "Limits":
        return cls(cfg.auth_fail_limit, cfg.auth_fail_ip_limit, cfg.auth_fail_window, cfg.auth_ban)


@dataclass
class Ban:
    scope: str               # "dn" or "ip"
    src: str                 # the address
    user: str                # the DN ("" for an address ban)
    failures: int
    at: float                # when it was imposed (Unix time)
    expires_left: int = -1   # seconds left (Redis TTL), when read back

    @property
    def key(self) -> str:
        return ban_key(self.src, self.user) if self.scope == "dn" else ban_ip_key(self.src)

    def to_json(self) -> str:
        data = asdict(self)
        del data["expires_left"]
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes, expires_left: int = -1) -> "Ban":
        data = json.loads(raw)
        return cls(str(data["scope"]), str(data["src"]), str(data.get("user", "")),
                   int(data.get("failures", 0)), float(data.get("at", 0.0)), expires_left)


@dataclass(frozen=True)
class Bans:
    """What one lookup found for (address, DN)."""

    dn: Optional[Ban] = None
    ip: Optional[Ban] = None

    @classmethod
    def parse(cls, dn_raw: Any, ip_raw: Any) -> "Bans":
        return cls(_ban_or_none(dn_raw), _ban_or_none(ip_raw))


def _ban_or_none(raw: Any) -> Optional[Ban]:
    if not raw:
        return None
    try:
        return Ban.from_json(raw)
    except (ValueError, KeyError, TypeError):
        # Unreadable (hand-written?) but present: still a ban.
        return Ban("?", "", "", 0, 0.0)


# ------------------------------------------------------------------ decisions
def is_failure(status: int, had_credentials: bool, challenge: str = "") -> bool:
    """Did the PBX refuse a password? 401/407 to a request that carried Digest
    credentials (unless the nonce was only stale: the password was right), or 403."""
    if status == 403:
        return True
    if status in (401, 407) and had_credentials:
        return not re.search(r"\bstale\s*=\s*\"?true\b", challenge, re.I)
    return False


def binding_source(binding: Binding) -> str:
    """The address the binding was registered from (older records: its received URI)."""
    if binding.src_ip:
        return binding.src_ip
    m = re.match(r"^sips?:\[?([0-9A-Fa-f:.]+?)\]?:\d+", binding.received)
    return m.group(1) if m else ""


def same_phone(binding: Binding, contact_uri: str, instance: str) -> bool:
    if contact_uri and uri_user_host(binding.contact) == uri_user_host(contact_uri):
        return True
    return bool(instance) and binding.instance == instance


def registered_phone(src_ip: str, binding: Optional[Binding], contact: Optional[ContactSpec]) -> bool:
    """Is the request from the phone of the DN's live binding: the binding's
    address, and its Contact URI or +sip.instance (which an attacker cannot know)?
    Such a request passes a DN ban, and its refusals are not counted: a 403 to a
    call the PBX forbids is no password guess."""
    return (binding is not None and contact is not None and _same_ip(binding_source(binding), src_ip)
            and same_phone(binding, contact.uri, contact.params.get("+sip.instance", "")))


def verdict(method: str, src_ip: str, binding: Optional[Binding], bans: Bans,
            contact: Optional[ContactSpec] = None) -> Optional[str]:
    """None when the request may go to the PBX, else the scope of the ban that stops
    it. contact: the request's (first) Contact, naming the phone."""
    from_here = binding is not None and _same_ip(binding_source(binding), src_ip)
    if bans.dn is not None:
        return None if registered_phone(src_ip, binding, contact) else "dn"
    if bans.ip is not None and method == "REGISTER" and not from_here:
        return "ip"
    return None


def _same_ip(a: str, b: str) -> bool:
    try:
        return norm_ip(a) == norm_ip(b)
    except ValueError:
        return False


# --------------------------------------------------------------- credentials
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s",]+)\s*(,|$)')
_REQUIRED = ("username", "realm", "nonce", "uri", "response")
_HEX_RESPONSE = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}")


_DIGEST = re.compile(r"\s*digest(\s|$)", re.I)


def is_digest(value: str) -> bool:
    """Credentials in the Digest scheme. Any other scheme counts as none: the PBX
    will challenge as if there were none (RFC 4475 torture test regaut01)."""
    return bool(_DIGEST.match(value))


CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization")


def credentials(headers: list[tuple[str, str]]) -> tuple[bool, Optional[tuple[str, str]]]:
    """(any Digest credentials?, (header, problem) of the first malformed one or None)
    for a request's (name, value) credential headers."""
    found = False
    for name, value in headers:
        if not is_digest(value):
            continue          # another scheme: as good as none (the PBX challenges)
        problem = digest_problem(value)
        if problem:
            return found, (name, problem)
        found = True
    return found, None


def digest_problem(value: str) -> Optional[str]:
    """Why a Digest Authorization/Proxy-Authorization value is malformed, or None."""
    text = value.strip()
    rest = text[6:].strip()
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            return f"cannot parse the parameters at {rest[pos:pos + 20]!r}"
        name, raw = m.group(1).lower(), m.group(2)
        if name in params:
            return f"parameter {name} given twice"
        params[name] = raw[1:-1] if raw.startswith('"') else raw
        pos = m.end()
        if not m.group(3) and pos < len(rest):
            return f"cannot parse the parameters at {rest[pos:pos + 20]!r}"
    for name in _REQUIRED:
        if name not in params:
            return f"no {name} parameter"
        if name != "realm" and not params[name]:
            return f"empty {name}"
    if not _HEX_RESPONSE.fullmatch(params["response"]):
        return "response is not a hex digest"
    return None


# ---------------------------------------------------------------- Redis side
@dataclass
class Failure:
    dn_count: int
    ip_count: int
    new_bans: list[Ban]


def record_failure(client: Any, limits: Limits, ip: str, dn: str,
                   now: Optional[float] = None) -> Failure:
    """Count one failure of (ip, dn); impose the bans it crosses. Only the node
    that creates a ban gets it back in new_bans (SET NX), so it is logged once."""
    now = time.time() if now is None else now
    counters = []
    if limits.dn_limit > 0:
        counters.append(fail_key(ip, dn))
    if limits.ip_limit > 0:
        counters.append(fail_ip_key(ip))
    if not counters:
        return Failure(0, 0, [])
    # In one transaction: a counter's TTL is set when it is created (SET NX EX),
    # so a counter never lives on without one, whatever the Redis version.
    pipe = client.pipeline(transaction=True)
    for k in counters:
        pipe.set(k, 0, ex=limits.window, nx=True)
        pipe.incr(k)
    counts = pipe.execute()[1::2]
    dn_count = int(counts.pop(0)) if limits.dn_limit > 0 else 0
    ip_count = int(counts.pop(0)) if limits.ip_limit > 0 else 0
    due = []
    if limits.dn_limit > 0 and dn_count >= limits.dn_limit:
        due.append(Ban("dn", ip, dn, dn_count, round(now, 3)))
    if limits.ip_limit > 0 and ip_count >= limits.ip_limit:
        due.append(Ban("ip", ip, "", ip_count, round(now, 3)))
    if not due:
        return Failure(dn_count, ip_count, [])
    pipe = client.pipeline(transaction=False)
    for ban in due:
        pipe.set(ban.key, ban.to_json(), ex=limits.ban, nx=True)
    made = pipe.execute()
    return Failure(dn_count, ip_count, [b for b, ok in zip(due, made) if ok])


def list_bans(client: Any) -> list[Ban]:
    """Every ban in force, with its time left, addresses first then DNs."""
    keys = sorted(_text(k) for pattern in (BAN + "*", BAN_IP + "*")
                  for k in client.scan_iter(match=pattern, count=1000))
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.get(k)
        pipe.ttl(k)
    values = pipe.execute()
    out = []
    for i, k in enumerate(keys):
        raw, ttl = values[2 * i], values[2 * i + 1]
        if raw is None:        # expired between SCAN and GET
            continue
        try:
            ban = Ban.from_json(raw, int(ttl))
        except (ValueError, KeyError, TypeError):
            ban = _ban_from_key(k, int(ttl))
        out.append(ban)
    out.sort(key=lambda b: (b.src, b.scope != "ip", b.user))
    return out


def _ban_from_key(key: str, ttl: int) -> Ban:
    if key.startswith(BAN_IP):
        return Ban("ip", key[len(BAN_IP):], "", 0, 0.0, ttl)
    ip, _, dn = key[len(BAN):].rpartition(":")
    return Ban("dn", ip, dn, 0, 0.0, ttl)


def unban(client: Any, ip: str, dn: Optional[str] = None) -> list[str]:
    """Lift the ban of (ip, dn), or every ban of ip (its address ban and its DN
    bans), with the failures counted so far. Returns the ban keys that existed."""
    ip = norm_ip(ip)
    if dn is not None:
        bans = [ban_key(ip, dn)]
        counters = [fail_key(ip, dn)]
    else:
        bans = [ban_ip_key(ip)] + [_text(k) for k in client.scan_iter(match=f"{BAN}{ip}:*", count=1000)]
        counters = [fail_ip_key(ip)] + [_text(k) for k in
                                        client.scan_iter(match=f"{FAIL}{ip}:*", count=1000)]
    pipe = client.pipeline(transaction=False)
    for k in bans:
        pipe.delete(k)
    for k in counters:
        pipe.delete(k)
    deleted = pipe.execute()
    return [k for k, n in zip(bans, deleted) if n]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


_SCANNER = re.compile("|".join(map(re.escape, SCANNER_UA)), re.I).search


def is_scanner(user_agent: str) -> bool:
    """(Every request asks: one search, not one per name.)"""
    return bool(user_agent) and _SCANNER(user_agent) is not None
