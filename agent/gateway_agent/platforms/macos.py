"""macOS: ~/Library/Application Support for the certificate, the login
keychain (security add-trusted-cert) and a per-user LaunchAgent for autostart."""
from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Mapping, Sequence

from gateway_agent.platforms import APP_ID, Context, Step, TrustPlan

NAME = "macos"


def config_dir(ctx: Context) -> Path:
    return ctx.home / "Library" / "Application Support" / APP_ID


def has_desktop(ctx: Context) -> bool:
    # Logged in over SSH there is no window server session to open a page in.
    return not ctx.env.get("SSH_CONNECTION")


def trust_plan(ctx: Context, pem: Path) -> TrustPlan:
    keychain = ctx.home / "Library" / "Keychains" / "login.keychain-db"
    # trustRoot: the certificate is self-signed, so it is its own root.
    return TrustPlan(
        steps=(Step(("security", "add-trusted-cert", "-r", "trustRoot", "-k", str(keychain), str(pem)),
                    "trust the bridge certificate in your login keychain"),),
        note="macOS asks for your password to change the trust settings.",
        tool_hint="security ships with macOS (/usr/bin/security)")


def autostart_file(ctx: Context) -> Path:
    return ctx.home / "Library" / "LaunchAgents" / f"{APP_ID}.plist"


def autostart_entry(ctx: Context, argv: Sequence[str], settings: Mapping[str, str]) -> bytes:
    log = ctx.home / "Library" / "Logs" / f"{APP_ID}.log"
    plist = {
        "Label": APP_ID,
        "ProgramArguments": list(argv),
        # Once per login; no KeepAlive: a connector that cannot start (its port
        # taken, a bad setting: exit 2) must not be relaunched every 10 s.
        "RunAtLoad": True,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",     # only in a desktop login, never over SSH
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    if settings:
        plist["EnvironmentVariables"] = dict(settings)
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=True)
