"""logfmt-style log lines: `event=call.relay call_id=abc method=INVITE outcome=ok`.

One line per decision, greppable and machine-parsable, always carrying the Call-ID.
"""
from __future__ import annotations

import re
from typing import Any


_NEEDS_QUOTES = re.compile(r'[ "=\r\n\t]')


def _value(value: Any) -> str:
    text = str(value)
    if text == "" or _NEEDS_QUOTES.search(text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n") + '"'
    return text


def line(event: str, **fields: Any) -> str:
    """Format one log line; None-valued fields are left out."""
    parts = [f"event={event}"]
    parts.extend(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


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
