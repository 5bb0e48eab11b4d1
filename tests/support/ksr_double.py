"""A test double for Kamailio's KSR module, generated from the real API list
(`kamcmd app_python.api_list`), so it cannot offer a function Kamailio lacks
or accept a different number of parameters."""
from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Callable

SNAPSHOT = Path(__file__).resolve().parent.parent / "data" / "ksr_api_list.txt"
_ITEM = re.compile(r"ret: (\S+)\s+module: (\S*)\s+name: (\S+)\s+params: ([^\n]*)")


def parse_api_list(text: str) -> dict[tuple[str, str], int]:
    """{(module, function): number of parameters}; module '' is KSR itself."""
    api = {}
    for _ret, module, name, params in _ITEM.findall(text):
        params = params.strip()
        api[(module, name)] = 0 if params == "none" else len(params.split(","))
    return api


def load_snapshot() -> dict[tuple[str, str], int]:
    return parse_api_list(SNAPSHOT.read_text())


def parse_return_types(text: str) -> dict[tuple[str, str], str]:
    """{(module, function): 'int' | 'bool' | 'xval' | 'none'}"""
    return {(module, name): ret for ret, module, name, _ in _ITEM.findall(text)}


class KsrDouble(types.ModuleType):
    """KSR with every real function; each records its calls and returns what
    the test configured (`returns[(module, name)]`, a value or a callable)."""

    def __init__(self, api: dict[tuple[str, str], int]) -> None:
        super().__init__("KSR")
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.returns: dict[tuple[str, str], Any] = {}
        modules: dict[str, types.SimpleNamespace] = {}
        for (module, name), nparams in api.items():
            fn = self._make(module, name, nparams)
            if module:
                modules.setdefault(module, types.SimpleNamespace())
                setattr(modules[module], name, fn)
            else:
                setattr(self, name, fn)
        for module, ns in modules.items():
            setattr(self, module, ns)

    def _make(self, module: str, name: str, nparams: int) -> Callable[..., Any]:
        def fn(*args: Any) -> Any:
            if len(args) != nparams:
                raise TypeError(f"KSR.{module + '.' if module else ''}{name} takes {nparams} "
                                f"parameters, got {len(args)}")
            self.calls.append((module, name, args))
            value = self.returns.get((module, name), 1)
            return value(*args) if callable(value) else value
        return fn

    def called(self, module: str, name: str) -> list[tuple[Any, ...]]:
        return [args for m, n, args in self.calls if (m, n) == (module, name)]
