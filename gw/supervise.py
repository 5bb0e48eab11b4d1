"""`make run` supervises what it started: a daemon that exits is restarted,
soon the first time and with a growing delay when it keeps dying, and none
outlives `make run`, even when `make run` itself is killed with SIGKILL.

The restart policy (Backoff) is pure; the Supervisor is driven by tick() with
an injectable clock, so both are unit-tested without real processes.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from gw import stack

PR_SET_PDEATHSIG = 1
# What a daemon gets when make run dies: SIGTERM, the signal each one shuts
# down cleanly on. Not SIGKILL: Kamailio's main process must live long enough
# to take its forked workers down (SIGKILLed, it leaves them running, holding
# the SIP and WebSocket ports); Redis flushes its append-only file.
DEATH_SIGNAL = signal.SIGTERM


@dataclass
class Backoff:
    """Delay before restarting a daemon that exited: `first` after a daemon
    that had been running for `stable` seconds, doubled on each quick death,
    never above `cap`."""

    first: float = 0.5
    cap: float = 30.0
    stable: float = 60.0
    current: float = 0.0

    def next_delay(self, uptime: float) -> float:
        if self.current == 0.0 or uptime >= self.stable:
            self.current = self.first
        else:
            self.current = min(self.current * 2, self.cap)
        return self.current


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


# ------------------------------------------------------ parent-death signal
_prctl: Optional[Callable[..., int]] = None


def _libc_prctl() -> Callable[..., int]:
    global _prctl
    if _prctl is None:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl


def parent_death_signal(sig: int = DEATH_SIGNAL) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` as soon as the process starting it
    dies, however it dies. Resolved here, before the fork; the caller must be
    single-threaded (preexec_fn), as gw/run.py is."""
    prctl = _libc_prctl()
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:  # the parent died before prctl took hold
            os.kill(os.getpid(), sig)
    return preexec


def die_with_parent(sig: int = DEATH_SIGNAL) -> None:
    """The same for this process: `make run` is make plus this Python process,
    and a SIGKILLed make must still stop the gateway (through our handler)."""
    parent = os.getppid()
    _libc_prctl()(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def kill_group(daemon: stack.Daemon) -> None:
    """SIGKILL whatever is left of the daemon's process group (its own session,
    stack.Daemon): a Kamailio main process that died without taking down its
    workers leaves them holding the ports."""
    try:
        os.killpg(daemon.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -------------------------------------------------------------- supervisor
@dataclass
class Service:
    """One daemon make run starts: how, and how to know it answers."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    what: str = ""                       # for the log: "on 127.0.0.1:6379"
    env: Optional[dict[str, str]] = None
    ready_timeout: float = 20.0


@dataclass
class Child:
    service: Service
    daemon: stack.Daemon
    started: float
    backoff: Backoff = field(default_factory=Backoff)
    restart_at: Optional[float] = None   # set while waiting to restart
    exited_at: Optional[float] = None    # set until it answers again
    restarts: int = 0


class Supervisor:
    """Starts services in order and keeps them running; stops them in reverse.
    `log(text, problem=False)` reports each start, exit, restart and recovery."""

    def __init__(self, log: Callable[..., None], clock: Callable[[], float] = time.monotonic,
                 spawn: Callable[[stack.Daemon], stack.Daemon] = lambda d: d.start(),
                 kill: Callable[[stack.Daemon], None] = kill_group) -> None:
        self.log = log
        self.clock = clock
        self.spawn = spawn
        self.kill = kill
        self.children: list[Child] = []

    def start(self, service: Service) -> Child:
        """Start and wait until it answers (stack.StartError if it does not)."""
        daemon = self.spawn(stack.Daemon(service.name, service.argv, env=service.env,
                                         preexec=parent_death_signal()))
        child = Child(service, daemon, self.clock())
        self.children.append(child)
        stack.wait_for(service.ready, service.ready_timeout, service.name, daemon)
        what = f" {service.what}" if service.what else ""
        self.log(f"started {service.name}{what} (pid {daemon.pid})")
        return child

    def tick(self) -> None:
        """One look at every child: notice exits, restart when due, report recovery."""
        now = self.clock()
        for child in self.children:
            if child.restart_at is None and child.daemon.exited():
                self._on_exit(child, now)
            elif child.restart_at is not None and now >= child.restart_at:
                self._restart(child, now)
            elif child.exited_at is not None and child.restart_at is None and child.service.ready():
                self.log(f"{child.service.name} answers again, "
                         f"{now - child.exited_at:.1f}s after it went down")
                child.exited_at = None

    def _on_exit(self, child: Child, now: float) -> None:
        daemon = child.daemon
        self.kill(daemon)
        uptime = now - child.started
        delay = child.backoff.next_delay(uptime)
        child.restart_at = now + delay
        if child.exited_at is None:
            child.exited_at = now
        self.log(f"{child.service.name} (pid {daemon.pid}) {describe_exit(daemon.popen.returncode)} "
                 f"after {uptime:.1f}s; restarting in {delay:.1f}s", problem=True)

    def _restart(self, child: Child, now: float) -> None:
        child.daemon = self.spawn(dataclasses.replace(child.daemon, preexec=parent_death_signal()))
        child.started = now
        child.restart_at = None
        child.restarts += 1
        self.log(f"restarted {child.service.name} (pid {child.daemon.pid}, restart {child.restarts})")

    def stop_all(self) -> None:
        for child in reversed(self.children):
            # An exit tick() noticed already took its group (_on_exit); one it has
            # not seen yet (a Kamailio that died since) may still leave workers.
            handled = child.restart_at is not None
            child.daemon.stop()
            if not handled:
                self.kill(child.daemon)
        self.children.clear()
