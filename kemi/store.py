"""Redis access for registration bindings, one client per Kamailio worker.

Kamailio forks its workers after loading the app, so the clients are created
lazily on first use inside the worker, never at import time. The routing's own
commands (a binding's GET, the REGISTER/INVITE lookup's MGET, the binding's SET
and DEL) go through kemi/resp.py, a socket and a parser, because redis-py costs
more per command than the rest of a message's routing (issue 14); everything
else (the failure counters' transactions, SCAN, PING, Sentinel's discovery of
the primary) is redis-py. Both reconnect by themselves on the next command
after a failure, which is what lets workers ride out a Redis restart or a
Sentinel failover without being restarted.
"""
from __future__ import annotations

import os
from typing import Optional
from urllib.parse import unquote, urlparse

import redis
import redis.sentinel

from kemi import authguard, resp
from kemi.bindings import Binding, key
from kemi.reconnect import ContactIndex, contact_key, same_phone

TIMEOUT_S = 0.25  # a REGISTER or INVITE must not hang on a sick Redis


class StoreError(RuntimeError):
    """Redis did not answer or refused; callers turn this into 503 + Retry-After."""


def _sentinel(url: str) -> tuple["redis.sentinel.Sentinel", str, int]:
    """redis+sentinel://h1:p1,h2:p2/master/db: the Sentinels, the master's name, the db."""
    parsed = urlparse(url)
    hosts = []
    for item in parsed.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host, int(port or 26379)))
    parts = [p for p in parsed.path.split("/") if p]
    master = parts[0] if parts else "mymaster"
    db = int(parts[1]) if len(parts) > 1 else 0
    sentinel = redis.sentinel.Sentinel(hosts, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    return sentinel, master, db


def connect(url: str) -> "redis.Redis":
    """A client for redis://host:port/db or redis+sentinel://h1:p1,h2:p2/master/db."""
    parsed = urlparse(url)
    if parsed.scheme == "redis+sentinel":
        sentinel, master, db = _sentinel(url)
        return sentinel.master_for(
            master, db=db, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            password=unquote(parsed.password) if parsed.password else None)
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)


def _index(raw: Optional[bytes]) -> Optional[ContactIndex]:
    try:
        return ContactIndex.from_json(raw) if raw else None
    except (ValueError, KeyError, TypeError):
        return None  # not ours or damaged: as if absent


def fast_connect(url: str) -> resp.Connection:
    """The hot path's connection to the same server connect() reaches (for
    Sentinel: the primary the Sentinels name at each connect)."""
    parsed = urlparse(url)
    password = unquote(parsed.password) if parsed.password else None
    if parsed.scheme == "redis+sentinel":
        sentinel, master, db = _sentinel(url)

        def primary() -> tuple[str, int]:
            try:
                return sentinel.discover_master(master)
            except redis.RedisError as exc:
                raise resp.RespError(f"sentinel: {exc}") from None
        return resp.Connection(primary, password=password, db=db, timeout=TIMEOUT_S)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    path = parsed.path.strip("/")
    return resp.Connection(lambda: (host, port), password=password,
                           username=unquote(parsed.username) if parsed.username else None,
                           db=int(path) if path.isdigit() else 0, timeout=TIMEOUT_S)


class BindingStore:
    def __init__(self, url: str) -> None:
        self._url = url
        self._client: Optional[redis.Redis] = None
        self._fast: Optional[resp.Connection] = None
        self._pid = 0

    def _redis(self) -> "redis.Redis":
        # A client inherited across fork shares sockets with the parent: make our own.
        if self._client is None or self._pid != os.getpid():
            self._client = connect(self._url)
            self._pid = os.getpid()
        return self._client

    def forget(self) -> None:
        """In a newly forked worker (kemi/app.py child_init): connect anew. The hot
        path does not ask os.getpid() (a system call) before each command: only
        Kamailio's main process forks, and it never routes, so never connects."""
        self._fast = None
        self._client = None

    def _conn(self) -> resp.Connection:
        if self._fast is None:
            self._fast = fast_connect(self._url)
        return self._fast

    def _cmd(self, *args: str | bytes | int) -> resp.Reply:
        """One hot-path command (kemi/resp.py), StoreError when it fails."""
        try:
            return self._conn().command(*args)
        except resp.RespError as exc:
            raise StoreError(f"redis {args[0]} {args[1]}: {exc}") from exc

    def _pipeline(self, *commands: tuple) -> None:
        """Hot-path commands in one round trip, StoreError when any fails."""
        try:
            self._conn().pipeline(*commands)
        except resp.RespError as exc:
            raise StoreError(f"redis {commands[0][0]} {commands[0][1]}: {exc}") from exc

    def _mget(self, keys: list[str]) -> list[Optional[bytes]]:
        """MGET on the hot path: one value (or None) per key, StoreError otherwise."""
        raw = self._cmd("MGET", *keys)
        if not isinstance(raw, list) or len(raw) != len(keys):
            raise StoreError(f"redis MGET {keys[0]}: unexpected reply {raw!r:.60}")
        return raw

    def get(self, user: str) -> Optional[Binding]:
        raw = self._cmd("GET", key(user))
        return Binding.from_json(raw) if raw else None

    def lookup(self, user: str, src_ip: str) -> tuple[Optional[Binding], authguard.Bans]:
        """The user's binding and the bans on (src_ip, user) and src_ip, in one
        round trip (MGET): all the success path pays for the failure limits."""
        raw = self._mget([key(user), *authguard.ban_keys(src_ip, user)])
        return (Binding.from_json(raw[0]) if raw[0] else None), authguard.Bans.parse(raw[1], raw[2])

    def auth_failure(self, limits: authguard.Limits, src_ip: str, user: str) -> authguard.Failure:
        try:
            return authguard.record_failure(self._redis(), limits, src_ip, user)
        except redis.RedisError as exc:
            raise StoreError(f"redis auth failure count {src_ip} {user}: {exc}") from exc

    def put(self, binding: Binding) -> None:
        """The binding, and its Contact's index entry (same TTL) in the same round trip."""
        self.put_record(binding.user, binding.to_json(), binding.expires, binding.contact, binding.instance)

    def put_record(self, user: str, record: str, expires: int, contact: str, instance: str) -> None:
        """A binding record already in JSON (kemi/bindings.py draft) and its Contact's
        index entry (kemi/reconnect.py), one round trip."""
        ttl = max(expires, 1)
        self._pipeline(("SET", key(user), record, "EX", ttl),
                       ("SET", contact_key(contact), ContactIndex(user, contact, instance).to_json(),
                        "EX", ttl))

    def delete(self, user: str) -> None:
        """The binding and the index entry of its Contact."""
        try:
            client = self._redis()
            raw = client.get(key(user))
            keys = [key(user)]
            if raw:
                keys.append(contact_key(Binding.from_json(raw).contact))
            client.delete(*keys)
        except redis.RedisError as exc:
            raise StoreError(f"redis del {key(user)}: {exc}") from exc

    def find_phones(self, contacts: list[str]) -> list[Optional[Binding]]:
        """The current binding of the phone behind each Contact URI (same Contact
        or +sip.instance, reconnect.same_phone), None where there is none: two
        pipelined round trips whatever the number of contacts."""
        if not contacts:
            return []
        index = [_index(r) for r in self._mget([contact_key(c) for c in contacts])]
        users = [i.user for i in index if i is not None]
        raw_bindings = dict(zip(users, self._mget([key(u) for u in users]))) if users else {}
        found: list[Optional[Binding]] = []
        for contact, entry in zip(contacts, index):
            raw = raw_bindings.get(entry.user) if entry is not None else None
            binding = Binding.from_json(raw) if raw else None
            found.append(binding if same_phone(binding, entry, contact) else None)
        return found

    def find_phone(self, contact: str) -> Optional[Binding]:
        return self.find_phones([contact])[0]

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
