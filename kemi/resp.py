"""A small Redis client for the routing's hot path: GET, MGET, SET and DEL on one
socket, RESP2, nothing else. Pure Python, no Kamailio.

Why not redis-py there: a REGISTER makes two Redis round trips and every call one,
and redis-py spends ~100,000 instructions around each (connection pool, retry
wrapper, command packing and parsing in layers): more than the rest of the
routing of that message (issue 14, bench/NOTES.md). This sends the command in
one write and parses the reply from one buffer: ~25,000 instructions.

Where the server is stays redis-py's business (kemi/store.py): for
redis+sentinel:// it asks the Sentinels for the primary at every (re)connect, so
after a failover the next command finds the new primary. Any error (refused,
timed out, closed, a READONLY replica, a protocol surprise) closes the socket and
raises RespError; the next command connects again, as redis-py would.
"""
from __future__ import annotations

import socket
import struct
from typing import Callable, Optional, Union

Reply = Union[None, int, bytes, list]


class RespError(Exception):
    """The command did not get an answer (the socket is closed then)."""


class ReplyError(RespError):
    """Redis answered with an error (-ERR ..., -READONLY ...)."""


class _Closed(RespError):
    """The server closed or reset the connection (a restart while it sat idle)."""


def encode(*args: Union[str, bytes, int]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if type(a) is bytes else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Incomplete(Exception):
    """The buffer does not hold a whole reply yet."""


def parse(buf: bytes, pos: int = 0) -> tuple[Reply, int]:
    """One reply from buf at pos: (value, position after it). Incomplete when
    buf does not hold all of it yet; ValueError when it is not RESP."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind, head = buf[pos:pos + 1], buf[pos + 1:end]
    pos = end + 2
    if kind == b"$":
        n = int(head)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise Incomplete
        return buf[pos:pos + n], pos + n + 2
    if kind == b"*":
        n = int(head)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b":":
        return int(head), pos
    if kind == b"+":
        return head, pos
    if kind == b"-":
        return ReplyError(head.decode(errors="replace")), pos
    raise ValueError(f"not a RESP reply: {buf[pos - 2:pos + 20]!r}")


class Connection:
    """One socket to the server `address()` names when it (re)connects."""

    def __init__(self, address: Callable[[], tuple[str, int]], *, password: Optional[str] = None,
                 username: Optional[str] = None, db: int = 0, timeout: float = 0.25) -> None:
        self._address = address
        self._auth = [a for a in (username, password) if a]
        self._db = db
        self._timeout = timeout
        self._sock: Optional[socket.socket] = None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _connect(self) -> socket.socket:
        host, port = self._address()
        sock = socket.create_connection((host, port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking with the kernel's own timeouts: Python's settimeout() makes every
        # send and receive a poll() first, a system call more per command.
        tv = struct.pack("ll", int(self._timeout), int(self._timeout % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        sock.settimeout(None)
        self._sock = sock
        if self._auth:
            self._call(encode("AUTH", *self._auth), 1)
        if self._db:
            self._call(encode("SELECT", self._db), 1)
        return sock

    def command(self, *args: Union[str, bytes, int]) -> Reply:
        """Send one command, return its reply. A connection that sat idle while the
        server restarted fails at its first use: then once more on a new one (the
        commands here are all idempotent; a timeout is not retried)."""
        return self._retried(encode(*args), 1)[0]

    def pipeline(self, *commands: tuple) -> list[Reply]:
        """Several commands in one write, their replies in one read (one round trip)."""
        return self._retried(b"".join(encode(*c) for c in commands), len(commands))

    def _retried(self, data: bytes, n: int) -> list[Reply]:
        reused = self._sock is not None
        try:
            return self._call(data, n)
        except _Closed:
            if not reused:
                raise
        return self._call(data, n)

    def _call(self, data: bytes, n: int = 1) -> list[Reply]:
        try:
            sock = self._sock or self._connect()
            sock.sendall(data)
            buf = b""
            while True:
                more = sock.recv(65536)
                if not more:
                    raise _Closed("connection closed by the server")
                buf += more
                try:
                    values, pos = [], 0
                    for _ in range(n):
                        value, pos = parse(buf, pos)
                        values.append(value)
                    break
                except Incomplete:
                    continue
        except RespError:
            self.close()
            raise
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            self.close()
            raise _Closed(f"{type(exc).__name__}: {exc}") from None
        except BlockingIOError:        # SO_RCVTIMEO/SO_SNDTIMEO ran out
            self.close()
            raise RespError(f"timed out after {self._timeout} s") from None
        except (OSError, ValueError) as exc:     # socket.timeout is an OSError
            self.close()
            raise RespError(f"{type(exc).__name__}: {exc}") from None
        for value in values:
            if isinstance(value, ReplyError):
                # A demoted primary (READONLY) or a server in trouble: start afresh.
                self.close()
                raise value
        return values
