"""Fixtures that start the real daemons (redis-server, rtpengine, Kamailio) on
free loopback ports, exactly as `make run` does (gw/stack.py), wait for each by
protocol, and print each daemon's log when a test fails."""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gw import cnfilter, stack  # noqa: E402
from kemi import settings as settings_mod  # noqa: E402
from kemi.ng import NgClient  # noqa: E402
from kemi.settings import HostPort  # noqa: E402

ARTIFACTS = ROOT / "tests" / "_artifacts"
REQUIRED = ("kamailio", "rtpengine", "redis-server", "sipp")


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [p for p in REQUIRED if shutil.which(p) is None]
    if missing:
        # Never skip silently: a gateway test without the gateway proves nothing.
        raise pytest.UsageError(f"missing programs {missing}: run `make deps` (or `make test`)")


@dataclass
class Stack:
    """The running gateway under test and how to reach its parts."""

    env: dict[str, str]
    cfg: settings_mod.Settings
    run_dir: Path
    redis: stack.Daemon
    rtpengine: stack.Daemon
    kamailio: stack.Daemon
    pbx: HostPort           # where the PBX emulator (SIPp) must listen
    media_ports: tuple[int, int]
    cn: cnfilter.Decision | None = None   # how CN is kept from phones (as make run decides it)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.cfg.ws_listen}"

    @property
    def sip(self) -> HostPort:
        return self.cfg.sip_listen

    def ng(self) -> NgClient:
        return NgClient(self.cfg.rtpengines[0].host, self.cfg.rtpengines[0].port, 1.0)

    def redis_client(self):
        import redis
        return redis.Redis.from_url(self.cfg.redis_url, decode_responses=True)

    def ctl(self) -> str:
        return f"unix:{self.run_dir}/kamailio_ctl"

    def daemons(self) -> list[stack.Daemon]:
        return [self.redis, self.rtpengine, self.kamailio]

    def kamailio_log(self) -> str:
        return self.kamailio.log_text()

    def rtpengine_sessions(self) -> int:
        return len(self.ng().list_calls())


def _start_stack(base: Path, extra_env: dict[str, str] | None = None) -> Stack:
    base.mkdir(parents=True, exist_ok=True)
    host = "127.0.0.1"
    redis_port = stack.free_port(host, kind=stack.socket.SOCK_STREAM)
    ng_port = stack.free_port(host)
    sip_port = stack.free_port(host)
    ws_port = stack.free_port(host, kind=stack.socket.SOCK_STREAM)
    pbx_port = stack.free_port(host)
    # A media range of our own so parallel runs never collide.
    low, _ = stack.free_port_range(100, host)
    env = dict(os.environ)
    env.update({
        "GW_WS_LISTEN": f"{host}:{ws_port}",
        "GW_SIP_LISTEN": f"{host}:{sip_port}",
        "GW_PBX": f"{host}:{pbx_port}",
        "GW_REDIS_URL": f"redis://{host}:{redis_port}/0",
        "GW_RTPENGINE": f"udp:{host}:{ng_port}",
        "GW_MEDIA_IP": host,
        "GW_MEDIA_PORTS": f"{low}-{low + 99}",
    })
    env["PROMETHEUS_MULTIPROC_DIR"] = str(base / "metrics")
    env.update(extra_env or {})
    cfg = settings_mod.load(env)
    (base / "redis").mkdir(exist_ok=True)
    redis_addr = stack.redis_addr(cfg.redis_url)
    redis = stack.Daemon("redis-server", stack.redis_argv(redis_addr, base / "redis"),
                         base / "redis.log").start()
    started = [redis]
    cn: cnfilter.Decision | None = None
    try:
        stack.wait_for(lambda: stack.redis_ping(redis_addr.host, redis_addr.port), 10, "redis", redis)
        rtp = stack.Daemon("rtpengine", stack.rtpengine_argv(cfg, cfg.rtpengines[0], log_level=6),
                           base / "rtpengine.log").start()
        started.append(rtp)
        stack.wait_for(lambda: stack.ng_ping(cfg.rtpengines[0]), 10, "rtpengine", rtp)
        # As make run does: the CN filter for our own media range (a table of its
        # own, named after the range), checked with a real packet.
        cn = cnfilter.decide(cfg, [cfg.media_ports], owner=f"pytest pid {os.getpid()}")
        env["GW_CN_FILTER"] = "on" if cn.cn is cnfilter.CnBlock.FILTER else "off"
        kam = stack.Daemon("kamailio", stack.kamailio_argv(cfg, base, children=2),
                           base / "kamailio.log", env=env).start()
        started.append(kam)
        stack.wait_for(lambda: (stack.sip_options(host, sip_port) or "").startswith("SIP/2.0 200"),
                       20, "kamailio", kam)
    except Exception:
        for d in reversed(started):
            d.stop()
        if cn is not None:
            cnfilter.release(cn)
        for d in started:
            print(f"----- {d.name} log -----\n{d.log_text()[-5000:]}")
        raise
    return Stack(env, cfg, base, redis, rtp, kam, HostPort(host, pbx_port), (low, low + 99), cn)


def _stop_stack(s: Stack) -> None:
    for d in reversed(s.daemons()):
        d.stop()
    if s.cn is not None:
        cnfilter.release(s.cn)


@pytest.fixture(scope="session")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real gateway for the session; after every test in it, rtpengine must
    hold no session that a test left behind (checked in `no_leaked_sessions`)."""
    base = ARTIFACTS / "gateway"
    shutil.rmtree(base, ignore_errors=True)
    s = _start_stack(base)
    yield s
    leaked = s.ng().list_calls()
    _stop_stack(s)
    assert leaked == [], f"rtpengine still holds sessions after the suite: {leaked}"


@pytest.fixture
def fresh_gw(tmp_path: Path) -> Iterator[Stack]:
    """A private gateway for tests that break its dependencies."""
    s = _start_stack(tmp_path / "stack")
    yield s
    _stop_stack(s)


@pytest.fixture(scope="session")
def agent_install():
    """The connector's wheel, built once per session and installed with pip alone
    into a fresh venv without Node.js (tests/support/agent_package.py)."""
    from support.agent_package import build_and_install
    inst = build_and_install(ARTIFACTS / "agent_package")
    print(f"agent wheel {inst.wheel.name}: built in {inst.build_seconds}s, "
          f"installed in {inst.install_seconds}s")
    return inst


def wait_until(check, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in ("gw", "fresh_gw"):
            s = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            if isinstance(s, Stack):
                for d in s.daemons():
                    tail = d.log_text()[-6000:]
                    report.sections.append((f"{d.name} log (tail)", tail))
