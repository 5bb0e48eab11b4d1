"""What a doctor check is and what it answers: one dict per check (name, status
ok/fail/warn/skip, target, detail, the fix line, data), the same for text and --json."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from gw.ctl.kamailio import Kamailio
from kemi.settings import HostPort, Settings

if TYPE_CHECKING:
    from gw.ctl.doctor.media_probe import MediaProbe


def result(name: str, status: str, detail: str, fix: str = "", target: str = "",
           data: Optional[dict] = None) -> dict:
    return {"name": name, "status": status, "target": target, "detail": detail, "fix": fix,
            "data": data or {}}


def ok(name: str, detail: str, **kw: Any) -> dict:
    return result(name, "ok", detail, **kw)


def fail(name: str, detail: str, fix: str, **kw: Any) -> dict:
    return result(name, "fail", detail, fix, **kw)


def warn(name: str, detail: str, fix: str, **kw: Any) -> dict:
    return result(name, "warn", detail, fix, **kw)


def skip(name: str, detail: str, **kw: Any) -> dict:
    return result(name, "skip", detail, **kw)


@dataclass
class Context:
    """What every check may read: the gateway's settings, its Kamailio, where the
    agents' phones are (--phones), and how the running gateway keeps comfort noise
    from them ("filter", "transcode"; "" when Kamailio cannot say; None: not asked
    yet; comfort_noise.gateway_cn_path)."""

    cfg: Settings
    kam: Kamailio
    phones: str
    cn_path: Optional[str] = None


@dataclass
class Engine:
    """One rtpengine of GW_RTPENGINE as its checks see it: the answer to its ng ping
    (the rtpengine check), and doctor's sample sessions through it (None when it is down)."""

    address: HostPort
    up: dict
    probe: Optional["MediaProbe"] = None


@dataclass(frozen=True)
class Check:
    """One doctor check. per_engine: runs once for each rtpengine, after its ng ping
    (engine is None for the others); needs_probe: reads doctor's sample sessions.
    run answers one result, or a list of them, one per target (pbx: per GW_PBX entry)."""

    name: str
    run: Callable[[Context, Optional[Engine]], Union[dict, list[dict]]]
    per_engine: bool = False
    needs_probe: bool = False
