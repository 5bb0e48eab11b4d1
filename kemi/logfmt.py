"""logfmt-style log lines: `event=call.relay call_id=abc method=INVITE outcome=ok`.

One line per decision, greppable and machine-parsable, always carrying the Call-ID.
"""
from __future__ import annotations

from typing import Any


def _plain(text: str) -> bool:
    """Safe without quotes? (Six substring tests cost less than one regex search.)"""
    return bool(text) and not (" " in text or "=" in text or '"' in text or "\n" in text or "\r" in text
                               or "\t" in text)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n") + '"'


def line(event: str, **fields: Any) -> str:
    """Format one log line; None-valued fields are left out. (Written for speed:
    the gateway logs every routing decision, several per call.)"""
    out = "event=" + event
    for k, v in fields.items():
        if v is not None:
            text = v if type(v) is str else str(v)
            out += f" {k}={text if _plain(text) else _quoted(text)}"
    return out


def parse(text: str) -> dict[str, str]:
    """Parse a line produced by `line` (used by tests and gwctl)."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq]
        i = eq + 1
        if i < n and text[i] == '"':
            i += 1
            buf = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                    buf.append({"r": "\r", "n": "\n"}.get(text[i], text[i]))
                else:
                    buf.append(text[i])
                i += 1
            i += 1
            out[key] = "".join(buf)
        else:
            end = text.find(" ", i)
            end = n if end < 0 else end
            out[key] = text[i:end]
            i = end
    return out
