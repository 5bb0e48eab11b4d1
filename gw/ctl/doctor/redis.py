"""redis: GW_REDIS_URL answers PING with our credentials (the store of record for
registrations)."""
from __future__ import annotations

from gw.ctl.common import redact_url, redis_client
from gw.ctl.doctor.base import Check, fail, ok
from kemi import bindings
from kemi.settings import Settings


def redis_check(cfg: Settings) -> dict:
    import redis

    where = redact_url(cfg.redis_url)
    try:
        client = redis_client(cfg.redis_url, timeout=1.0)
        client.ping()
        count = sum(1 for _ in client.scan_iter(match=bindings.key("*"), count=1000))
        return ok("redis", f"{where} answers PING; {count} registration(s)", data={"registrations": count})
    except redis.AuthenticationError as exc:
        return fail("redis", f"{where} refuses our credentials: {exc}",
                    "Put Redis's password in GW_REDIS_URL (redis://:PASSWORD@HOST:PORT/DB), "
                    "the same as its requirepass.")
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            return fail("redis", f"{where} refuses our credentials: {exc}",
                        "Put Redis's password in GW_REDIS_URL (redis://:PASSWORD@HOST:PORT/DB).")
        return fail("redis", f"{where}: {exc}", "See Redis's log.")
    except redis.RedisError as exc:
        return fail("redis", f"{where} does not answer: {exc}",
                    "Start Redis (docker compose up -d redis / systemctl start redis-server) or fix "
                    "GW_REDIS_URL. Until it answers, REGISTERs get 503 and calls to agents fail.")


CHECK = Check("redis", lambda ctx, engine: redis_check(ctx.cfg))
