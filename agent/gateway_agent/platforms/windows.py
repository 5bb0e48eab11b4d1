"""Windows: %APPDATA% for the certificate, the current user's Trusted Root
store (certutil), and a .cmd in the user's Startup folder for autostart (no
shortcut (.lnk) to build, no scheduled task, no administrator rights)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from gateway_agent.platforms import APP_ID, APP_NAME, Context, Step, TrustPlan

NAME = "windows"


def _appdata(ctx: Context) -> Path:
    value = ctx.env.get("APPDATA", "").strip()
    return Path(value) if value else ctx.home / "AppData" / "Roaming"


def config_dir(ctx: Context) -> Path:
    return _appdata(ctx) / APP_ID


def has_desktop(ctx: Context) -> bool:
    return True     # an agent's Windows session always has one


def trust_plan(ctx: Context, pem: Path) -> TrustPlan:
    # The user's own store: no administrator rights. Chrome and Edge read it.
    return TrustPlan(
        steps=(Step(("certutil", "-addstore", "-user", "Root", str(pem)),
                    "add the bridge certificate to your Trusted Root Certification Authorities"),),
        note="Windows asks you to confirm the new certificate: answer Yes.",
        tool_hint="certutil.exe ships with Windows (C:\\Windows\\System32)")


def autostart_file(ctx: Context) -> Path:
    return (_appdata(ctx) / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"
            / f"{APP_ID}.cmd")


def _cmd_text(what: str, value: str) -> str:
    """A value inside double quotes in a .cmd file: % doubled; a double quote or
    a line break cannot be written safely at all."""
    if any(c in value for c in '"\r\n'):
        raise ValueError(f"{what}: {value!r} cannot go into a .cmd file (quote or line break)")
    return value.replace("%", "%%")


def autostart_entry(ctx: Context, argv: Sequence[str], settings: Mapping[str, str]) -> bytes:
    # chcp 65001: the lines below are UTF-8 (a user folder may be C:\Users\José).
    lines = ["@echo off", "chcp 65001 >nul",
             f"rem {APP_NAME}: started at login (gateway-agent autostart on).",
             "rem Remove it with: gateway-agent autostart off"]
    for name, value in settings.items():
        lines.append(f'set "{name}={_cmd_text(name, value)}"')
    command = " ".join(f'"{_cmd_text("command", a)}"' for a in argv)
    # start: the .cmd window closes at once; the connector's own console starts minimised.
    lines.append(f'start "{APP_NAME}" /min {command}')
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
