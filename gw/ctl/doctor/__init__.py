"""gwctl doctor: check every dependency and the usual faults; exit 1 if one fails.

One module of this package per check, holding its probe and its fix line, and
ending in a CHECK (base.Check) that REGISTRY names: adding a check is writing its
module and one line here. The checks of one rtpengine (per_engine) run after its
ng ping, on one set of sample sessions through it (media_probe.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Iterable, Optional

from gw.ctl.doctor import (capacity, comfort_noise, kamailio, media_address, media_ports, pbx, redis,
                           rtpengine, settings)
from gw.ctl.doctor.base import Check, Context, Engine
from gw.ctl.doctor.media_probe import probe_media
from gw.ctl.kamailio import Kamailio
from gw.ctl.output import print_checks, print_json
from kemi.settings import Settings, SettingsError

HELP = "check dependencies and the usual faults"
# In the order `gwctl doctor --help` names them. They run in dependency order:
# node-wide checks in this order, each rtpengine's checks where the first of them stands.
REGISTRY: tuple[Check, ...] = (
    settings.CHECK, redis.CHECK, rtpengine.CHECK, kamailio.CHECK, pbx.CHECK,
    media_address.CHECK, comfort_noise.CHECK, media_ports.CHECK, capacity.CHECK,
)
CHECKS = tuple(c.name for c in REGISTRY)
PHONES = media_address.PHONES


def doctor(cfg: Settings, kam: Kamailio, phones: str = "internet",
           only: Optional[Iterable[str]] = None) -> list[dict]:
    """Every check, in dependency order. A check is skipped when what it needs is down."""
    want = set(only or CHECKS)
    ctx = Context(cfg, kam, phones)
    results: list[dict] = []
    engines_done = False
    for check in REGISTRY:
        if not check.per_engine:
            if check.name in want:
                answer = check.run(ctx, None)
                results += answer if isinstance(answer, list) else [answer]
        elif not engines_done:
            engines_done = True
            results += _engine_checks(ctx, want)
    return results


def _engine_checks(ctx: Context, want: set[str]) -> list[dict]:
    """Each rtpengine's checks. Its ng ping (the rtpengine check) is shown when asked
    for, or when it is why the checks asked for cannot run."""
    wanted = [c for c in REGISTRY if c.per_engine and c is not rtpengine.CHECK and c.name in want]
    results: list[dict] = []
    for address in ctx.cfg.rtpengines:
        up = rtpengine.rtpengine_check(address)
        if rtpengine.CHECK.name in want or (wanted and up["status"] != "ok"):
            results.append(up)
        if not wanted:
            continue
        needs_probe = up["status"] == "ok" and any(c.needs_probe for c in wanted)
        if needs_probe and ctx.cn_path is None:
            ctx.cn_path = comfort_noise.gateway_cn_path(ctx.kam) or ""
        probe = probe_media(address, cn=comfort_noise.cn_block(ctx.cn_path)) if needs_probe else None
        engine = Engine(address, up, probe)
        results += [c.run(ctx, engine) for c in wanted]
    return results


def command(cfg: Settings, kam: Kamailio, args: argparse.Namespace, env: dict[str, str]) -> int:
    phones = args.phones or env.get("GWCTL_PHONES") or "internet"
    if phones not in PHONES:
        print(f"gwctl: GWCTL_PHONES={phones!r}: expected one of {', '.join(PHONES)}", file=sys.stderr)
        return 2
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    unknown = set(only or ()) - set(CHECKS)
    if unknown:
        print(f"gwctl: unknown check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    checks = doctor(cfg, kam, phones, only)
    ok = all(c["status"] != "fail" for c in checks)
    if args.json:
        print_json({"ok": ok, "phones": phones, "checks": checks})
    else:
        print_checks(checks)
        failed = sum(c["status"] == "fail" for c in checks)
        print("all good" if ok else f"{failed} check(s) failed")
    return 0 if ok else 1


def settings_failed(exc: SettingsError, as_json: bool) -> int:
    """doctor when the GW_* settings do not load: that one failed check, exit 1."""
    check = settings.invalid(exc)
    if as_json:
        print_json({"ok": False, "checks": [check]})
    else:
        print_checks([check])
    return 1
