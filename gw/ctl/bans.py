"""gwctl bans / gwctl unban: the authentication-failure bans (kemi/authguard.py).

    gwctl bans                 every ban in force: address, DN (* = every DN it
                               has no live binding for), failures, time left
    gwctl unban IP [DN]        lift the ban on IP for DN, or every ban on IP,
                               with the failures counted so far; exit 1 if none

Stdlib, redis and kemi's pure modules only.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from gw.ctl.common import GwctlError, redact_url, redis_client
from gw.ctl.kamailio import Kamailio
from kemi import authguard, bindings
from kemi.settings import Settings


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("bans", parents=[common],
                   help="sources banned after failed authentications (Redis gw:auth:*)")
    u = sub.add_parser("unban", parents=[common], help="lift a ban: IP [DN]")
    u.add_argument("ip", help="the banned address")
    u.add_argument("dn", nargs="?", help="only this DN's ban (default: every ban on IP)")


def command(cfg: Settings, kam: Kamailio, args: argparse.Namespace, env: dict[str, str]) -> int:
    """gwctl bans and gwctl unban."""
    import redis

    try:
        client = redis_client(cfg.redis_url)
        if args.command == "bans":
            return cmd_bans(client, args.json)
        return cmd_unban(client, args.ip, args.dn, args.json)
    except redis.RedisError as exc:
        raise GwctlError(f"Redis {redact_url(cfg.redis_url)}: {exc}") from None


def cmd_bans(client: Any, as_json: bool) -> int:
    rows = authguard.list_bans(client)
    if as_json:
        print(json.dumps({"bans": [vars(b) for b in rows]}, indent=2))
        return 0
    table = [("SOURCE", "DN", "SCOPE", "FAILURES", "EXPIRES IN")]
    table += [(b.src, b.user or "*", b.scope, str(b.failures), _left(b.expires_left)) for b in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"{len(rows)} ban(s)")
    return 0


def cmd_unban(client: Any, ip: str, dn: Optional[str], as_json: bool) -> int:
    try:
        ip = authguard.norm_ip(ip)
    except ValueError:
        print(f"gwctl: {ip!r} is not an IP address", file=sys.stderr)
        return 2
    if dn is not None and not bindings.valid_user(dn):
        print(f"gwctl: {dn!r} is not a DN ({bindings.user_problem(dn)})", file=sys.stderr)
        return 2
    lifted = authguard.unban(client, ip, dn)
    what = f"{ip} for {dn}" if dn is not None else ip
    if as_json:
        print(json.dumps({"src": ip, "user": dn, "lifted": lifted}, indent=2))
    elif lifted:
        print(f"lifted {len(lifted)} ban(s) on {what}; its failure counts start again from 0")
    else:
        print(f"no ban on {what} (failure counts reset anyway)")
    return 0 if lifted else 1


def _left(seconds: int) -> str:
    if seconds < 0:
        return "no expiry"
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
