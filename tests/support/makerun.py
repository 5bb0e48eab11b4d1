"""`make run` itself under test: the real command on free loopback ports
(GW_* settings, GW_RUN_DIR of its own), its output in a log file, and the
processes it started found through /proc (children of its Python process).
Only processes this helper started are ever signalled, by pid."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from gw import stack
from kemi import settings as settings_mod

HOST = "127.0.0.1"


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class MakeRun:
    def __init__(self, base: Path, extra: dict[str, str] | None = None) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        low, high = stack.free_port_range(100, HOST)
        tcp = stack.socket.SOCK_STREAM
        self.env = dict(os.environ)
        self.env.update({
            "GW_WS_LISTEN": f"{HOST}:{stack.free_port(HOST, kind=tcp)}",
            "GW_SIP_LISTEN": f"{HOST}:{stack.free_port(HOST)}",
            "GW_PBX": f"{HOST}:{stack.free_port(HOST)}",
            "GW_REDIS_URL": f"redis://{HOST}:{stack.free_port(HOST, kind=tcp)}/0",
            "GW_RTPENGINE": f"udp:{HOST}:{stack.free_port(HOST)}",
            "GW_MEDIA_IP": HOST,
            "GW_MEDIA_PORTS": f"{low}-{high}",
            "GW_RUN_DIR": str(base / "run"),
            **(extra or {}),
        })
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.cfg = settings_mod.load(self.env)
        self.log_path = base / "make-run.log"
        self.proc: subprocess.Popen | None = None
        self.seen: set[int] = set()      # every pid found under make run, for the final check

    # ----------------------------------------------------------- lifecycle
    def start(self, timeout: float = 30) -> "MakeRun":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["make", "-s", "run"], cwd=stack.ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        stack.wait_for(lambda: "gateway: ready" in self.log() or self.proc.poll() is not None,
                       timeout, "make run")
        if self.proc.poll() is not None:
            raise stack.StartError(f"make run exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        self.daemons()
        return self

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM to make run's Python process (what Ctrl-C does), then wait."""
        if self.proc is None:
            return None
        runner = self.runner()
        if runner is not None and alive(runner):
            os.kill(runner, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> list[int]:
        """After a test: stop it, and SIGKILL whatever it started that is still
        there (a failed test must not leak daemons). Returns those leftovers."""
        self.stop()
        left = [p for p in self.seen if alive(p)]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    # ------------------------------------------------------------- looking
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def runner(self) -> int | None:
        """make run's Python process (gw.run), a child of make."""
        if self.proc is None:
            return None
        for p in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if b"gw.run" in f.read():
                        return p
            except FileNotFoundError:
                continue
        return None

    def daemons(self) -> dict[str, int]:
        """{'redis-server': pid, 'rtpengine': pid, 'kamailio': pid} as running now."""
        runner = self.runner()
        out = {}
        for p in children(runner) if runner else []:
            out[comm(p)] = p
        self.seen |= {self.proc.pid} | set(descendants(self.proc.pid)) if self.proc else set()
        return out

    def all_pids(self) -> list[int]:
        pids = [self.proc.pid, *descendants(self.proc.pid)] if self.proc else []
        self.seen |= set(pids)
        return pids

    @property
    def sip(self) -> tuple[str, int]:
        return self.cfg.sip_listen.host, self.cfg.sip_listen.port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.cfg.ws_listen}"

    def redis_client(self):
        import redis
        return redis.Redis.from_url(self.cfg.redis_url, decode_responses=True)

    def wait_daemon_pid_changes(self, name: str, old: int, timeout: float) -> tuple[int, float]:
        """The pid of the restarted daemon, and how long after now it appeared."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            pid = self.daemons().get(name)
            if pid is not None and pid != old:
                return pid, time.monotonic() - t0
            time.sleep(0.02)
        raise AssertionError(f"{name} was not restarted within {timeout}s:\n{self.log()[-3000:]}")
