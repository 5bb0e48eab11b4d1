"""What this copy of the connector is made of, for `gateway-agent --version`
and the bridge's /health: its own version, the JsSIP bundle's (recorded from
web/package-lock.json in static/versions.json when the bundle was built), and
the Python side's."""
from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway_agent import __version__

STATIC_DIR = Path(__file__).resolve().parent / "static"
BUNDLE_FILE = STATIC_DIR / "versions.json"


def bundle() -> dict[str, Any]:
    """static/versions.json, or {} when this copy has no built bundle."""
    try:
        data = json.loads(BUNDLE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _dist(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    b = bundle()
    phone_js = (b.get("bundle") or {}).get("phone.js") or {}
    return {
        "gateway_agent": __version__,
        "jssip": b.get("jssip"),
        "esbuild": b.get("esbuild"),
        "bundle_sha256": phone_js.get("sha256"),
        "python": platform.python_version(),
        "aiohttp": _dist("aiohttp"),
        "cryptography": _dist("cryptography"),
        "os": f"{platform.system()} {platform.release()}".strip(),
    }


def line() -> str:
    v = collect()
    return (f"gateway-agent {v['gateway_agent']} (JsSIP {v['jssip'] or 'not built'}, "
            f"esbuild {v['esbuild'] or '-'}; Python {v['python']}, aiohttp {v['aiohttp']}, "
            f"cryptography {v['cryptography']}; {v['os']})")
