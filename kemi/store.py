"""Redis access for registration bindings, one client per Kamailio worker.

Kamailio forks its workers after loading the app, so the client is created lazily
on first use inside the worker, never at import time. redis-py reconnects by itself
on the next command after a failure, which is what lets workers ride out a Redis
restart without being restarted.
"""
from __future__ import annotations

import os
from typing import Optional
from urllib.parse import unquote, urlparse

import redis
import redis.sentinel

from kemi import authguard
from kemi.bindings import Binding, key

TIMEOUT_S = 0.25  # a REGISTER or INVITE must not hang on a sick Redis


class StoreError(RuntimeError):
    """Redis did not answer or refused; callers turn this into 503 + Retry-After."""


def connect(url: str) -> "redis.Redis":
    """A client for redis://host:port/db or redis+sentinel://h1:p1,h2:p2/master/db."""
    parsed = urlparse(url)
    if parsed.scheme == "redis+sentinel":
        hosts = []
        for item in parsed.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host, int(port or 26379)))
        parts = [p for p in parsed.path.split("/") if p]
        master = parts[0] if parts else "mymaster"
        db = int(parts[1]) if len(parts) > 1 else 0
        sentinel = redis.sentinel.Sentinel(
            hosts, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        return sentinel.master_for(
            master, db=db, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            password=unquote(parsed.password) if parsed.password else None)
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)


class BindingStore:
    def __init__(self, url: str) -> None:
        self._url = url
        self._client: Optional[redis.Redis] = None
        self._pid = 0

    def _redis(self) -> "redis.Redis":
        # A client inherited across fork shares sockets with the parent: make our own.
        if self._client is None or self._pid != os.getpid():
            self._client = connect(self._url)
            self._pid = os.getpid()
        return self._client

    def get(self, user: str) -> Optional[Binding]:
        try:
            raw = self._redis().get(key(user))
        except redis.RedisError as exc:
            raise StoreError(f"redis get {key(user)}: {exc}") from exc
        return Binding.from_json(raw) if raw else None

    def lookup(self, user: str, src_ip: str) -> tuple[Optional[Binding], authguard.Bans]:
        """The user's binding and the bans on (src_ip, user) and src_ip, in one
        round trip (MGET): all the success path pays for the failure limits."""
        keys = [key(user), *authguard.ban_keys(src_ip, user)]
        try:
            raw = self._redis().mget(keys)
        except redis.RedisError as exc:
            raise StoreError(f"redis mget {key(user)}: {exc}") from exc
        return (Binding.from_json(raw[0]) if raw[0] else None), authguard.Bans.parse(raw[1], raw[2])

    def auth_failure(self, limits: authguard.Limits, src_ip: str, user: str) -> authguard.Failure:
        try:
            return authguard.record_failure(self._redis(), limits, src_ip, user)
        except redis.RedisError as exc:
            raise StoreError(f"redis auth failure count {src_ip} {user}: {exc}") from exc

    def put(self, binding: Binding) -> None:
        try:
            self._redis().set(key(binding.user), binding.to_json(), ex=max(binding.expires, 1))
        except redis.RedisError as exc:
            raise StoreError(f"redis set {key(binding.user)}: {exc}") from exc

    def delete(self, user: str) -> None:
        try:
            self._redis().delete(key(user))
        except redis.RedisError as exc:
            raise StoreError(f"redis del {key(user)}: {exc}") from exc

    def count(self) -> int:
        """Bindings held (SCAN, never KEYS: Redis must stay responsive)."""
        try:
            return sum(1 for _ in self._redis().scan_iter(match=key("*"), count=1000))
        except redis.RedisError as exc:
            raise StoreError(f"redis scan: {exc}") from exc

    def ping(self) -> bool:
        try:
            return bool(self._redis().ping())
        except redis.RedisError:
            return False
