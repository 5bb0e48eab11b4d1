"""`make run`: the gateway in the foreground on the GW_* settings.

Starts a local redis-server and rtpengine only where none answers at the
configured address, puts the CN filter in front of the rtpengine it started and
decides (with a real PT 13 packet) how comfort noise is kept from the phones,
then Kamailio with the KEMI app; logs go to the terminal. Ctrl-C or SIGTERM
stops everything this process started, and removes its CN filter; nothing else.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from gw import cnfilter, stack
from kemi import settings as settings_mod
from kemi import sizing


def main() -> int:
    cfg = _settings()
    if cfg is None:
        return 2
    run_dir = Path(os.environ.get("GW_RUN_DIR", stack.ROOT / ".run")).resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"gateway: GW_RUN_DIR={run_dir}: {exc}", file=sys.stderr)
        return 2
    if not os.access(run_dir, os.W_OK | os.X_OK):
        # Kamailio would only log a warning about its pid file and exit.
        print(f"gateway: GW_RUN_DIR={run_dir} is not writable by uid {os.getuid()}: in a container "
              f"with a read-only root, mount a tmpfs owned by that user there "
              f"(--tmpfs {run_dir}:uid={os.getuid()},gid={os.getgid()},mode=0750)", file=sys.stderr)
        return 2
    started: list[stack.Daemon] = []
    cn: list[cnfilter.Decision] = []

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        _start_redis(cfg, run_dir, started)
        own_ranges = _start_rtpengines(cfg, started)
        cn.append(_comfort_noise(cfg, own_ranges))
        _start_kamailio(cfg, run_dir, started)
        print(f"gateway: ready: SIP {cfg.sip_listen} (udp/tcp), WebSocket ws://{cfg.ws_listen}, "
              f"PBX {cfg.pbx}", flush=True)
        while all(not d.exited() for d in started):
            time.sleep(0.5)
        dead = [d.name for d in started if d.exited()]
        print(f"gateway: {', '.join(dead)} exited; stopping", file=sys.stderr)
        return 1
    except stack.StartError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gateway: stopping", file=sys.stderr)
        return 0
    finally:
        for daemon in reversed(started):
            daemon.stop()
        # The CN filter goes with the rtpengine it was installed for (a crash
        # leaves it behind: the next start replaces or prunes it).
        for decision in cn:
            for problem in cnfilter.release(decision):
                print(f"gateway: warning: CN filter not removed: {problem}", file=sys.stderr)


def _settings() -> Optional[settings_mod.Settings]:
    """The GW_* settings, and this process's open-files limit raised for the daemons
    it starts; None (after saying why) when they do not hold."""
    try:
        cfg = settings_mod.load()
    except settings_mod.SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return None
    try:
        for warning in stack.raise_nofile(cfg):
            print(f"gateway: warning: {warning}", file=sys.stderr)
    except sizing.SizingError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return None
    size = cfg.sizing
    print(f"gateway: sized for GW_MAX_AGENTS={size.max_agents}: shm {size.shm_mb} MB, "
          f"pkg {size.pkg_mb} MB/process, tcp_max_connections {size.tcp_max_connections}, "
          f"open files {size.nofile}", flush=True)
    return cfg


def _start_redis(cfg: settings_mod.Settings, run_dir: Path, started: list[stack.Daemon]) -> None:
    """A local redis-server, unless one answers at GW_REDIS_URL already."""
    redis = stack.redis_addr(cfg.redis_url)
    if not cfg.redis_url.startswith("redis://") or stack.redis_ping(redis.host, redis.port):
        return
    if not stack.is_local(redis.host):
        raise stack.StartError(f"GW_REDIS_URL: no Redis answers at {redis}")
    data = run_dir / "redis"
    data.mkdir(exist_ok=True)
    d = stack.Daemon("redis-server", stack.redis_argv(redis, data)).start()
    started.append(d)
    stack.wait_for(lambda: stack.redis_ping(redis.host, redis.port), 10, "redis", d)
    print(f"gateway: started redis-server on {redis} (pid {d.pid})", flush=True)


def _start_rtpengines(cfg: settings_mod.Settings, started: list[stack.Daemon]) -> list[tuple[int, int]]:
    """A local rtpengine for each GW_RTPENGINE on this host that does not answer;
    the port ranges of those we started."""
    own_ranges: list[tuple[int, int]] = []
    for ng in cfg.rtpengines:
        if stack.ng_ping(ng):
            continue
        if not stack.is_local(ng.host):
            print(f"gateway: warning: rtpengine {ng} does not answer", file=sys.stderr)
            continue
        d = stack.Daemon("rtpengine", stack.rtpengine_argv(cfg, ng)).start()
        started.append(d)
        stack.wait_for(lambda: stack.ng_ping(ng), 10, "rtpengine", d)
        print(f"gateway: started rtpengine ng={ng} media={cfg.media_ip} (pid {d.pid})", flush=True)
        if cfg.media_ports not in own_ranges:
            own_ranges.append(cfg.media_ports)
    return own_ranges


def _comfort_noise(cfg: settings_mod.Settings, own_ranges: list[tuple[int, int]]) -> cnfilter.Decision:
    """How CN is kept from the phones, decided once with a real packet
    (gw/cnfilter.py), said once, and handed to Kamailio's KEMI app."""
    try:
        decision = cnfilter.decide(cfg, own_ranges, owner=f"make run pid {os.getpid()}")
    except cnfilter.FilterError as exc:
        raise stack.StartError(f"comfort noise: {exc}") from None
    print(f"gateway: {decision.message}", flush=True)
    os.environ["GW_CN_FILTER"] = "on" if decision.cn is cnfilter.CnBlock.FILTER else "off"
    return decision


def _start_kamailio(cfg: settings_mod.Settings, run_dir: Path, started: list[stack.Daemon]) -> None:
    # Each worker's metric files live here; Kamailio's main process empties it at start.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics")
    kam = stack.Daemon("kamailio", stack.kamailio_argv(cfg, run_dir)).start()
    started.append(kam)
    host, port = cfg.sip_listen.host, cfg.sip_listen.port
    stack.wait_for(lambda: (stack.sip_options(host, port) or "").startswith("SIP/2.0 200"),
                   20, "kamailio", kam)


if __name__ == "__main__":
    sys.exit(main())
