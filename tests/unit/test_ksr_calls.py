"""Every KSR call the app makes exists in Kamailio's API with that many parameters."""
from __future__ import annotations

import ast
from pathlib import Path

from support.ksr_double import SNAPSHOT, load_snapshot, parse_return_types

APP = Path(__file__).resolve().parents[2] / "kemi" / "app.py"
# Every module of the app that calls KSR: app.py and its route mixins.
KSR_MODULES = sorted(p for p in APP.parent.glob("*.py") if "\nimport KSR" in p.read_text())


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
    for path in KSR_MODULES:
        for module, name, argc, line in ksr_calls(path):
            where = f"{path.name} line {line}"
            if (module, name) not in api:
                problems.append(f"{where}: KSR.{module}.{name} does not exist")
            elif api[(module, name)] != argc:
                problems.append(f"{where}: KSR.{module}.{name} takes {api[(module, name)]}, given {argc}")
    return problems


def test_app_makes_ksr_calls():
    assert len(ksr_calls(APP)) > 50
    assert {p.name for p in KSR_MODULES} >= {"app.py", "reroute.py"}


def test_every_ksr_call_exists_in_snapshot():
    assert check_calls(load_snapshot()) == []


def _ksr_target(call: ast.AST) -> tuple[str, str] | None:
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
        return None
    f = call.func
    if isinstance(f.value, ast.Name) and f.value.id == "KSR":
        return ("", f.attr)
    if isinstance(f.value, ast.Attribute) and isinstance(f.value.value, ast.Name) and f.value.value.id == "KSR":
        return (f.value.attr, f.attr)
    return None


def return_type_misuse(path: Path, returns: dict[tuple[str, str], str]) -> list[str]:
    """KSR functions returning int are >0 true / <0 false: `not KSR.x()` or a bare
    `if KSR.x()` is a bug. Those returning bool must not be compared with 0."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            target = _ksr_target(node.left)
            if target and returns.get(target) == "bool" and any(
                    isinstance(c, ast.Constant) and c.value == 0 for c in node.comparators):
                problems.append(f"line {node.lineno}: KSR.{'.'.join(target)} returns bool; "
                                "comparing it with 0 is always False/True")
        tests = []
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            tests.append(node.test)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            tests.append(node.operand)
        if isinstance(node, ast.BoolOp):
            tests.extend(node.values)
        for test in tests:
            target = _ksr_target(test)
            # kx getters and *get* functions return values, not status codes.
            is_value = target and (target[0] == "kx" or "get" in target[1])
            if target and not is_value and returns.get(target) == "int":
                problems.append(f"line {test.lineno}: KSR.{'.'.join(target)} returns int "
                                "(<0 false, >0 true): test it with > 0 or < 0")
    return problems


def test_ksr_return_types_are_used_correctly():
    returns = parse_return_types(SNAPSHOT.read_text())
    assert [p for path in KSR_MODULES for p in return_type_misuse(path, returns)] == []
