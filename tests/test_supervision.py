"""Issue 13, "keeps working when a part fails": `make run` itself under test
(tests/support/makerun.py) with a registered WebSocket phone and a PBX
emulator. A daemon killed with SIGKILL is restarted while the rest keeps
running; SIP OPTIONS to the gateway is answered throughout; /health turns 503
naming what is down, then 200; calls work again; nothing outlives make run.

To see the outage from outside for certain (a restart takes under a second),
the second crash of each dependency happens while the test holds its port:
its restarts then fail, are logged with their exit status and backed off,
until the test lets go."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import wait_until
from gw import stack
from support.agentcalls import call_in, call_out
from support.fakepbx import FakePbx
from support.makerun import MakeRun, alive, descendants
from support.wsphone import WsPhone
from test_ops_metrics import http_get

CALLS_BACK_WITHIN_S = 30   # the bound for calls after an rtpengine restart
RESTART_WITHIN_S = 2


@pytest.fixture
def run(tmp_path: Path) -> Iterator[MakeRun]:
    r = MakeRun(tmp_path)
    try:
        yield r.start()
    finally:
        leftovers = r.cleanup()
        print(r.log()[-4000:])
        assert leftovers == [], f"processes left after make run stopped: {leftovers}"


class OptionsWatch:
    """SIP OPTIONS to the gateway every 100 ms in a thread; every answer kept."""

    def __init__(self, run: MakeRun) -> None:
        self.run = run
        self.answers: list[str | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        host, port = self.run.sip
        while not self._stop.is_set():
            self.answers.append(stack.sip_options(host, port, timeout=1.0))
            self._stop.wait(0.1)

    def __enter__(self) -> "OptionsWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def run_then_close(scenario, pbx: FakePbx) -> None:
    """Run a test's async scenario; its PBX emulator is closed whatever happens."""
    try:
        asyncio.run(scenario)
    finally:
        pbx.close()


def health(run: MakeRun) -> tuple[int, dict]:
    status, body, _ = http_get(run, "/health")
    return status, json.loads(body)


def hold_port(kind: int, host: str, port: int, timeout: float = 0.4) -> socket.socket:
    """Bind the port a killed daemon just left, so its restarts fail. A TCP port
    is listened on (past the dead server's TIME_WAIT connections): clients get
    no answer, as from a hung Redis, and time out."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            if kind == socket.SOCK_STREAM:
                s.listen(64)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


async def first_call_that_works(phone: WsPhone, since: float, limit: float) -> tuple[float, list[int]]:
    """Call every 0.5 s until one is answered; (seconds since `since`, statuses seen)."""
    seen = []
    while time.monotonic() - since < limit:
        status = await call_out(phone)
        seen.append(status)
        if status == 200:
            return time.monotonic() - since, seen
        assert status == 503, f"a call during the outage got {status}, not the documented 503"
        await asyncio.sleep(0.5)
    raise AssertionError(f"no call answered within {limit}s of the restart: {seen}")


def test_rtpengine_killed_is_restarted_and_calls_come_back(run: MakeRun):
    pbx = FakePbx(run.cfg.pbx.host, run.cfg.pbx.port)
    ng = run.cfg.rtpengines[0]
    engine = f"rtpengine udp:{ng}"

    async def go():
        phone = await WsPhone.connect(run.ws_url, user="1311", domain="pbx.test")
        try:
            assert (await phone.register()).status == 200
            assert await call_out(phone) == 200
            kamailio = run.daemons()["kamailio"]
            with OptionsWatch(run) as watch:
                # A crash: restarted within 2 s, calls again within 30 s.
                old = run.daemons()["rtpengine"]
                killed = time.monotonic()
                os.kill(old, signal.SIGKILL)
                new, took = run.wait_daemon_pid_changes("rtpengine", old, RESTART_WITHIN_S)
                wait_until(lambda: stack.ng_ping(ng), 10, "rtpengine answers")
                answers = time.monotonic() - killed
                back, seen = await first_call_that_works(phone, killed, CALLS_BACK_WITHIN_S)
                print(f"rtpengine SIGKILLed: new process after {took:.2f}s, answering ng after "
                      f"{answers:.2f}s, first call answered {back:.1f}s after the kill ({seen})")
                assert health(run)[0] == 200

                # A second crash, its port held: restarts fail and back off,
                # /health says which dependency is down, calls get 503.
                os.kill(new, signal.SIGKILL)
                held = hold_port(socket.SOCK_DGRAM, ng.host, ng.port)
                try:
                    wait_until(lambda: "exited with status 255" in run.log(), 10,
                               "a failed restart logged")
                    code, body = health(run)
                    assert code == 503 and body["status"] == "down", body
                    assert body["dependencies"][engine] == "down" and body["dependencies"]["redis"] == "up"
                    assert await call_out(phone) == 503
                finally:
                    held.close()
                released = time.monotonic()
                wait_until(lambda: health(run)[0] == 200, 35, "/health 200 again")
                back, seen = await first_call_that_works(phone, released, CALLS_BACK_WITHIN_S)
                print(f"port released: first call answered {back:.1f}s later ({seen})")
            assert all(a == "SIP/2.0 200 Keepalive" for a in watch.answers), \
                [a for a in watch.answers if a != "SIP/2.0 200 Keepalive"]
            assert len(watch.answers) > 20
            # Kamailio never went away: the phone's WebSocket is the one it registered on.
            assert run.daemons()["kamailio"] == kamailio
            assert not phone.closed.is_set()
            assert await call_in(pbx, run.sip, phone) == 200
        finally:
            await phone.close()

    run_then_close(go(), pbx)
    log = run.log()
    assert "was killed by SIGKILL" in log and "exited with status 255" in log
    assert "restarting in 0.5s" in log and "restarting in 1.0s" in log


def test_redis_killed_is_restarted_and_keeps_every_binding(run: MakeRun):
    pbx = FakePbx(run.cfg.pbx.host, run.cfg.pbx.port)
    redis_addr = stack.redis_addr(run.cfg.redis_url)

    async def go():
        phones = [await WsPhone.connect(run.ws_url, user=f"132{i}", domain="pbx.test") for i in range(3)]
        try:
            for p in phones:
                assert (await p.register()).status == 200
            before = {p.user: run.redis_client().get(f"gw:reg:{p.user}") for p in phones}
            assert all(before.values())
            with OptionsWatch(run) as watch:
                old = run.daemons()["redis-server"]
                killed = time.monotonic()
                os.kill(old, signal.SIGKILL)
                new, took = run.wait_daemon_pid_changes("redis-server", old, RESTART_WITHIN_S)
                wait_until(lambda: stack.redis_ping(redis_addr.host, redis_addr.port), 10, "redis answers")
                print(f"redis-server SIGKILLed: new process after {took:.2f}s, answering after "
                      f"{time.monotonic() - killed:.2f}s")
                after = {p.user: run.redis_client().get(f"gw:reg:{p.user}") for p in phones}
                assert after == before, "a binding was lost across the Redis restart"

                # Down for a while (port held): the documented 503s, /health names Redis.
                os.kill(new, signal.SIGKILL)
                held = hold_port(socket.SOCK_STREAM, redis_addr.host, redis_addr.port)
                try:
                    code, body = health(run)
                    assert code == 503 and body["dependencies"]["redis"] == "down", body
                    reg = await phones[0].register()
                    assert reg.status == 503 and reg.get("Retry-After") == "5"
                    inbound = await asyncio.to_thread(pbx.call, run.sip, phones[1].user)
                    assert inbound.status == 503
                    wait_until(lambda: "exited with status 1" in run.log(), 10, "a failed restart logged")
                finally:
                    held.close()
                wait_until(lambda: health(run)[0] == 200, 35, "/health 200 again")
            assert all(a == "SIP/2.0 200 Keepalive" for a in watch.answers)
            after = {p.user: run.redis_client().get(f"gw:reg:{p.user}") for p in phones}
            assert after == before, "a binding was lost across the Redis restarts"
            assert not any(p.closed.is_set() for p in phones)
            for p in phones:
                assert await call_in(pbx, run.sip, p) == 200
                assert await call_out(p) == 200
            assert (await phones[0].register()).status == 200
        finally:
            for p in phones:
                await p.close()

    run_then_close(go(), pbx)
    assert "redis-server (pid" in run.log() and "was killed by SIGKILL" in run.log()


def test_kamailio_killed_comes_back_and_phones_reregister(run: MakeRun):
    pbx = FakePbx(run.cfg.pbx.host, run.cfg.pbx.port)

    async def go():
        phone = await WsPhone.connect(run.ws_url, user="1331", domain="pbx.test")
        try:
            assert (await phone.register()).status == 200
            binding = run.redis_client().get("gw:reg:1331")
            old = run.daemons()["kamailio"]
            workers = descendants(old)
            assert len(workers) > 3
            killed = time.monotonic()
            os.kill(old, signal.SIGKILL)
            await asyncio.wait_for(phone.closed.wait(), 10)
            new, took = run.wait_daemon_pid_changes("kamailio", old, RESTART_WITHIN_S)
            wait_until(lambda: (stack.sip_options(*run.sip) or "").startswith("SIP/2.0 200"), 20,
                       "kamailio answers OPTIONS")
            print(f"kamailio SIGKILLed: new process after {took:.2f}s, answering OPTIONS after "
                  f"{time.monotonic() - killed:.2f}s")
            assert not any(alive(p) for p in workers), "the old Kamailio's workers are gone"
            assert run.redis_client().get("gw:reg:1331") == binding, "the binding stays in Redis"
        finally:
            await phone.close()
        # The phone reconnects and registers again: calls both ways.
        phone = await WsPhone.connect(run.ws_url, user="1331", domain="pbx.test")
        try:
            assert (await phone.register()).status == 200
            assert await call_out(phone) == 200
            assert await call_in(pbx, run.sip, phone) == 200
        finally:
            await phone.close()

    run_then_close(go(), pbx)


@pytest.mark.parametrize("victim", ["make", "gw.run"])
def test_sigkill_to_make_run_leaves_no_daemon(tmp_path: Path, victim: str):
    run = MakeRun(tmp_path)
    try:
        run.start()
        pids = run.all_pids()
        names = sorted({open(f"/proc/{p}/comm").read().strip() for p in pids if alive(p)})
        assert {"make", "redis-server", "rtpengine", "kamailio"} <= set(names), names
        target = run.proc.pid if victim == "make" else run.runner()
        os.kill(target, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.05)
        left = [(p, open(f"/proc/{p}/comm").read().strip()) for p in pids if alive(p)]
        print(f"SIGKILL to {victim}: {len(pids)} processes, left after 5 s: {left}")
        assert left == []
    finally:
        assert run.cleanup() == []


def test_ctrl_c_stops_everything_it_started(tmp_path: Path):
    run = MakeRun(tmp_path)
    try:
        run.start()
        pids = run.all_pids()
        runner = run.runner()
        # What a terminal does on Ctrl-C: SIGINT to the foreground process group
        # (make and its Python process; the daemons run in sessions of their own).
        os.kill(run.proc.pid, signal.SIGINT)
        os.kill(runner, signal.SIGINT)
        run.proc.wait(15)
        assert not any(alive(p) for p in pids)
        assert "gateway: stopping (SIGINT)" in run.log()
    finally:
        assert run.cleanup() == []
