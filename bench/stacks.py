"""The two gateways under test, started side by side on loopback.

* ``kemi``: the product exactly as `make run` starts it (kamailio.cfg + kemi/app.py,
  through gw/stack.py's argv helpers);
* ``native``: bench/kamailio-native.cfg, the same routing in Kamailio's own language.

Each has its own redis-server, rtpengine and PBX port, so CPU can be read per
stack from /proc: utime+stime of Kamailio's main process and all its children,
of rtpengine (all threads) and of redis-server.
"""
from __future__ import annotations

import os
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bench.measure import children_of, proc_cpu, tree_cpu
from gw import stack
from kemi import media, settings as settings_mod
from kemi.settings import HostPort

ROOT = Path(__file__).resolve().parent.parent
NATIVE_CFG = ROOT / "bench" / "kamailio-native.cfg"
PHONE_IP = "127.0.0.2"   # phones: not the PBX's address, so not trusted
PBX_IP = "127.0.0.1"     # GW_PBX host: trusted to reach agents


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def media_range() -> tuple[int, int]:
    """rtpengine's media ports: above the kernel's ephemeral range, where nothing
    binds by chance. rtpengine binds with SO_REUSEADDR, so a range that overlaps
    ports other programs listen on (SIP ports picked from the ephemeral range,
    another test's SIPp) silently steals their traffic."""
    _, hi = ephemeral_range()
    if 65535 - hi >= 3000:
        return hi + 1, 65535
    return 10000, 19999


# Listening ports of the bench (SIP, PBX, ng, Redis, SIPp): from the top of the
# ephemeral range, below the media range and away from the 20000-39999 the test
# suite gives its rtpengines (tests/conftest.py), which run at the same time.
PORT_LO, PORT_HI = 41000, min(ephemeral_range()[1], 60999)


def _bindable(host: str, port: int, tcp: bool) -> bool:
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp else (socket.SOCK_DGRAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


# Ports handed out lately: a SIP port and a SIPp media range drawn one after
# the other are both free until SIPp binds them, so without this memory two
# draws can overlap and SIPp exits at once ("Unable to bind audio RTP socket").
_HANDED: deque[tuple[str, int, int]] = deque(maxlen=256)


def free_ports(host: str, count: int = 1, tcp: bool = True) -> int:
    """The first of `count` consecutive ports free on `host` (UDP and TCP), in
    PORT_LO..PORT_HI (SIPp binds media at -mp and -mp+2), overlapping no range
    handed out lately."""
    import random
    for _ in range(500):
        base = random.randrange(PORT_LO, PORT_HI - count)
        if any(h == host and base < hi and lo < base + count for h, lo, hi in _HANDED):
            continue
        if all(_bindable(host, p, tcp) for p in range(base, base + count)):
            _HANDED.append((host, base, base + count))
            return base
    raise stack.StartError(f"no {count} consecutive free ports on {host}")


# -------------------------------------------------------------------- stacks
@dataclass
class BenchStack(stack.Gateway):
    """One variant's gateway (gw/stack.py's Gateway); the rtpengine is both variants'."""

    variant: str                      # "kemi" or "native"
    media_ports: tuple[int, int]
    phone_port: int = 0               # where the PBX -> phone UAS listens (bindings point there)
    extra: dict = field(default_factory=dict)

    @property
    def pbx(self) -> HostPort:
        return self.cfg.pbx

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far, per component."""
        return {
            "kamailio": tree_cpu(self.kamailio.pid),
            "rtpengine": proc_cpu(self.rtpengine.pid),
            "redis": proc_cpu(self.redis.pid),
        }

    def kamailio_workers(self) -> list[int]:
        return children_of(self.kamailio.pid)

    def alive(self) -> bool:
        return all(not d.exited() for d in (self.redis, self.rtpengine, self.kamailio))

    def stop(self) -> None:
        # rtpengine is shared: stopped by whoever started it.
        for d in (self.kamailio, self.redis):
            d.stop()


def _argv_native(cfg: settings_mod.Settings, run_dir: Path, children: int, log_level: int,
                 flood_limit: int) -> list[str]:
    argv = stack.kamailio_argv(cfg, run_dir, children=children, log_level=log_level)
    argv[argv.index("-f") + 1] = str(NATIVE_CFG)
    redis = stack.redis_addr(cfg.redis_url)
    db = (cfg.redis_url.rsplit("/", 1)[-1] or "0") if cfg.redis_url.count("/") >= 3 else "0"
    defines = [
        f'NODE="{cfg.sip_listen}"',
        f'PBX_URI="{cfg.pbx_uri}"',
        f'TRUSTED_IP="{cfg.pbx.host}"',
        f'REDIS_SERVER="name=gw;addr={redis.host};port={redis.port};db={db}"',
        f"FLOOD_LIMIT={flood_limit}",
        # The node's and the failure limits, as the KEMI app reads them from cfg.
        f"MAX_AGENTS={cfg.max_agents}",
        f"SHM_RESERVE={cfg.sizing.shm_reserve_bytes}",
        f"WS_MAX_PER_IP={cfg.ws_max_per_ip}",
        f"AUTH_DN_LIMIT={cfg.auth_fail_limit}",
        f"AUTH_IP_LIMIT={cfg.auth_fail_ip_limit}",
        f"AUTH_WINDOW={cfg.auth_fail_window}",
        f"AUTH_BAN={cfg.auth_ban}",
    ]
    if flood_limit > 0:
        defines.append("FLOOD_ON")
    # The same rtpengine flags as the KEMI app, from the same code (the CN filter
    # path, as make run takes it where it can install the filter: see start()).
    for op in media.Op:
        for receiver in media.Side:
            for sender in media.Side:
                name = f"F_{op.value.upper()}_TO_{receiver.name}_FROM_{sender.name}"
                defines.append(f'{name}="{media.flags(op, receiver, sender, media.CnBlock.FILTER)}"')
    for d in defines:
        argv += ["-A", d]
    return argv


def _patched_app(dst: Path, patches: list[str]) -> Path:
    """A copy of kemi/ with diffs applied (BENCH_KEMI_PATCHES: measure a proposed
    change before it lands). The copy's .venv is the project's, as app.py expects."""
    import shutil
    import subprocess
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copytree(ROOT / "kemi", dst / "kemi", ignore=shutil.ignore_patterns("__pycache__"))
    (dst / ".venv").symlink_to(ROOT / ".venv")
    for p in patches:
        r = subprocess.run(["patch", "-p1", "-s", "-i", str(Path(p).resolve())], cwd=dst,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise stack.StartError(f"BENCH_KEMI_PATCHES: {p} does not apply: {r.stdout}{r.stderr}")
    return dst / "kemi" / "app.py"


def start_rtpengine(base: Path, media_ports: tuple[int, int]) -> tuple[stack.Daemon, HostPort]:
    """One userspace rtpengine for both stacks (one runs at a time, so its CPU is
    that step's), started as gw/stack.py starts it."""
    base.mkdir(parents=True, exist_ok=True)
    ng = HostPort(PBX_IP, free_ports(PBX_IP))
    cfg = settings_mod.load({"GW_RTPENGINE": f"udp:{ng}", "GW_MEDIA_IP": PBX_IP,
                             "GW_MEDIA_PORTS": f"{media_ports[0]}-{media_ports[1]}"})
    return stack.start_rtpengine(cfg, ng, base / "rtpengine.log", ports=media_ports, log_level=5), ng


def start(variant: str, base: Path, *, children: int, shm_mb: int, log_level: str,
          rtpengine: stack.Daemon, ng: HostPort, media_ports: tuple[int, int],
          wrapper: Optional[list[str]] = None, ready_s: float = 30,
          app_py: Optional[Path] = None) -> BenchStack:
    """Start redis-server and Kamailio (KEMI app or native cfg) on free ports, with
    the shared rtpengine (gw/stack.py's start_gateway). wrapper: a command Kamailio
    runs under (bench/icount.py: valgrind); app_py: another KEMI entry file."""
    env = stack.gateway_env(base, media_ports, host=PBX_IP, port=free_ports, rtpengines=[ng], extra={
        "GW_FLOOD_LIMIT": "0",           # one SIPp source sends thousands of REGISTERs
        "GW_LOG_LEVEL": log_level,
        "GW_PBX_ALLOW": "",
        # The product's default CN path where make run can install the CN filter
        # (plain-relay flags); these calls carry no media, so no filter is needed.
        "GW_CN_FILTER": "on",
    })
    argv = _kamailio_argv(variant, settings_mod.load(env), base, children, shm_mb, log_level, app_py)
    g = stack.start_gateway(base, env, rtpengine=rtpengine, kamailio=(wrapper or []) + argv,
                            kamailio_timeout=ready_s)
    return BenchStack(**vars(g), variant=variant, media_ports=media_ports)


def _kamailio_argv(variant: str, cfg: settings_mod.Settings, base: Path, children: int, shm_mb: int,
                   log_level: str, app_py: Optional[Path] = None) -> list[str]:
    level = stack.KAMAILIO_LEVELS[log_level]
    if variant == "kemi":
        argv = stack.kamailio_argv(cfg, base, children=children, log_level=level)
        patches = os.environ.get("BENCH_KEMI_PATCHES", "").split()
        app = _patched_app(base / "patched", patches) if patches else app_py
        if app is not None:
            argv = [f'APP_PY="{app}"' if a.startswith("APP_PY=") else a for a in argv]
        if os.environ.get("BENCH_KEMI_CFG"):
            # An experiment's kamailio.cfg (bench/NOTES.md: ndb_redis from KEMI), given
            # the stack's Redis as an ndb_redis server definition.
            argv[argv.index("-f") + 1] = os.environ["BENCH_KEMI_CFG"]
            redis = stack.redis_addr(cfg.redis_url)
            argv += ["-A", f'REDIS_SERVER="name=gw;addr={redis.host};port={redis.port};db=0"']
    elif variant == "native":
        argv = _argv_native(cfg, base, children, level, cfg.flood_limit)
    else:
        raise ValueError(variant)
    if shm_mb:
        argv[argv.index("-m") + 1] = str(shm_mb)
    # Extra Kamailio command-line options for both variants, e.g. "-x tlsf"
    # (memory manager) to measure a proposed change to gw/stack.py.
    argv[1:1] = os.environ.get("BENCH_KAMAILIO_ARGS", "").split()
    return argv


def trim_logs(daemons: list[stack.Daemon], keep: int = 1_000_000) -> None:
    """Keep the tail of each daemon's log (info-level Kamailio logs grow ~2 kB per call)."""
    for d in daemons:
        p = d.log_path
        if p is None or not p.exists() or p.stat().st_size <= keep:
            continue
        with open(p, "rb") as f:
            f.seek(-keep, os.SEEK_END)
            tail = f.read()
        p.write_bytes(b"[... trimmed by bench ...]\n" + tail)


def write_bindings(s: BenchStack, dns: list[str], phone_port: int, ttl: int = 7200) -> None:
    """Agents 'registered' on this node at a plain SIP/UDP phone (the PBX -> phone UAS):
    the record kemi/app.py's REGISTRAR writes, with a UDP `received`."""
    import json
    import time
    r = s.redis_client()
    pipe = r.pipeline(transaction=False)
    now = round(time.time(), 3)
    for dn in dns:
        rec = {
            "user": dn, "contact": f"sip:{dn}@{PHONE_IP}:{phone_port}",
            "received": f"sip:{PHONE_IP}:{phone_port};transport=udp",
            "socket": f"udp:{s.sip}", "conid": 0, "node": str(s.sip), "expires": ttl,
            "registered_at": now, "call_id": f"bench-{dn}", "user_agent": "bench-phone",
            "instance": "", "extra": {},
        }
        pipe.set(f"gw:reg:{dn}", json.dumps(rec, separators=(",", ":"), sort_keys=True), ex=ttl)
    pipe.execute()
    s.phone_port = phone_port
