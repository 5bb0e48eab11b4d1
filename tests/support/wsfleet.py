"""wsfleet - thousands of WebRTC phones (SIP over WebSocket) in one asyncio process.

The capacity tests and `make bench` need 500-10,000 agents, each on its own
WebSocket, and hostile clients that open connections and never finish them.
A full phone per agent (tests/support/wsphone.py on the `websockets` package)
costs too much CPU and memory at that scale, so each agent here is one
asyncio.Protocol speaking just enough: the HTTP upgrade, masked text frames,
Pong for Kamailio's keepalive Pings, REGISTER (the PBX emulator does not
challenge), and answering the PBX's calls (INVITE -> 200 with a WebRTC SDP
answer, ACK, BYE -> 200).

Source addresses: agents bind 127.x.y.z addresses, `per_ip` agents on each, as
many agents behind one NAT address do; that also keeps every address well inside
the kernel's ephemeral port range. Call `raise_nofile()` once per process:
every agent is a file descriptor.
"""
from __future__ import annotations

import asyncio
import base64
import os
import resource
import socket
import ssl
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Optional

if __name__ == "__main__":  # run as a script (LorisProcess): find the test support package
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support import sipmsg  # noqa: E402
from support.wsphone import webrtc_sdp  # noqa: E402

DOMAIN = "pbx.test"


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise this process's soft RLIMIT_NOFILE as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def source_ip(index: int, per_ip: int, base: tuple[int, int] = (100, 0)) -> str:
    """The loopback address of the `index`-th agent: `per_ip` agents per address,
    127.<base0>.<base1+n//250>.<1+n%250> for the n-th address."""
    n = index // per_ip
    return f"127.{base[0]}.{base[1] + n // 250}.{1 + n % 250}"


# ------------------------------------------------------------------ framing
def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One FIN frame, masked as a client must (RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    # XOR with the repeated mask, as one big integer (fast in CPython).
    reps = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(reps, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete server frames (unmasked) taken off the front of `buf`."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = struct.unpack_from("!Q", buf, 2)[0], 10
        if b1 & 0x80:  # a server must not mask; tolerate it anyway
            off += 4
        if len(buf) < off + n:
            break
        payload = bytes(buf[off:off + n])
        if b1 & 0x80:
            key = buf[off - 4:off]
            payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
        del buf[:off + n]
        out.append((b0 & 0x0F, payload))
    return out


def upgrade_request(host: str, port: int, origin: Optional[str] = None,
                    extra: Iterable[tuple[str, str]] = ()) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET / HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: sip"]
    if origin:
        lines.append(f"Origin: {origin}")
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ------------------------------------------------------------------ agent
@dataclass
class Stats:
    answered: int = 0           # INVITEs this agent answered 200
    acked: int = 0
    byes: int = 0


class Agent(asyncio.Protocol):
    """One phone on one WebSocket. `status` is the HTTP status of the upgrade
    (101, or the refusal), 0 if the connection failed or was closed first."""

    def __init__(self, user: str, src: str, *, domain: str = DOMAIN) -> None:
        self.user, self.src, self.domain = user, src, domain
        self.transport: Optional[asyncio.Transport] = None
        self.status = 0
        self.http_head = b""
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.closed_at = 0.0
        self.buf = bytearray()
        self.upgraded = False
        self.call_id = f"{uuid.uuid4().hex[:22]}"
        self.cseq = 0
        self.host = f"{uuid.uuid4().hex[:12]}.invalid"
        self.contact = f"<sip:{uuid.uuid4().hex[:8]}@{self.host};transport=ws>"
        self.pending: dict[tuple[str, int], asyncio.Future] = {}
        self.registered = False
        self.stats = Stats()
        self.pings = 0              # keepalive Pings answered

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.http_head = bytes(self.buf[:end])
            del self.buf[:end + 4]
            try:
                self.status = int(self.http_head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            self.upgraded = self.status == 101
            if not self.opened.done():
                self.opened.set_result(self.status)
            if not self.upgraded:
                self.buf.clear()
                return
        for opcode, payload in parse_frames(self.buf):
            if opcode == 9:        # Ping -> Pong, same payload
                self.pings += 1
                self._write(ws_frame(payload, 10))
            elif opcode == 8:      # Close: answer it and let the server close TCP
                self._write(ws_frame(payload[:2], 8))
            elif opcode in (1, 2):
                self._on_sip(payload)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed_at = time.monotonic()
        if not self.opened.done():
            self.opened.set_result(self.status)
        if not self.closed.done():
            self.closed.set_result(True)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_result(None)

    # -- sending
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_sip(self, text: str) -> None:
        self._write(ws_frame(text.encode()))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done()

    # -- SIP
    def register_request(self, expires: int = 600) -> str:
        self.cseq += 1
        aor = f"<sip:{self.user}@{self.domain}>"
        return sipmsg.request("REGISTER", f"sip:{self.domain}", [
            ("Via", f"SIP/2.0/WSS {self.host};branch={sipmsg.new_branch()}"),
            ("Max-Forwards", "69"), ("To", aor), ("From", f"{aor};tag={self.call_id[:10]}"),
            ("Call-ID", self.call_id), ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"{self.contact};+sip.ice;reg-id=1;"
                        f"+sip.instance=\"<urn:uuid:{uuid.UUID(int=hash(self.call_id) & (2**128 - 1))}>\""
                        f";expires={expires}"),
            ("Expires", str(expires)), ("Allow", "INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY"),
            ("Supported", "path,gruu,outbound"), ("User-Agent", "JsSIP 3.10.0 (wsfleet)")])

    async def register(self, expires: int = 600, timeout: float = 10.0) -> int:
        """REGISTER and wait for the final response; its status, or 0."""
        text = self.register_request(expires)
        fut = asyncio.get_running_loop().create_future()
        self.pending[(self.call_id, self.cseq)] = fut
        self.send_sip(text)
        try:
            msg = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            msg = None
        finally:
            self.pending.pop((self.call_id, self.cseq), None)
        status = msg.status if msg is not None else 0
        self.registered = 200 <= status < 300 and expires > 0
        return status

    def _on_sip(self, payload: bytes) -> None:
        msg = sipmsg.parse(payload)
        if not msg.is_request:
            if msg.status >= 200:
                fut = self.pending.get((msg.call_id, msg.cseq[0]))
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            return
        method = msg.method
        if method == "ACK":
            self.stats.acked += 1
            return
        tag = msg.tag("To") or sipmsg.new_tag()
        contact = [("Contact", self.contact)]
        if method == "INVITE":
            body = webrtc_sdp(setup="active" if msg.body else "actpass")
            self.send_sip(sipmsg.response(msg, 200, "OK", to_tag=tag, extra=contact, body=body,
                                          record_route=True))
            if not msg.tag("To"):
                self.stats.answered += 1
        elif method == "BYE":
            self.stats.byes += 1
            self.send_sip(sipmsg.response(msg, 200, "OK", to_tag=tag))
        else:
            self.send_sip(sipmsg.response(msg, 200, "OK", to_tag=tag))


async def open_agent(user: str, src: str, ws: tuple[str, int], *, origin: Optional[str] = None,
                     timeout: float = 10.0, extra_headers: Iterable[tuple[str, str]] = (),
                     tls: Optional[ssl.SSLContext] = None) -> Agent:
    """Connect from `src` and send the upgrade; returns once the server answered
    it (agent.status: 101 or the refusal), closed, or `timeout` passed (status 0).
    `tls`: wss:// (nginx in front), server name "localhost"."""
    loop = asyncio.get_running_loop()
    agent = Agent(user, src)
    kw = {"ssl": tls, "server_hostname": "localhost"} if tls is not None else {}
    try:
        await asyncio.wait_for(loop.create_connection(lambda: agent, ws[0], ws[1], local_addr=(src, 0),
                                                      **kw), timeout)
    except (OSError, asyncio.TimeoutError):
        agent.status = 0
        return agent
    agent._write(upgrade_request(ws[0], ws[1], origin, extra_headers))
    try:
        await asyncio.wait_for(asyncio.shield(agent.opened), timeout)
    except asyncio.TimeoutError:
        pass
    return agent


# ------------------------------------------------------------------ fleet
@dataclass
class Outcome:
    """What happened to one agent of a storm."""
    user: str
    src: str
    http: int = 0              # upgrade status (101, 503 ...) or 0
    register: int = 0          # final REGISTER status or 0
    seconds: float = 0.0       # connect + upgrade + REGISTER
    agent: Optional[Agent] = field(default=None, repr=False)


async def storm(users: list[str], ws: tuple[str, int], *, per_ip: int = 500, concurrency: int = 200,
                ip_base: tuple[int, int] = (100, 0), origin: Optional[str] = None,
                timeout: float = 15.0, expires: int = 3600,
                tls: Optional[ssl.SSLContext] = None) -> list[Outcome]:
    """Every user connects and registers, `concurrency` at a time (a morning's
    log-in storm). Agents that registered stay connected (outcome.agent)."""
    sem = asyncio.Semaphore(concurrency)
    outcomes = [Outcome(u, source_ip(i, per_ip, ip_base)) for i, u in enumerate(users)]

    async def one(o: Outcome) -> None:
        async with sem:
            t0 = time.monotonic()
            agent = await open_agent(o.user, o.src, ws, origin=origin, timeout=timeout, tls=tls)
            o.http, o.agent = agent.status, agent
            if agent.status == 101:
                o.register = await agent.register(expires=expires, timeout=timeout)
            else:
                agent.close()
            o.seconds = time.monotonic() - t0

    await asyncio.gather(*(one(o) for o in outcomes))
    return outcomes


class Loris:
    """Hostile connections: TCP open, then nothing (or only `send` bytes).
    `closed_after()` says how long after opening the server closed each."""

    class _P(asyncio.Protocol):
        def __init__(self) -> None:
            self.opened_at = time.monotonic()
            self.closed_at = 0.0
            self.transport: Optional[asyncio.Transport] = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            self.opened_at = time.monotonic()

        def data_received(self, data: bytes) -> None:
            pass

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self.closed_at = time.monotonic()

    def __init__(self) -> None:
        self.conns: list[Loris._P] = []
        self.failed = 0

    async def open(self, n: int, src: str, ws: tuple[str, int], *, send: bytes = b"",
                   concurrency: int = 500, timeout: float = 5.0) -> "Loris":
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                p = Loris._P()
                try:
                    await asyncio.wait_for(
                        loop.create_connection(lambda: p, ws[0], ws[1], local_addr=(src, 0)), timeout)
                except (OSError, asyncio.TimeoutError):
                    self.failed += 1
                    return
                if send:
                    p.transport.write(send)
                self.conns.append(p)

        await asyncio.gather(*(one() for _ in range(n)))
        return self

    def still_open(self) -> int:
        return sum(1 for c in self.conns if not c.closed_at)

    def closed_after(self) -> list[float]:
        return [c.closed_at - c.opened_at for c in self.conns if c.closed_at]

    def dribble(self, data: bytes = b"X") -> None:
        """A byte on every open connection (a slowloris that keeps talking)."""
        for c in self.conns:
            if not c.closed_at and c.transport is not None:
                c.transport.write(data)

    def close(self) -> None:
        for c in self.conns:
            if c.transport is not None and not c.closed_at:
                c.transport.abort()


class LorisProcess:
    """A Loris flood from its own process (an attacker is another machine: its
    connects must not compete with the agents' for this event loop).

        flood = await LorisProcess.start(5000, "127.0.50.1", ws)
        opened, failed = await flood.opened()
        still_open, closed_after = await flood.result()   # when all closed, or hold_s
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, n: int, src: str, ws: tuple[str, int], *, send: bytes = b"",
                    hold_s: float = 40.0) -> "LorisProcess":
        import json
        import sys
        args = json.dumps({"n": n, "src": src, "ws": list(ws), "send": send.decode("latin-1"),
                           "hold_s": hold_s})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "loris", args,
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        return cls(proc)

    async def _line(self) -> dict:
        import json
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"loris process ended (rc {await self.proc.wait()})")
        return json.loads(line)

    async def opened(self) -> tuple[int, int]:
        d = await self._line()
        return d["opened"], d["failed"]

    async def result(self) -> tuple[int, list[float]]:
        d = await self._line()
        await self.proc.wait()
        return d["still_open"], d["closed_after"]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


def _loris_main(spec: dict) -> None:
    import json

    async def run() -> None:
        raise_nofile()
        flood = Loris()
        await flood.open(spec["n"], spec["src"], tuple(spec["ws"]),
                         send=spec["send"].encode("latin-1"), concurrency=1000)
        print(json.dumps({"opened": len(flood.conns), "failed": flood.failed}), flush=True)
        deadline = time.monotonic() + spec["hold_s"]
        while flood.still_open() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        print(json.dumps({"still_open": flood.still_open(),
                          "closed_after": [round(x, 3) for x in flood.closed_after()]}), flush=True)
        flood.close()

    asyncio.run(run())


def http_status_counts(outcomes: Iterable[Outcome]) -> dict[int, int]:
    out: dict[int, int] = {}
    for o in outcomes:
        out[o.http] = out.get(o.http, 0) + 1
    return out


def close_all(agents: Iterable[Optional[Agent]]) -> None:
    for a in agents:
        if a is not None:
            a.close()


if __name__ == "__main__":
    import json
    import sys
    if sys.argv[1:2] == ["loris"]:
        _loris_main(json.loads(sys.argv[2]))


__all__ = ["Agent", "Loris", "Outcome", "open_agent", "storm", "raise_nofile", "source_ip",
           "ws_frame", "parse_frames", "socket"]
