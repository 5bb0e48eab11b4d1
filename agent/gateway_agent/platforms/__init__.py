"""What differs between the agents' desktops, behind one small interface.

Each of windows.py, macos.py and linux.py answers the same questions:

- `config_dir(ctx)`: the user's own folder for the connector (its certificate);
- `has_desktop(ctx)`: is there a desktop browser to open the phone page in;
- `trust_plan(ctx, pem)`: the commands that put the bridge certificate into
  the user's trust store (what `gateway-agent trust-cert` runs or prints);
- `autostart_file(ctx)` and `autostart_entry(ctx, argv, settings)`: the file
  that starts the connector at login, and its bytes.

They only compute: paths and command lines from the environment and home folder
they are given (`Context`), so each is tested on any OS with those faked. The
one place that runs commands or writes files is desktop.py.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Mapping, Optional

APP_ID = "webrtc-gateway-agent"          # folder, autostart entry and trust-store nickname
APP_NAME = "Agent phone connector (WWE)"


@dataclass(frozen=True)
class Context:
    """The environment and home folder a platform module computes from."""
    env: Mapping[str, str]
    home: Path

    @classmethod
    def current(cls, env: Optional[Mapping[str, str]] = None, home: Optional[Path] = None) -> "Context":
        env = os.environ if env is None else env
        if home is None:
            home = Path(env["HOME"]) if env.get("HOME") else Path.home()
        return cls(env, home)


@dataclass(frozen=True)
class Step:
    """One command of a plan, with why it runs; `may_fail` steps (cleanup of an
    older entry that may not exist) do not stop the plan."""
    argv: tuple[str, ...]
    why: str
    may_fail: bool = False


@dataclass(frozen=True)
class TrustPlan:
    """Folders to create first, then the commands, in order; `note` is what the
    user will see happen (a confirmation dialog, a password prompt)."""
    steps: tuple[Step, ...]
    dirs: tuple[Path, ...] = field(default_factory=tuple)
    note: str = ""
    tool_hint: str = ""       # how to install the command when it is missing


def for_platform(name: Optional[str] = None) -> ModuleType:
    """The module for `name` (a sys.platform value; this machine's by default)."""
    from gateway_agent.platforms import linux, macos, windows
    name = sys.platform if name is None else name
    if name == "win32":
        return windows
    if name == "darwin":
        return macos
    return linux        # Linux and other XDG desktops
