"""gwctl registrations: agents registered (Redis gw:reg:*), with the seconds each
binding has left and whether its WebSocket is still open on this node."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from gw.ctl.common import GwctlError, redact_url, redis_client
from gw.ctl.kamailio import Kamailio, ws_dump
from gw.ctl.output import age, print_json, table
from kemi import bindings
from kemi.settings import Settings

HELP = "agents registered (Redis gw:reg:*)"


def registrations(cfg: Settings) -> list[dict]:
    """Every binding in Redis, with the seconds it has left (TTL)."""
    import redis

    try:
        client = redis_client(cfg.redis_url)
        keys = sorted(client.scan_iter(match=bindings.key("*"), count=1000))
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
            pipe.ttl(k)
        values = pipe.execute() if keys else []
    except redis.RedisError as exc:
        raise GwctlError(f"Redis {redact_url(cfg.redis_url)}: {exc}") from None
    rows = []
    for i, k in enumerate(keys):
        raw, ttl = values[2 * i], values[2 * i + 1]
        if raw is None:          # expired between SCAN and GET
            continue
        name = k.decode() if isinstance(k, bytes) else k
        try:
            rec = asdict(bindings.Binding.from_json(raw))
        except (ValueError, TypeError) as exc:
            rec = {"user": name[len(bindings.KEY_PREFIX):], "error": f"unreadable record: {exc}"}
        rec["expires_left"] = ttl
        rows.append(rec)
    rows.sort(key=lambda r: str(r.get("user")))
    return rows


def command(cfg: Settings, kam: Kamailio, args: argparse.Namespace, env: dict[str, str]) -> int:
    rows = registrations(cfg)
    # Is each phone's WebSocket still open? Only this node can tell, for its own phones.
    try:
        open_ids = {c["id"] for c in ws_dump(kam)["connections"]}
    except GwctlError:
        open_ids = None
    for r in rows:
        if r.get("node") != str(cfg.sip_listen):
            r["ws"] = "other node"
        elif open_ids is not None:
            r["ws"] = "open" if r.get("conid") in open_ids else "gone"
        else:
            r["ws"] = None
    if args.json:
        print_json({"registrations": rows})
        return 0
    for r in rows:
        left = r.get("expires_left")
        r["left"] = age(left) if isinstance(left, int) and left >= 0 else "no expiry"
    print(table(rows, [("USER", "user"), ("RECEIVED", "received"), ("NODE", "node"),
                       ("EXPIRES IN", "left"), ("WS", "ws"), ("USER AGENT", "user_agent")]))
    print(f"{len(rows)} registration(s)")
    return 0
