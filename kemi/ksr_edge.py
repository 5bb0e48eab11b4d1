"""The two helpers every route module of the app needs at the KSR edge (kemi/app.py
and its route mixins): read a pseudo-variable as text, log one decision as one
logfmt line carrying the Call-ID."""
from __future__ import annotations

import KSR  # noqa: E402  (provided by app_python3)

from kemi import logfmt


def pv(name: str) -> str:
    value = KSR.pv.get(name)
    return "" if value is None else str(value)


_LEVELS = frozenset({"err", "warn", "dbg", "info"})   # KSR's log functions by name


def log(level: str, event: str, **fields: object) -> None:
    """level: err, warn, dbg or info (anything else)."""
    if "call_id" not in fields:
        fields["call_id"] = KSR.kx.get_callid()
    getattr(KSR, level if level in _LEVELS else "info")(logfmt.line(event, **fields) + "\n")
