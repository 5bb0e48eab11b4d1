"""kemi/resp.py, the hot path's Redis client: RESP encoding and parsing, and the
connection's behaviour on a server that answers in pieces, restarts, refuses,
errs or says nothing (a scripted server on loopback)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from kemi import resp


def test_encode_and_parse():
    assert resp.encode("SET", "k", b"v\r\n", "EX", 600) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\nEX\r\n$3\r\n600\r\n")
    assert resp.parse(b"$3\r\nabc\r\n") == (b"abc", 9)
    assert resp.parse(b"$-1\r\n") == (None, 5)
    assert resp.parse(b"*3\r\n$1\r\na\r\n$-1\r\n$0\r\n\r\n") == ([b"a", None, b""], 22)
    assert resp.parse(b":42\r\n") == (42, 5)
    assert resp.parse(b"+OK\r\n") == (b"OK", 5)
    err, _ = resp.parse(b"-READONLY You can't write\r\n")
    assert isinstance(err, resp.ReplyError) and "READONLY" in str(err)
    for partial in (b"", b"$3", b"$3\r\nab", b"*2\r\n$1\r\na\r\n"):
        with pytest.raises(resp.Incomplete):
            resp.parse(partial)
    with pytest.raises(ValueError):
        resp.parse(b"?what\r\n")


class Server:
    """Accepts connections; answers each command with what `script` returns
    (bytes to send in pieces, or None to close the connection)."""

    def __init__(self, script) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.script = script
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c: socket.socket) -> None:
        while True:
            try:
                data = c.recv(65536)
            except OSError:
                return
            if not data:
                return
            out = self.script(data)
            if out is None:
                c.close()
                return
            for piece in out:
                c.sendall(piece)
                time.sleep(0.01)

    def drop_all(self) -> None:
        for c in self.conns:
            c.close()

    def close(self) -> None:
        self.sock.close()
        self.drop_all()


def conn(server: Server, timeout: float = 0.25) -> resp.Connection:
    return resp.Connection(lambda: ("127.0.0.1", server.port), timeout=timeout)


def test_reply_in_pieces():
    srv = Server(lambda data: [b"*2\r\n$3\r\nab", b"c\r\n$-", b"1\r\n"])
    try:
        assert conn(srv).command("MGET", "a", "b") == [b"abc", None]
    finally:
        srv.close()


def test_idle_connection_closed_by_a_restart_is_retried_once():
    srv = Server(lambda data: [b"+OK\r\n"])
    try:
        c = conn(srv)
        assert c.command("SET", "k", "v") == b"OK"
        srv.drop_all()                     # the server restarted meanwhile
        time.sleep(0.05)
        assert c.command("SET", "k", "v") == b"OK"
        assert srv.accepted == 2
    finally:
        srv.close()


def test_fresh_connection_closed_is_an_error_not_a_loop():
    srv = Server(lambda data: None)
    try:
        with pytest.raises(resp.RespError):
            conn(srv).command("GET", "k")
        assert srv.accepted == 1
    finally:
        srv.close()


def test_error_reply_raises_and_reconnects_next_time():
    replies = iter([[b"-READONLY You can't write against a read only replica.\r\n"], [b"+OK\r\n"]])
    srv = Server(lambda data: next(replies))
    try:
        c = conn(srv)
        with pytest.raises(resp.ReplyError, match="READONLY"):
            c.command("SET", "k", "v")
        assert c.command("SET", "k", "v") == b"OK"
        assert srv.accepted == 2
    finally:
        srv.close()


def test_silent_server_times_out_without_retry():
    srv = Server(lambda data: [])
    try:
        t0 = time.monotonic()
        with pytest.raises(resp.RespError, match="timed out"):
            conn(srv, timeout=0.2).command("GET", "k")
        assert time.monotonic() - t0 < 0.35
    finally:
        srv.close()


def test_refused_is_an_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(resp.RespError):
        resp.Connection(lambda: ("127.0.0.1", port)).command("GET", "k")


def test_auth_and_select_on_connect():
    seen = []

    def script(data):
        seen.append(data)
        return [b"+OK\r\n"] if not data.startswith(b"*2\r\n$3\r\nGET") else [b"$1\r\nv\r\n"]
    srv = Server(script)
    try:
        c = resp.Connection(lambda: ("127.0.0.1", srv.port), password="pw", db=3)
        assert c.command("GET", "k") == b"v"
        assert seen[0] == resp.encode("AUTH", "pw") and seen[1] == resp.encode("SELECT", 3)
    finally:
        srv.close()


def test_pipeline_one_round_trip():
    seen = []

    def script(data):
        seen.append(data)
        return [b"+OK\r\n+O", b"K\r\n"]
    srv = Server(script)
    try:
        c = conn(srv)
        assert c.pipeline(("SET", "a", "1"), ("SET", "b", "2")) == [b"OK", b"OK"]
        assert seen == [resp.encode("SET", "a", "1") + resp.encode("SET", "b", "2")]
    finally:
        srv.close()
