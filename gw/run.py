"""`make run`: the gateway in the foreground on the GW_* settings.

Starts a local redis-server and rtpengine only where none answers at the
configured address, puts the CN filter in front of the rtpengine it started and
decides (with a real PT 13 packet) how comfort noise is kept from the phones,
then Kamailio with the KEMI app; logs go to the terminal.
It supervises what it started (gw/supervise.py): a daemon that exits is
restarted, while the others, Kamailio and its agents' WebSockets included,
keep running. Ctrl-C or SIGTERM stops everything this process started (and
removes its CN filter), and nothing else; so does the death of `make run` itself, even by SIGKILL (the
parent-death signal).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from gw import cnfilter, stack, supervise
from kemi import settings as settings_mod
from kemi import sizing

TICK_S = 0.2   # how often exits are looked for: a dead daemon is back within ~1 s


class Stop(Exception):
    """Ctrl-C, SIGTERM, or the parent-death signal."""


def say(text: str, problem: bool = False) -> None:
    print(f"gateway: {text}", file=sys.stderr if problem else sys.stdout, flush=True)


def main() -> int:
    cfg = _settings()
    if cfg is None:
        return 2
    run_dir = _run_dir()
    if run_dir is None:
        return 2
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    supervise.die_with_parent()
    sup = supervise.Supervisor(say)
    cn: Optional[cnfilter.Decision] = None
    try:
        for service in services(cfg, run_dir):
            if service.name == "kamailio":
                # After the rtpengines, before Kamailio: its KEMI app reads the outcome.
                cn = _comfort_noise(cfg, sup)
                assert service.env is not None
                service.env["GW_CN_FILTER"] = os.environ["GW_CN_FILTER"]
            sup.start(service)
        say(f"ready: SIP {cfg.sip_listen} (udp/tcp), WebSocket ws://{cfg.ws_listen}, "
            f"PBX {', '.join(map(str, cfg.pbxs))}")
        while True:
            sup.tick()
            time.sleep(TICK_S)
    except stack.StartError as exc:
        say(str(exc), problem=True)
        return 1
    except Stop as exc:
        say(f"stopping ({exc})", problem=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop_all()
        # The CN filter goes with the rtpengine it was installed for (a make run
        # killed with SIGKILL leaves it: the next start replaces or prunes it).
        for problem in cnfilter.release(cn) if cn is not None else []:
            say(f"warning: CN filter not removed: {problem}", problem=True)


def services(cfg: settings_mod.Settings, run_dir: Path) -> list[supervise.Service]:
    """What make run starts and supervises, in start order (stopped in reverse):
    the one place the daemon list is built."""
    return [*_redis(cfg, run_dir), *_rtpengines(cfg), _kamailio(cfg, run_dir)]


def _on_signal(signum: int, _frame: object) -> None:
    # Once: a second Ctrl-C must not cut the orderly stop short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def _settings() -> Optional[settings_mod.Settings]:
    """The GW_* settings, and this process's open-files limit raised for the daemons
    it starts; None (after saying why) when they do not hold."""
    try:
        cfg = settings_mod.load()
    except settings_mod.SettingsError as exc:
        say(f"configuration error: {exc}", problem=True)
        return None
    try:
        for warning in stack.raise_nofile(cfg):
            say(f"warning: {warning}", problem=True)
    except sizing.SizingError as exc:
        say(f"configuration error: {exc}", problem=True)
        return None
    size = cfg.sizing
    say(f"sized for GW_MAX_AGENTS={size.max_agents}: shm {size.shm_mb} MB, "
        f"pkg {size.pkg_mb} MB/process, tcp_max_connections {size.tcp_max_connections}, "
        f"open files {size.nofile}")
    return cfg


def _run_dir() -> Optional[Path]:
    """GW_RUN_DIR, created and writable; None (after saying why) if not."""
    run_dir = Path(os.environ.get("GW_RUN_DIR", stack.ROOT / ".run")).resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        say(f"GW_RUN_DIR={run_dir}: {exc}", problem=True)
        return None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        # Kamailio would only log a warning about its pid file and exit.
        say(f"GW_RUN_DIR={run_dir} is not writable by uid {os.getuid()}: in a container "
            f"with a read-only root, mount a tmpfs owned by that user there "
            f"(--tmpfs {run_dir}:uid={os.getuid()},gid={os.getgid()},mode=0750)", problem=True)
        return None
    return run_dir


def _redis(cfg: settings_mod.Settings, run_dir: Path) -> list[supervise.Service]:
    """A local redis-server, unless one answers at GW_REDIS_URL already."""
    redis = stack.redis_addr(cfg.redis_url)
    if not cfg.redis_url.startswith("redis://") or stack.redis_ping(redis.host, redis.port):
        return []
    if not stack.is_local(redis.host):
        raise stack.StartError(f"GW_REDIS_URL: no Redis answers at {redis}")
    data = run_dir / "redis"
    data.mkdir(exist_ok=True)
    return [supervise.Service("redis-server", stack.redis_argv(redis, data),
                              lambda: stack.redis_ping(redis.host, redis.port),
                              what=f"on {redis}", ready_timeout=10)]


def _rtpengines(cfg: settings_mod.Settings) -> list[supervise.Service]:
    """A local rtpengine for each GW_RTPENGINE on this host that does not answer."""
    out = []
    for ng in cfg.rtpengines:
        if stack.ng_ping(ng):
            continue
        if not stack.is_local(ng.host):
            say(f"warning: rtpengine {ng} does not answer", problem=True)
            continue
        out.append(supervise.Service("rtpengine", stack.rtpengine_argv(cfg, ng),
                                     lambda ng=ng: stack.ng_ping(ng),
                                     what=f"ng={ng} media={cfg.media_ip}", ready_timeout=10))
    return out


def _comfort_noise(cfg: settings_mod.Settings, sup: supervise.Supervisor) -> cnfilter.Decision:
    """How CN is kept from the phones, decided once with a real packet
    (gw/cnfilter.py): the CN filter for the rtpengine we started, if any, then
    PT 13 through every rtpengine. Said once, and handed to Kamailio's KEMI app
    (GW_CN_FILTER=on/off in its environment)."""
    ours = [cfg.media_ports] if any(c.service.name == "rtpengine" for c in sup.children) else []
    try:
        decision = cnfilter.decide(cfg, ours, owner=f"make run pid {os.getpid()}")
    except cnfilter.FilterError as exc:
        raise stack.StartError(f"comfort noise: {exc}") from None
    say(decision.message)
    os.environ["GW_CN_FILTER"] = "on" if decision.cn is cnfilter.CnBlock.FILTER else "off"
    return decision


def _kamailio(cfg: settings_mod.Settings, run_dir: Path) -> supervise.Service:
    # Each worker's metric files live here; Kamailio's main process empties it at start.
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(run_dir / "metrics"))
    host, port = cfg.sip_listen.host, cfg.sip_listen.port
    return supervise.Service("kamailio", stack.kamailio_argv(cfg, run_dir),
                             lambda: (stack.sip_options(host, port) or "").startswith("SIP/2.0 200"),
                             what=f"SIP {cfg.sip_listen}", env=env, ready_timeout=20)


if __name__ == "__main__":
    sys.exit(main())
