"""A TCP relay between a test's client (the agent page's WebSocket) and the
gateway, standing in for the nginx or NAT box in front of an agent: cut() closes
every connection through it at once, as a proxy restart does, and keeps
listening so that the client can reconnect. Loopback only."""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.accepted = 0
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name="tcpproxy").start()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._open += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        """Close every open connection, both sides at once; returns how many."""
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)  # also wakes the pump blocked in recv()
            except OSError:
                pass
            s.close()
        return len(socks) // 2

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
