"""The connector as an agent's PC gets it: the wheel `make agent-package` builds
(agent/build.py), installed with pip alone into a fresh venv (no system site
packages, no repository on the path) whose PATH holds nothing but that venv, so
no Node.js or npm, from the dependency wheels `make deps` keeps in
.venv/wheelhouse-agent (no network in the tests). The agent tests run this
installed copy, never the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / ".venv" / "wheelhouse-agent"
# What a desktop's environment would not have: anything pointing into this repository.
_DROP = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


@dataclass(frozen=True)
class AgentInstall:
    wheel: Path
    venv: Path
    build_seconds: float
    install_seconds: float

    @property
    def bin(self) -> Path:
        return self.venv / ("Scripts" if os.name == "nt" else "bin")

    @property
    def command(self) -> list[str]:
        return [str(self.bin / "gateway-agent")]

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    def env(self, extra: Optional[Mapping[str, str]] = None, path: Optional[str] = None) -> dict[str, str]:
        """The environment the installed connector runs in: PATH is its venv only
        (no node, no npm) unless `path` says otherwise; nothing of this repo's."""
        env = {k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith("AGENT_")}
        env["PATH"] = path if path is not None else str(self.bin)
        env.update(extra or {})
        return env

    def run(self, *args: str, env: Optional[Mapping[str, str]] = None, cwd: Optional[Path] = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command, *args], env=dict(env) if env is not None else self.env(),
                              cwd=cwd or self.venv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


def _check(argv: list[str], what: str, log: Path, **kw) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}\n")
    if r.returncode != 0:
        raise AssertionError(f"{what} failed (exit {r.returncode}): {' '.join(argv)}\n"
                             f"{r.stdout[-3000:]}{r.stderr[-3000:]}")


def build_and_install(base: Path) -> AgentInstall:
    """Build the wheel (a clean JsSIP bundle included) and install it in base/venv."""
    if not any(WHEELHOUSE.glob("aiohttp-*.whl")):
        raise AssertionError(f"no dependency wheels in {WHEELHOUSE}: run `make deps`")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log = base / "build_install.log"
    t0 = time.monotonic()
    # --no-platform-check: the Windows/macOS wheel check needs the package index
    # (make agent-package runs it); the tests stay off the network.
    _check([sys.executable, str(ROOT / "agent" / "build.py"), "wheel", "--dist", str(base / "dist"),
            "--no-platform-check"], "building the agent wheel", log, cwd=ROOT)
    wheels = sorted((base / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    t1 = time.monotonic()
    venv = base / "venv"
    _check([sys.executable, "-m", "venv", str(venv)], "creating a fresh venv", log)
    inst = AgentInstall(wheels[0], venv, round(t1 - t0, 1), 0.0)
    path = str(inst.bin)
    for tool in ("node", "nodejs", "npm", "npx"):
        assert shutil.which(tool, path=path) is None, f"{tool} is on the install PATH {path}"
    _check([inst.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-index", "--find-links", str(WHEELHOUSE), "--only-binary=:all:", str(wheels[0])],
           "pip install of the agent wheel", log, env=inst.env(), cwd=base)
    return AgentInstall(wheels[0], venv, inst.build_seconds, round(time.monotonic() - t1, 1))
