"""Fixtures that start the real daemons (redis-server, rtpengine, Kamailio) on
free loopback ports, exactly as `make run` does (gw/stack.py), wait for each by
protocol, and print each daemon's log when a test fails."""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gw import stack  # noqa: E402
from kemi.settings import HostPort  # noqa: E402
from support.waits import wait_until  # noqa: E402,F401 (the tests import it from here)

ARTIFACTS = ROOT / "tests" / "_artifacts"
REQUIRED = ("kamailio", "rtpengine", "redis-server", "sipp")


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [p for p in REQUIRED if shutil.which(p) is None]
    if missing:
        # Never skip silently: a gateway test without the gateway proves nothing.
        raise pytest.UsageError(f"missing programs {missing}: run `make deps` (or `make test`)")


@dataclass
class Stack(stack.Gateway):
    """The running gateway under test and how to reach its parts (gw/stack.py's
    Gateway: env, cfg, run_dir, redis, rtpengine, kamailio; sip, ng(), redis_client(),
    daemons())."""

    pbx: HostPort           # where the PBX emulator (SIPp) must listen
    media_ports: tuple[int, int]

    @property
    def ws_url(self) -> str:
        return f"ws://{self.cfg.ws_listen}"

    def ctl(self) -> str:
        return f"unix:{self.run_dir}/kamailio_ctl"

    def kamailio_log(self) -> str:
        return self.kamailio.log_text()

    def rtpengine_sessions(self) -> int:
        return len(self.ng().list_calls())


def _start_stack(base: Path, extra_env: dict[str, str] | None = None) -> Stack:
    host = "127.0.0.1"
    # A media range of our own so parallel runs never collide.
    media_ports = stack.free_port_range(100, host)
    env = stack.gateway_env(base, media_ports, host=host, extra=extra_env)
    # As make run does: the CN filter for our own media range (a table of its own,
    # named after the range), checked with a real packet (Stack.cn).
    g = stack.start_gateway(base, env, cn_owner=f"pytest pid {os.getpid()}")
    return Stack(**vars(g), pbx=g.cfg.pbx, media_ports=g.cfg.media_ports)


def _stop_stack(s: Stack) -> None:
    s.stop()


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
