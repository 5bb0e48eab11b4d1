"""The connector's settings: AGENT_* environment variables, validated at start.

Every error names the variable, so `gateway-agent` can print it and exit 2.
AGENT_CERT_DIR defaults to the user's own config folder (platforms/), never
the current directory: an agent's PC starts it from anywhere (autostart).
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlsplit

from gateway_agent import platforms

NAMES = ("AGENT_GATEWAY_WS", "AGENT_ORIGINS", "AGENT_LISTEN", "AGENT_CERT_DIR")

DEFAULTS: dict[str, str] = {
    "AGENT_GATEWAY_WS": "ws://127.0.0.1:8080",
    # WWE origins allowed by CORS (space or comma separated). Empty: no
    # cross-origin caller at all (only the phone page itself and local tools).
    "AGENT_ORIGINS": "",
    "AGENT_LISTEN": "127.0.0.1:8000",
    # AGENT_CERT_DIR (the certificate and key): the platform's config folder,
    # see default_cert_dir().
}


def default_cert_dir(env: Mapping[str, str], home: Optional[Path] = None,
                     platform: Optional[str] = None) -> Path:
    """%APPDATA%\\webrtc-gateway-agent, ~/Library/Application Support/webrtc-gateway-agent
    or $XDG_CONFIG_HOME/webrtc-gateway-agent."""
    return platforms.for_platform(platform).config_dir(platforms.Context.current(env, home))


_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class SettingsError(ValueError):
    """A setting is malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    gateway_ws: str
    origins: tuple[str, ...]
    listen_host: str
    listen_port: int
    cert_dir: Path

    @property
    def base_url(self) -> str:
        return f"https://{self.listen_host}:{self.listen_port}"

    @property
    def page_url(self) -> str:
        return f"{self.base_url}/phone"

    @property
    def self_origins(self) -> tuple[str, ...]:
        """Origins of the phone page itself (the only ones allowed on /phone/ws)."""
        names = {self.listen_host}
        if ipaddress.ip_address(self.listen_host).is_loopback:
            names |= {"127.0.0.1", "localhost"}
        return tuple(sorted(f"https://{n}:{self.listen_port}" for n in names))


def _origin(var: str, value: str) -> str:
    if value == "*" or "*" in value:
        raise SettingsError(f"{var}: wildcards are not allowed ({value!r}); list each WWE origin")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SettingsError(f"{var}: {value!r} is not an origin like https://wwe.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise SettingsError(f"{var}: {value!r} is not an origin (no path, query or user part)")
    try:
        port = parts.port
    except ValueError as exc:
        raise SettingsError(f"{var}: {value!r}: bad port") from exc
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _listen(var: str, value: str) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise SettingsError(f"{var}: expected IP:PORT, got {value!r}")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError as exc:
        raise SettingsError(f"{var}: {host!r} is not an IP address") from exc
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise SettingsError(f"{var}: bad port {port_s!r}")
    return str(ip), int(port_s)


def _gateway_ws(var: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss"):
        raise SettingsError(f"{var}: expected a ws:// or wss:// URL, got {value!r}")
    if not parts.hostname or not (_HOST_RE.match(parts.hostname) or ":" in parts.hostname):
        raise SettingsError(f"{var}: no valid host in {value!r}")
    try:
        parts.port
    except ValueError as exc:
        raise SettingsError(f"{var}: bad port in {value!r}") from exc
    if parts.query or parts.fragment:
        raise SettingsError(f"{var}: no query or fragment allowed in {value!r}")
    return value


def given(env: Mapping[str, str]) -> dict[str, str]:
    """The AGENT_* settings env sets (non-empty), in NAMES order."""
    return {n: env[n].strip() for n in NAMES if env.get(n, "").strip()}


def load(env: Mapping[str, str] | None = None, home: Optional[Path] = None) -> Settings:
    env = os.environ if env is None else env

    def get(name: str) -> str:
        value = env.get(name)
        if value is None or value.strip() == "":
            return DEFAULTS[name] if name in DEFAULTS else str(default_cert_dir(env, home))
        return value.strip()

    origins: list[str] = []
    for item in re.split(r"[\s,]+", get("AGENT_ORIGINS")):
        if item:
            o = _origin("AGENT_ORIGINS", item)
            if o not in origins:
                origins.append(o)
    host, port = _listen("AGENT_LISTEN", get("AGENT_LISTEN"))
    cert_dir = Path(get("AGENT_CERT_DIR")).expanduser()
    if cert_dir.exists() and not cert_dir.is_dir():
        raise SettingsError(f"AGENT_CERT_DIR: {cert_dir} is not a directory")
    return Settings(
        gateway_ws=_gateway_ws("AGENT_GATEWAY_WS", get("AGENT_GATEWAY_WS")),
        origins=tuple(origins),
        listen_host=host,
        listen_port=port,
        cert_dir=cert_dir,
    )
