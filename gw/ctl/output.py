"""How gwctl prints for a person: aligned columns, ages, doctor's check lines.
(--json output is the commands' dictionaries as they are.)"""
from __future__ import annotations

import json
from typing import Any, Optional


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain aligned columns: [(header, key)]."""
    cells = [[h for h, _ in columns]] + [[str(r.get(k, "") if r.get(k) is not None else "-")
                                          for _, k in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def figures_text(leg: dict) -> str:
    """What came from a leg so far: only what rtpengine measured."""
    parts = []
    if leg.get("loss") is not None:
        parts.append(f"loss {leg['loss'] * 100:.0f}%")
    if leg.get("jitter_ms") is not None:
        parts.append(f"jitter {leg['jitter_ms']:.0f}ms")
    if leg.get("mos") is not None:
        parts.append(f"MOS {leg['mos']:.1f}")
    return " ".join(parts)


def media_text(sess: Optional[dict]) -> str:
    if not sess:
        return "-"
    return " | ".join(" ".join(filter(None, (leg["side"], leg["peer"] or "?", f"{leg['packets']}p",
                                             figures_text(leg))))
                      for leg in sess["legs"])


def print_checks(checks: list[dict]) -> None:
    width = max((len(c["name"]) for c in checks), default=8)
    for c in checks:
        label = {"ok": "ok", "fail": "FAIL", "warn": "warn", "skip": "skip"}[c["status"]]
        target = f" [{c['target']}]" if c["target"] else ""
        print(f"{label:<5} {c['name']:<{width}}  {c['detail']}{target}")
        if c["fix"] and c["status"] in ("fail", "warn"):
            print(f"{'':<5} {'':<{width}}  fix: {c['fix']}")
