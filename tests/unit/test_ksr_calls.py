"""Every KSR call the app makes exists in Kamailio's API with that many parameters."""
from __future__ import annotations

import ast
from pathlib import Path

from support.ksr_double import load_snapshot

APP = Path(__file__).resolve().parents[2] / "kemi" / "app.py"


def ksr_calls(path: Path) -> list[tuple[str, str, int, int]]:
    """(module, function, argc, line) for every KSR.x(...) / KSR.mod.x(...) call."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        if isinstance(f.value, ast.Name) and f.value.id == "KSR":
            out.append(("", f.attr, len(node.args), node.lineno))
        elif (isinstance(f.value, ast.Attribute) and isinstance(f.value.value, ast.Name)
              and f.value.value.id == "KSR"):
            out.append((f.value.attr, f.attr, len(node.args), node.lineno))
    return out


def check_calls(api: dict[tuple[str, str], int]) -> list[str]:
    problems = []
    for module, name, argc, line in ksr_calls(APP):
        if (module, name) not in api:
            problems.append(f"line {line}: KSR.{module}.{name} does not exist")
        elif api[(module, name)] != argc:
            problems.append(f"line {line}: KSR.{module}.{name} takes {api[(module, name)]}, given {argc}")
    return problems


def test_app_makes_ksr_calls():
    assert len(ksr_calls(APP)) > 50


def test_every_ksr_call_exists_in_snapshot():
    assert check_calls(load_snapshot()) == []
