"""Gateway stacks for the reliability tests, built with gw/stack.py's builder as
tests/conftest.py's are: a stack inside a loopback-only network namespace (wrap,
probe), extra rtpengines and Kamailio nodes (gw.stack.start_rtpengine /
start_kamailio), a Redis Sentinel set; killing and restarting a daemon. Every
daemon is waited for by protocol and stopped by its own pid."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Stack
from gw import stack
from kemi.ng import NgClient
from kemi.settings import HostPort

HOST = "127.0.0.1"


def media_range(slot: int) -> tuple[int, int]:
    """A 100-port RTP range of its own per (process, slot), away from conftest's 20000-39999."""
    low = 40000 + ((os.getpid() + slot * 37) % 150) * 100
    return low, low + 99


def free_tcp() -> int:
    return stack.free_port(HOST, kind=socket.SOCK_STREAM)


def base_env(base: Path, **kw) -> dict[str, str]:
    """GW_* settings on free ports of HOST, media in this process's media_range(0)."""
    return stack.gateway_env(base, media_range(0), host=HOST, **kw)


def restart(d: stack.Daemon) -> stack.Daemon:
    """The same program, arguments and log file again (after d.stop())."""
    return stack.Daemon(d.name, d.argv, d.log_path, env=d.env).start()


def start_stack(base: Path, extra_env: dict[str, str] | None = None, *, wrap: stack.Wrap = lambda a: a,
                probe: stack.Probe = nullcontext) -> Stack:
    """One gateway (Redis, rtpengine, Kamailio) like conftest's, optionally in a namespace."""
    g = stack.start_gateway(base, base_env(base, extra=extra_env), wrap=wrap, probe=probe)
    return Stack(**vars(g), pbx=g.cfg.pbx, media_ports=g.cfg.media_ports)


def ng_sessions(addr: HostPort) -> list[str]:
    return NgClient(addr.host, addr.port, 1.0).list_calls()


# --------------------------------------------------------------- sentinel
@dataclass
class SentinelSet:
    """Redis primary + replica watched by three Sentinels (quorum 2)."""
    base: Path
    master_name: str
    redis: dict[int, stack.Daemon] = field(default_factory=dict)       # port -> daemon
    sentinels: dict[int, stack.Daemon] = field(default_factory=dict)   # port -> daemon

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{p}" for p in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def master(self) -> tuple[str, int] | None:
        import redis
        for port in self.sentinels:
            try:
                r = redis.Redis(HOST, port, socket_timeout=0.5, decode_responses=True)
                got = r.execute_command("SENTINEL", "get-master-addr-by-name", self.master_name)
                if got:
                    return got[0], int(got[1])
            except redis.RedisError:
                continue
        return None

    def role(self, port: int) -> str:
        import redis
        try:
            return redis.Redis(HOST, port, socket_timeout=0.5).role()[0].decode()
        except redis.RedisError:
            return "down"

    def stop(self) -> None:
        stack.stop_all(list(self.redis.values()) + list(self.sentinels.values()))


def start_sentinel_set(base: Path, master_name: str = "gwmaster") -> SentinelSet:
    binary = shutil.which("redis-sentinel")
    if binary is None:
        raise RuntimeError("redis-sentinel missing: apt-get install redis-sentinel (scripts/install-deps.sh)")
    s = SentinelSet(base, master_name)
    try:
        primary = HostPort(HOST, free_tcp())
        s.redis[primary.port] = stack.start_redis(primary, base / "redis-a", base / "redis-a.log",
                                                  name="redis-a")
        replica = HostPort(HOST, free_tcp())
        s.redis[replica.port] = stack.start_redis(replica, base / "redis-b", base / "redis-b.log",
                                                  name="redis-b",
                                                  extra_args=["--replicaof", HOST, str(primary.port)])
        import redis as redis_py
        r = redis_py.Redis(HOST, replica.port, socket_timeout=0.5)
        stack.wait_for(lambda: r.info("replication").get("master_link_status") == "up", 10,
                       "replica in sync")
        for i in range(3):
            port = free_tcp()
            conf = base / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind {HOST}\ndaemonize no\ndir {base}\n"
                f"sentinel monitor {master_name} {HOST} {primary.port} 2\n"
                f"sentinel down-after-milliseconds {master_name} 1000\n"
                f"sentinel failover-timeout {master_name} 5000\n"
                f"sentinel parallel-syncs {master_name} 1\n")
            d = stack.Daemon(f"sentinel-{i}", [binary, str(conf)], base / f"sentinel-{i}.log").start()
            s.sentinels[port] = d
            stack.wait_for(lambda p=port: stack.redis_ping(HOST, p), 10, f"sentinel-{i}", d)
        # Every Sentinel must know the replica and the other Sentinels before a failover can work.
        def converged() -> bool:
            for port in s.sentinels:
                try:
                    c = redis_py.Redis(HOST, port, socket_timeout=0.5, decode_responses=True)
                    m = c.sentinel_master(master_name)
                    if int(m.get("num-slaves", 0)) < 1 or int(m.get("num-other-sentinels", 0)) < 2:
                        return False
                except redis_py.RedisError:
                    return False
            return True
        stack.wait_for(converged, 20, "sentinels discovered replica and each other")
    except Exception:
        s.stop()
        raise
    return s


def kill(d: stack.Daemon) -> None:
    """SIGKILL to the daemon and the processes it forked (its own process group,
    started with start_new_session): a crash, not a clean shutdown."""
    if not d.exited():
        try:
            os.killpg(d.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        d.popen.wait(5)
    if d._log is not None:
        d._log.close()


def wait_port_closed(host: str, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                pass
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{host}:{port} still accepts connections")


def kamcmd(ctl: str, *args: str) -> str:
    return subprocess.run(["kamcmd", "-s", ctl, *args], capture_output=True, text=True,
                          timeout=10).stdout
