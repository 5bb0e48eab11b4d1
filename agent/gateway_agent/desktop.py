"""The two desktop chores a team rolls the connector out with, run through the
platform modules: `trust-cert` (the bridge certificate into the user's trust
store) and `autostart on|off` (start at login).

This is the only place that runs OS commands or writes outside the cert folder;
the command runner is injected, so tests check the exact commands of every
platform with the OS faked. Each function returns the exit status: 0 done,
1 an OS command failed, 2 it cannot even start (a tool missing, a file that
cannot be written, a value that cannot be written safely).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping, Optional, Sequence, TextIO

from gateway_agent.platforms import Context

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
TRUST_TIMEOUT_S = 300      # the OS may ask the user to confirm (Windows) or for a password (macOS)


def run_command(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                          timeout=TRUST_TIMEOUT_S, stdin=subprocess.DEVNULL)


def command_line(plat: ModuleType, argv: Sequence[str]) -> str:
    """How a user would type argv on that platform (what --dry-run prints)."""
    if plat.NAME == "windows":
        return subprocess.list2cmdline(list(argv))
    return shlex.join(argv)


def launcher_argv(executable: str = sys.executable) -> list[str]:
    """What starts this connector again later: the `gateway-agent` command pip
    put next to this interpreter (Scripts\\gateway-agent.exe in a Windows venv),
    else this interpreter with -m."""
    here = Path(executable).parent
    for name in ("gateway-agent.exe", "gateway-agent"):
        if (here / name).is_file():
            return [str(here / name)]
    return [executable, "-m", "gateway_agent"]


def _say(out: TextIO, text: str) -> None:
    print(f"gateway-agent: {text}", file=out, flush=True)


def trust_cert(plat: ModuleType, ctx: Context, pem: Path, runner: Runner = run_command,
               dry_run: bool = False, out: Optional[TextIO] = None,
               err: Optional[TextIO] = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    plan = plat.trust_plan(ctx, pem)
    if dry_run:
        _say(out, f"trust-cert (dry run): would run, for {pem}:")
        for d in plan.dirs:
            print(f"# create {d}" if plat.NAME == "windows" else f"mkdir -p {shlex.quote(str(d))}",
                  file=out)
        for step in plan.steps:
            print(f"# {step.why}{' (may fail: nothing to remove)' if step.may_fail else ''}", file=out)
            print(command_line(plat, step.argv), file=out)
        if plan.note:
            print(f"# {plan.note}", file=out)
        return 0
    for d in plan.dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _say(err, f"trust-cert: cannot create {d}: {exc.strerror or exc}")
            return 2
    if plan.note:
        _say(out, plan.note)
    for step in plan.steps:
        _say(out, f"{step.why}: {command_line(plat, step.argv)}")
        try:
            done = runner(step.argv)
        except FileNotFoundError:
            _say(err, f"trust-cert: {step.argv[0]} not found: {plan.tool_hint}")
            return 2
        except subprocess.TimeoutExpired:
            _say(err, f"trust-cert: {step.argv[0]} did not finish in {TRUST_TIMEOUT_S} s")
            return 1
        if done.returncode != 0 and not step.may_fail:
            detail = (done.stderr or done.stdout or "").strip()
            _say(err, f"trust-cert: {step.argv[0]} failed (exit {done.returncode})"
                      + (f": {detail}" if detail else ""))
            return 1
    _say(out, f"trust-cert: done: {pem} is trusted; restart the browser")
    return 0


def autostart(plat: ModuleType, ctx: Context, on: bool, argv: Sequence[str],
              settings: Mapping[str, str], dry_run: bool = False,
              out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    path: Path = plat.autostart_file(ctx)
    if not on:
        if dry_run:
            _say(out, f"autostart off (dry run): would remove {path}" if path.exists()
                 else f"autostart off (dry run): nothing to remove ({path} does not exist)")
            return 0
        try:
            path.unlink()
        except FileNotFoundError:
            _say(out, f"autostart was already off ({path} does not exist)")
            return 0
        except OSError as exc:
            _say(err, f"autostart off: cannot remove {path}: {exc.strerror or exc}")
            return 2
        _say(out, f"autostart off: removed {path}")
        return 0
    try:
        entry: bytes = plat.autostart_entry(ctx, argv, settings)
    except ValueError as exc:
        _say(err, f"autostart on: {exc}")
        return 2
    if dry_run:
        _say(out, f"autostart on (dry run): would write {path}:")
        out.write(entry.decode("utf-8").replace("\r\n", "\n"))
        out.flush()
        return 0
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(entry)
        os.replace(tmp, path)
    except OSError as exc:
        _say(err, f"autostart on: cannot write {path}: {exc.strerror or exc}")
        return 2
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "the defaults"
    _say(out, f"autostart on: {path} starts {command_line(plat, argv)} at login with {shown}")
    return 0
