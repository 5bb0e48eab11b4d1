"""Start the gateway's daemons and wait for them by protocol.

Shared by `make run` (gw/run.py), the pytest fixtures and `make bench`, so the
tests and the benchmark start Kamailio, rtpengine and Redis exactly the way the
product does. start_gateway() builds a whole gateway on free ports (the test
fixtures, the reliability tests' stacks, the benchmark's two variants).
"""
from __future__ import annotations

import os
import random
import resource
import signal
import socket
import subprocess
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, ContextManager, Iterable, Optional
from urllib.parse import urlparse

from gw import cnfilter
from kemi import settings as settings_mod
from kemi import sizing
from kemi.ng import NgClient
from kemi.settings import HostPort, Settings

ROOT = Path(__file__).resolve().parent.parent
KAMAILIO_CFG = ROOT / "kamailio.cfg"
APP_PY = ROOT / "kemi" / "app.py"


class StartError(RuntimeError):
    pass


# ------------------------------------------------------------------ probes
# Single ports (free_port) come from this band: below the kernel's ephemeral
# range (32768-60999 here), so no outgoing socket takes one between the check and
# the daemon's bind, and below the 20000-32000 free_port_range hands out for media.
PORT_BAND = (12000, 20000)
_handed: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on `host`, never one this process handed
    out before (the first may not be bound yet when the second is asked for).
    `kind` is kept for callers that name the protocol they need: both are checked."""
    del kind
    for _ in range(500):
        port = random.randrange(*PORT_BAND)
        if (host, port) in _handed:
            continue
        if _bindable(host, port, socket.SOCK_DGRAM) and _bindable(host, port, socket.SOCK_STREAM):
            _handed.add((host, port))
            return port
    raise StartError(f"no free port in {PORT_BAND[0]}-{PORT_BAND[1] - 1} on {host}")


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def udp_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can a UDP socket bind host:port right now?"""
    return _bindable(host, port, socket.SOCK_DGRAM)


def free_port_range(count: int, host: str = "127.0.0.1") -> tuple[int, int]:
    """`count` consecutive UDP ports free right now on `host`, below the kernel's
    ephemeral range (so no outgoing socket takes one meanwhile)."""
    for _ in range(200):
        low = random.randrange(20000, 32000 - count, 2)
        socks = []
        try:
            for port in range(low, low + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, port))
            return low, low + count - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise StartError(f"no {count} consecutive free UDP ports")


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            # A password-protected Redis answers -NOAUTH: it is there all the same.
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def ng_ping(addr: HostPort, timeout: float = 0.5) -> bool:
    return NgClient(addr.host, addr.port, timeout).ping()


def sip_options(host: str, port: int, timeout: float = 0.5, proto: str = "udp") -> Optional[str]:
    """Send OPTIONS to the gateway itself; return the status line, or None."""
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        lport = s.getsockname()[1]
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{lport};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\nCall-ID: probe-{uuid.uuid4().hex}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        s.settimeout(timeout)
        s.sendto(msg.encode(), (host, port))
        try:
            data = s.recv(65535).decode(errors="replace")
        except OSError:
            return None
    return data.split("\r\n", 1)[0]


def receive_loop(sock: socket.socket, running: Callable[[], bool],
                 handle: Callable[[bytes, tuple[str, int]], None]) -> None:
    """Datagrams to `handle` until `running()` turns false or the socket is closed:
    the one loop of the SIP peers the tests and the bench play (0.2 s ticks, so
    a stop is noticed without a packet)."""
    sock.settimeout(0.2)
    while running():
        try:
            data, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        except OSError:
            return
        handle(data, addr)


def wait_for(check: Callable[[], bool], timeout: float, what: str,
             proc: Optional["Daemon"] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.exited():
            raise StartError(f"{what}: {proc.name} exited with {proc.popen.returncode}")
        time.sleep(0.05)
    raise StartError(f"{what}: not ready after {timeout}s")


# ----------------------------------------------------------------- daemons
@dataclass
class Daemon:
    name: str
    argv: list[str]
    log_path: Optional[Path] = None
    env: Optional[dict[str, str]] = None
    # Run in the child before exec (gw/supervise.py: the parent-death signal).
    preexec: Optional[Callable[[], None]] = None
    popen: subprocess.Popen = field(init=False)
    _log: Optional[IO[bytes]] = field(init=False, default=None)

    def start(self) -> "Daemon":
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")
            out = self._log
        else:
            out = None  # inherit the terminal (make run)
        # Own process group: Ctrl-C in `make run` reaches us, and we stop children in order.
        self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT if out else None,
                                      stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
                                      preexec_fn=self.preexec)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def stop(self, timeout: float = 5.0) -> None:
        if not self.exited():
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def redis_addr(url: str) -> HostPort:
    parsed = urlparse(url)
    return HostPort(parsed.hostname or "127.0.0.1", parsed.port or 6379)


def redis_argv(addr: HostPort, data_dir: Path) -> list[str]:
    # appendonly: registrations survive a Redis restart.
    return ["redis-server", "--bind", addr.host, "--port", str(addr.port), "--dir", str(data_dir),
            "--appendonly", "yes", "--save", "", "--daemonize", "no"]


def rtpengine_argv(cfg: Settings, ng: HostPort, log_level: int = 5,
                   ports: Optional[tuple[int, int]] = None) -> list[str]:
    low, high = ports or cfg.media_ports
    return ["rtpengine", "--config-file=none", "--table=-1", f"--interface={cfg.media_ip}",
            f"--listen-ng={ng}", f"--port-min={low}", f"--port-max={high}", "--foreground",
            "--log-stderr", f"--log-level={log_level}", "--delete-delay=0", "--timeout=60",
            "--silent-timeout=3600", "--num-threads=2"]


KAMAILIO_LEVELS = {"debug": 3, "info": 2, "warning": 0, "error": -1}


def kamailio_argv(cfg: Settings, run_dir: Path, children: int = 4,
                  log_level: Optional[int] = None) -> list[str]:
    if log_level is None:
        log_level = KAMAILIO_LEVELS[cfg.log_level]
    defines = cfg.kamailio_defines() + [
        f'CTL_SOCK="unix:{run_dir}/kamailio_ctl"',
        f'PBX_LIST="{write_pbx_list(cfg, run_dir)}"',
        f'APP_PY="{APP_PY}"',
        f"LOG_LEVEL={log_level}",
        f"CHILDREN={children}",
    ]
    # -x tlsf: TLSF memory manager (O(1)) for shm and pkg. Debian's default, q_malloc,
    # scans its free-list buckets on every allocation: 28-33 % of the KEMI workers'
    # CPU went to qm_malloc under call load (perf, bench/RESULTS.md).
    # -m/-M: sized from GW_MAX_AGENTS (kemi/sizing.py).
    size = cfg.sizing
    argv = ["kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(run_dir),
            "-P", str(run_dir / "kamailio.pid"), "-m", str(size.shm_mb), "-M", str(size.pkg_mb),
            "-x", "tlsf"]
    for d in defines:
        argv += ["-A", d]
    return argv


def raise_nofile(cfg: Settings) -> list[str]:
    """Raise this process's open-files limit for the daemons it starts (they
    inherit it): Kamailio needs one descriptor per connection (GW_MAX_AGENTS),
    rtpengine one per media port. Raises sizing.SizingError when the hard limit
    is below Kamailio's need; returns warnings for what only degrades."""
    size = cfg.sizing
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sizing.check_nofile(size.nofile, hard, "Kamailio")
    want = max(size.nofile, size.rtpengine_nofile(cfg.media_ports))
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    warnings = []
    if target < size.rtpengine_nofile(cfg.media_ports):
        warnings.append(f"open-files hard limit {hard} is below the "
                        f"{size.rtpengine_nofile(cfg.media_ports)} rtpengine needs for GW_MEDIA_PORTS")
    short = size.media_shortfall(cfg.media_ports)
    if short:
        low, high = cfg.media_ports
        warnings.append(f"GW_MEDIA_PORTS {low}-{high} carries {size.max_agents - short} simultaneous "
                        f"calls ({sizing.RTPENGINE_PORTS_PER_CALL} ports each), fewer than "
                        f"GW_MAX_AGENTS={size.max_agents}: widen it if more agents than that talk at once")
    return warnings


def write_pbx_list(cfg: Settings, run_dir: Path) -> Path:
    """GW_PBX as the list file Kamailio's dispatcher loads at start, rewritten
    from the settings before every start so it never goes stale."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "pbx.list"
    path.write_text(cfg.dispatcher_list())
    return path


def is_local(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


# ----------------------------------------------------------------- a gateway
Wrap = Callable[[list[str]], list[str]]      # how a daemon runs (e.g. inside a network namespace)
Probe = Callable[[], ContextManager]         # where it is probed from (e.g. inside that namespace)


def _as_is(argv: list[str]) -> list[str]:
    return argv


def _started(d: Daemon, check: Callable[[], bool], timeout: float, probe: Probe) -> Daemon:
    """Wait for d by protocol; if it never answers, stop it and show its log."""
    def ready() -> bool:
        with probe():
            return check()
    try:
        wait_for(ready, timeout, d.name, d)
    except Exception:
        d.stop()
        print(f"----- {d.name} log -----\n{d.log_text()[-5000:]}")
        raise
    return d


def start_redis(addr: HostPort, data_dir: Path, log_path: Optional[Path], *, name: str = "redis-server",
                extra_args: Iterable[str] = (), wrap: Wrap = _as_is, probe: Probe = nullcontext) -> Daemon:
    data_dir.mkdir(parents=True, exist_ok=True)
    d = Daemon(name, wrap(redis_argv(addr, data_dir) + list(extra_args)), log_path).start()
    return _started(d, lambda: redis_ping(addr.host, addr.port), 10, probe)


def start_rtpengine(cfg: Settings, ng: HostPort, log_path: Optional[Path], *,
                    ports: Optional[tuple[int, int]] = None, log_level: int = 6, name: str = "rtpengine",
                    wrap: Wrap = _as_is, probe: Probe = nullcontext) -> Daemon:
    d = Daemon(name, wrap(rtpengine_argv(cfg, ng, log_level=log_level, ports=ports)), log_path).start()
    return _started(d, lambda: ng_ping(ng), 10, probe)


def start_kamailio(cfg: Settings, env: dict[str, str], run_dir: Path, log_path: Optional[Path], *,
                   argv: Optional[list[str]] = None, children: int = 2, timeout: float = 20.0,
                   name: str = "kamailio", wrap: Wrap = _as_is, probe: Probe = nullcontext) -> Daemon:
    """Kamailio with the KEMI app (or argv), ready when it answers OPTIONS with 200."""
    run_dir.mkdir(parents=True, exist_ok=True)
    d = Daemon(name, wrap(argv or kamailio_argv(cfg, run_dir, children=children)), log_path, env=env).start()
    sip = cfg.sip_listen
    return _started(d, lambda: (sip_options(sip.host, sip.port) or "").startswith("SIP/2.0 200"), timeout,
                    probe)


def stop_all(daemons: Iterable[Daemon]) -> None:
    """Stop each daemon, the last started first, whatever the others do."""
    for d in reversed(list(daemons)):
        try:
            d.stop()
        except Exception:  # noqa: BLE001 - the others must still stop
            pass


def gateway_env(base: Path, media_ports: tuple[int, int], *, host: str = "127.0.0.1",
                listen: Optional[str] = None, port: Callable[[str], int] = free_port,
                pbx: Optional[HostPort] = None, redis_url: Optional[str] = None,
                rtpengines: Optional[list[HostPort]] = None,
                extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """This process's environment with a gateway's GW_* settings: every listener on
    a free port of host (SIP and WebSocket on `listen` if given), metrics under
    base; `extra` last."""
    listen = listen or host
    env = dict(os.environ)
    env.update({
        "GW_WS_LISTEN": f"{listen}:{port(listen)}",
        "GW_SIP_LISTEN": f"{listen}:{port(listen)}",
        "GW_PBX": str(pbx or HostPort(host, port(host))),
        "GW_REDIS_URL": redis_url or f"redis://{host}:{port(host)}/0",
        "GW_RTPENGINE": " ".join(f"udp:{r}" for r in rtpengines or [HostPort(host, port(host))]),
        "GW_MEDIA_IP": host,
        "GW_MEDIA_PORTS": f"{media_ports[0]}-{media_ports[1]}",
        "PROMETHEUS_MULTIPROC_DIR": str(base / "metrics"),
    })
    env.update(extra or {})
    return env


@dataclass
class Gateway:
    """A running gateway (start_gateway): its settings and its daemons, and how
    it keeps comfort noise from the phones (None: not decided, the transcoder)."""

    env: dict[str, str]
    cfg: Settings
    run_dir: Path
    redis: Daemon
    rtpengine: Daemon
    kamailio: Daemon
    cn: Optional["cnfilter.Decision"]

    @property
    def sip(self) -> HostPort:
        return self.cfg.sip_listen

    def ng(self, timeout: float = 1.0) -> NgClient:
        return NgClient(self.cfg.rtpengines[0].host, self.cfg.rtpengines[0].port, timeout)

    def redis_client(self):
        import redis
        return redis.Redis.from_url(self.cfg.redis_url, decode_responses=True)

    def daemons(self) -> list[Daemon]:
        return [self.redis, self.rtpengine, self.kamailio]

    def stop(self) -> None:
        """Every daemon, then the CN filter installed for its rtpengine."""
        stop_all(self.daemons())
        if self.cn is not None:
            cnfilter.release(self.cn)


def start_gateway(base: Path, env: dict[str, str], *, rtpengine: Optional[Daemon] = None,
                  kamailio: Optional[list[str]] = None, children: int = 2, kamailio_timeout: float = 20.0,
                  wrap: Wrap = _as_is, probe: Probe = nullcontext, cn_owner: Optional[str] = None) -> Gateway:
    """Redis, rtpengine (unless a running one is shared) and Kamailio (the KEMI app, or
    the argv `kamailio`) for the GW_* settings in env, files and logs under base, each
    ready by protocol. With cn_owner, comfort noise is decided as make run does it
    (gw/cnfilter.py: the CN filter for the rtpengine started here, checked with a
    PT 13 packet) and handed to Kamailio in env; Gateway.stop() removes the filter.
    If one does not start, those started are stopped."""
    base.mkdir(parents=True, exist_ok=True)
    cfg = settings_mod.load(env)
    started: list[Daemon] = []
    cn: Optional[cnfilter.Decision] = None
    try:
        redis = start_redis(redis_addr(cfg.redis_url), base / "redis", base / "redis.log", wrap=wrap,
                            probe=probe)
        started.append(redis)
        own_ranges = []
        if rtpengine is None:
            rtpengine = start_rtpengine(cfg, cfg.rtpengines[0], base / "rtpengine.log", wrap=wrap, probe=probe)
            started.append(rtpengine)
            own_ranges.append(cfg.media_ports)
        if cn_owner is not None:
            with probe():
                cn = cnfilter.decide(cfg, own_ranges, cn_owner, None if wrap is _as_is else wrap)
            env["GW_CN_FILTER"] = "on" if cn.cn is cnfilter.CnBlock.FILTER else "off"
        kam = start_kamailio(cfg, env, base, base / "kamailio.log", argv=kamailio, children=children,
                             timeout=kamailio_timeout, wrap=wrap, probe=probe)
    except Exception:
        stop_all(started)
        if cn is not None:
            cnfilter.release(cn, None if wrap is _as_is else wrap)
        for d in started:
            print(f"----- {d.name} log -----\n{d.log_text()[-5000:]}")
        raise
    return Gateway(env, cfg, base, redis, rtpengine, kam, cn)
