"""Linux (and other XDG desktops): $XDG_CONFIG_HOME for the certificate, the
user's NSS database (~/.pki/nssdb, what Chrome and Chromium read) and an XDG
autostart entry."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from gateway_agent.platforms import APP_ID, APP_NAME, Context, Step, TrustPlan

NAME = "linux"

# NSS trust flags for the bridge certificate: "P" (trusted peer) trusts exactly
# this self-signed server certificate. "C" (trusted CA) alone is not enough:
# Chromium then treats it only as an issuer, and as it is no CA (basicConstraints
# CA:false, on purpose) the page still fails with a certificate error
# (tests/test_agent_package.py loads the page in chromium with each).
NSS_TRUST = "P,,"

# Characters that make an Exec argument need quotes (XDG Desktop Entry spec).
_RESERVED = set(" \t\"'\\><~|&;$*?#()`")


def _xdg_config(ctx: Context) -> Path:
    value = ctx.env.get("XDG_CONFIG_HOME", "").strip()
    # The spec: a relative value is invalid and must be ignored.
    return Path(value) if value and Path(value).is_absolute() else ctx.home / ".config"


def config_dir(ctx: Context) -> Path:
    return _xdg_config(ctx) / APP_ID


def has_desktop(ctx: Context) -> bool:
    return bool(ctx.env.get("DISPLAY") or ctx.env.get("WAYLAND_DISPLAY"))


def nss_db(ctx: Context) -> Path:
    return ctx.home / ".pki" / "nssdb"


def trust_plan(ctx: Context, pem: Path) -> TrustPlan:
    db = nss_db(ctx)
    where = f"sql:{db}"
    steps = []
    if not (db / "cert9.db").exists():
        steps.append(Step(("certutil", "-d", where, "-N", "--empty-password"),
                          "create your NSS certificate database (Chrome and Chromium read it)"))
    else:
        # A renewed certificate replaces the old one under the same name.
        steps.append(Step(("certutil", "-d", where, "-D", "-n", APP_ID),
                          "remove an older bridge certificate, if there is one", may_fail=True))
    steps.append(Step(("certutil", "-d", where, "-A", "-t", NSS_TRUST, "-n", APP_ID, "-i", str(pem)),
                      "trust the bridge certificate for HTTPS in Chrome and Chromium"))
    return TrustPlan(
        steps=tuple(steps),
        dirs=() if db.is_dir() else (db,),
        note="Restart Chrome/Chromium. Firefox keeps its own certificates: see agent/README.md.",
        tool_hint="certutil comes with libnss3-tools (Debian, Ubuntu) or nss-tools (Fedora, RHEL)")


def autostart_file(ctx: Context) -> Path:
    return _xdg_config(ctx) / "autostart" / f"{APP_ID}.desktop"


def exec_quote(arg: str) -> str:
    """One argument of a desktop entry's Exec key, quoted as the spec says:
    inside double quotes, escape " ` $ \\ with a backslash; then the string
    escape doubles every backslash; a literal % is written %%."""
    if "\n" in arg or "\r" in arg:
        raise ValueError(f"{arg!r}: a line break cannot go into a desktop entry")
    if arg and not (set(arg) & _RESERVED):
        quoted = arg
    else:
        inner = "".join("\\" + c if c in '"`$\\' else c for c in arg)
        quoted = f'"{inner}"'
    return quoted.replace("\\", "\\\\").replace("%", "%%")


def autostart_entry(ctx: Context, argv: Sequence[str], settings: Mapping[str, str]) -> bytes:
    command = ["env", *(f"{k}={v}" for k, v in settings.items()), *argv] if settings else list(argv)
    lines = [
        "[Desktop Entry]",
        "Type=Application",
        f"Name={APP_NAME}",
        "Comment=WWE softphone connector and web phone (gateway-agent autostart on)",
        "Exec=" + " ".join(exec_quote(a) for a in command),
        "Terminal=false",
        "X-GNOME-Autostart-enabled=true",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")
