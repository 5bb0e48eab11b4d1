"""make run's supervisor (gw/supervise.py): the restart policy with a fake
clock and fake processes, and the parent-death signal with real ones."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gw import stack, supervise
from gw.supervise import Backoff, Service, Supervisor


def test_backoff_doubles_on_quick_deaths_up_to_30s():
    b = Backoff()
    assert [b.next_delay(1.0) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_starts_over_after_a_stable_run():
    b = Backoff()
    for _ in range(5):
        b.next_delay(0.1)
    assert b.next_delay(60.0) == 0.5
    assert b.next_delay(2.0) == 1.0


def test_exit_descriptions():
    assert supervise.describe_exit(-9) == "was killed by SIGKILL"
    assert supervise.describe_exit(-15) == "was killed by SIGTERM"
    assert supervise.describe_exit(1) == "exited with status 1"
    assert supervise.describe_exit(0) == "exited with status 0"


class FakePopen:
    pids = iter(range(900001, 999999))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            self.returncode = -15
        return self.returncode


class World:
    """A clock, fake processes and the supervisor's log."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.spawned: list[stack.Daemon] = []
        self.killed: list[int] = []
        self.lines: list[tuple[str, bool]] = []
        self.up = True

    def spawn(self, d: stack.Daemon) -> stack.Daemon:
        d.popen = FakePopen()  # type: ignore[assignment]
        self.spawned.append(d)
        return d

    def log(self, text: str, problem: bool = False) -> None:
        self.lines.append((text, problem))

    def supervisor(self) -> Supervisor:
        return Supervisor(self.log, clock=lambda: self.now, spawn=self.spawn,
                          kill=lambda d: self.killed.append(d.pid))

    def service(self, name: str) -> Service:
        return Service(name, [name, "--flag"], ready=lambda: self.up, what="on here")


def test_restarts_what_exits_with_its_status_logged():
    w = World()
    sup = w.supervisor()
    child = sup.start(w.service("rtpengine"))
    first = child.daemon
    assert w.lines == [("started rtpengine on here (pid %d)" % first.pid, False)]
    w.now += 5
    sup.tick()
    assert len(w.spawned) == 1

    first.popen.returncode = -9          # SIGKILL: a crash
    w.up = False
    sup.tick()
    assert w.killed == [first.pid], "what is left of its process group is killed"
    assert w.lines[-1] == (f"rtpengine (pid {first.pid}) was killed by SIGKILL after 5.0s; "
                           "restarting in 0.5s", True)
    w.now += 0.4
    sup.tick()
    assert len(w.spawned) == 1, "not before the delay"
    w.now += 0.1
    sup.tick()
    assert len(w.spawned) == 2
    second = child.daemon
    assert second is w.spawned[1] and second.argv == ["rtpengine", "--flag"]
    assert second.preexec is not None, "every start gets the parent-death signal"
    assert w.lines[-1] == (f"restarted rtpengine (pid {second.pid}, restart 1)", False)
    w.now += 0.3
    sup.tick()
    assert w.lines[-1][0] != "rtpengine answers again"
    w.up = True
    sup.tick()
    assert w.lines[-1] == ("rtpengine answers again, 0.8s after it went down", False)


def test_a_daemon_that_keeps_dying_is_restarted_ever_slower():
    w = World()
    sup = w.supervisor()
    child = sup.start(w.service("redis-server"))
    w.up = False
    delays = []
    for _ in range(8):
        child.daemon.popen.returncode = 1
        sup.tick()
        delays.append(child.restart_at - w.now)
        w.now = child.restart_at
        sup.tick()
        w.now += 0.2                      # dies 0.2 s after each start
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert "exited with status 1" in w.lines[-2][0]
    # It stays up for a minute: the next crash is restarted quickly again.
    w.up = True
    sup.tick()
    w.now += 61
    child.daemon.popen.returncode = -9
    sup.tick()
    assert child.restart_at - w.now == 0.5


def test_stop_all_stops_in_reverse_order_and_only_running_groups():
    w = World()
    sup = w.supervisor()
    order = []
    children = [sup.start(w.service(n)) for n in ("redis-server", "rtpengine", "kamailio")]
    for c in children:
        c.daemon.stop = (lambda name=c.service.name: order.append(name))  # type: ignore[method-assign]
    children[1].daemon.popen.returncode = -9     # exited, group already handled
    sup.tick()
    w.killed.clear()
    sup.stop_all()
    assert order == ["kamailio", "rtpengine", "redis-server"]
    assert w.killed == [children[2].daemon.pid, children[0].daemon.pid]
    assert sup.children == []


def test_stop_all_takes_the_group_of_an_exit_not_yet_noticed():
    """Kamailio's main process died after the last tick: its workers may still
    hold the ports, so its group goes too."""
    w = World()
    sup = w.supervisor()
    children = [sup.start(w.service(n)) for n in ("redis-server", "kamailio")]
    children[1].daemon.popen.returncode = -9
    sup.stop_all()
    assert w.killed == [children[1].daemon.pid, children[0].daemon.pid]


def test_start_fails_loudly_when_the_daemon_never_answers():
    w = World()
    sup = w.supervisor()
    w.up = False
    svc = w.service("kamailio")
    svc.ready_timeout = 0.2
    with pytest.raises(stack.StartError, match="kamailio: not ready"):
        sup.start(svc)


# A real process tree: parent -> `sleep 60` started with the parent-death signal.
PARENT = """
import sys, time
from gw import stack, supervise
d = stack.Daemon("sleep", ["sleep", "60"], preexec=supervise.parent_death_signal()).start()
print(d.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_child_dies_with_its_parent_even_on_sigkill(how):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=stack.ROOT, env=dict(os.environ, PYTHONPATH=str(stack.ROOT)))
    try:
        child = int(parent.stdout.readline())
        os.kill(parent.pid, how)
        parent.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.02)
        assert not _alive(child), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
