"""Gateway stacks for the reliability tests, built from the same gw/stack.py
helpers as tests/conftest.py: a stack inside a loopback-only network
namespace, extra rtpengines, extra Kamailio nodes and a Redis Sentinel set.
Every daemon is waited for by protocol and stopped by its own pid."""
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
from typing import Callable, ContextManager

from conftest import Stack
from gw import stack
from kemi import settings as settings_mod
from kemi.ng import NgClient
from kemi.settings import HostPort, Settings

Wrap = Callable[[list[str]], list[str]]
HOST = "127.0.0.1"


def _same(argv: list[str]) -> list[str]:
    return argv


def media_range(slot: int) -> tuple[int, int]:
    """A 100-port RTP range of its own per (process, slot), away from conftest's 20000-39999."""
    low = 40000 + ((os.getpid() + slot * 37) % 150) * 100
    return low, low + 99


def free_tcp() -> int:
    return stack.free_port(HOST, kind=socket.SOCK_STREAM)


def base_env(base: Path, *, host: str = HOST, pbx: HostPort | None = None, redis_url: str | None = None,
             rtpengines: list[HostPort] | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    rtps = rtpengines or [HostPort(HOST, stack.free_port(HOST))]
    env.update({
        "GW_WS_LISTEN": f"{host}:{free_tcp()}",
        "GW_SIP_LISTEN": f"{host}:{stack.free_port(HOST)}",
        "GW_PBX": str(pbx or HostPort(HOST, stack.free_port(HOST))),
        "GW_REDIS_URL": redis_url or f"redis://{HOST}:{free_tcp()}/0",
        "GW_RTPENGINE": " ".join(f"udp:{r}" for r in rtps),
        "GW_MEDIA_IP": HOST,
        "GW_MEDIA_PORTS": "{}-{}".format(*media_range(0)),
        "PROMETHEUS_MULTIPROC_DIR": str(base / "metrics"),
    })
    env.update(extra or {})
    return env


def start_redis(addr: HostPort, base: Path, name: str = "redis", wrap: Wrap = _same,
                probe: Callable[[], ContextManager] = nullcontext,
                extra_args: list[str] | None = None) -> stack.Daemon:
    data = base / name
    data.mkdir(parents=True, exist_ok=True)
    argv = wrap(stack.redis_argv(addr, data) + (extra_args or []))
    d = stack.Daemon(name, argv, base / f"{name}.log").start()

    def ready() -> bool:
        with probe():
            return stack.redis_ping(addr.host, addr.port)
    stack.wait_for(ready, 10, name, d)
    return d


def start_rtpengine(cfg: Settings, ng: HostPort, ports: tuple[int, int], base: Path, name: str = "rtpengine",
                    wrap: Wrap = _same, probe: Callable[[], ContextManager] = nullcontext) -> stack.Daemon:
    d = stack.Daemon(name, wrap(stack.rtpengine_argv(cfg, ng, log_level=6, ports=ports)),
                     base / f"{name}.log").start()

    def ready() -> bool:
        with probe():
            return stack.ng_ping(ng)
    stack.wait_for(ready, 10, name, d)
    return d


def start_kamailio(cfg: Settings, env: dict[str, str], run_dir: Path, name: str = "kamailio",
                   wrap: Wrap = _same, probe: Callable[[], ContextManager] = nullcontext,
                   log_path: Path | None = None) -> stack.Daemon:
    run_dir.mkdir(parents=True, exist_ok=True)
    d = stack.Daemon(name, wrap(stack.kamailio_argv(cfg, run_dir, children=2)),
                     log_path or run_dir / "kamailio.log", env=env).start()

    def ready() -> bool:
        with probe():
            return (stack.sip_options(cfg.sip_listen.host, cfg.sip_listen.port) or "").startswith("SIP/2.0 200")
    try:
        stack.wait_for(ready, 20, name, d)
    except Exception:
        d.stop()
        print(f"----- {name} log -----\n{d.log_text()[-5000:]}")
        raise
    return d


def restart(d: stack.Daemon) -> stack.Daemon:
    """The same program, arguments and log file again (after d.stop())."""
    return stack.Daemon(d.name, d.argv, d.log_path, env=d.env).start()


def start_stack(base: Path, extra_env: dict[str, str] | None = None, *, wrap: Wrap = _same,
                probe: Callable[[], ContextManager] = nullcontext) -> Stack:
    """One gateway (Redis, rtpengine, Kamailio) like conftest's, optionally in a namespace."""
    base.mkdir(parents=True, exist_ok=True)
    env = base_env(base, extra=extra_env)
    cfg = settings_mod.load(env)
    started: list[stack.Daemon] = []
    try:
        redis = start_redis(stack.redis_addr(cfg.redis_url), base, wrap=wrap, probe=probe)
        started.append(redis)
        rtp = start_rtpengine(cfg, cfg.rtpengines[0], cfg.media_ports, base, wrap=wrap, probe=probe)
        started.append(rtp)
        kam = start_kamailio(cfg, env, base, wrap=wrap, probe=probe)
        started.append(kam)
    except Exception:
        for d in reversed(started):
            d.stop()
        raise
    return Stack(env, cfg, base, redis, rtp, kam, cfg.pbx, cfg.media_ports)


def stop_all(daemons: list[stack.Daemon]) -> None:
    for d in reversed(daemons):
        try:
            d.stop()
        except Exception:
            pass


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
        stop_all(list(self.redis.values()) + list(self.sentinels.values()))


def start_sentinel_set(base: Path, master_name: str = "gwmaster") -> SentinelSet:
    binary = shutil.which("redis-sentinel")
    if binary is None:
        raise RuntimeError("redis-sentinel missing: apt-get install redis-sentinel (scripts/install-deps.sh)")
    s = SentinelSet(base, master_name)
    try:
        primary = HostPort(HOST, free_tcp())
        s.redis[primary.port] = start_redis(primary, base, "redis-a")
        replica = HostPort(HOST, free_tcp())
        s.redis[replica.port] = start_redis(replica, base, "redis-b",
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
