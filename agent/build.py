#!/usr/bin/env python3
"""Builds the agent's artefacts; Python's standard library only (agent/install.sh
runs it with Debian's python3 before any venv exists).

  build.py bundle [--force]      the JsSIP phone bundle, exactly as web/package-lock.json
                                 locks it (npm ci, esbuild), into gateway_agent/static/
                                 with its source map and versions.json; skipped when
                                 nothing changed
  build.py wheel [--dist DIR] [--no-platform-check]
                                 a clean bundle (npm ci, esbuild), then the wheel
                                 DIR/webrtc_gateway_agent-<version>-py3-none-any.whl
                                 (make agent-package; DIR defaults to dist/), then a
                                 check that pip finds wheels of every dependency for
                                 Windows, macOS and Linux (no compiler on an agent's PC)
  build.py wheelhouse --dest DIR the dependencies as wheels for this machine, so the
                                 tests install the agent wheel with pip alone, offline

Node.js and npm are needed here, at package time only: the wheel carries the
built bundle, so an agent's PC installs it with pip alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

AGENT = Path(__file__).resolve().parent
ROOT = AGENT.parent
WEB = AGENT / "web"
PACKAGE = AGENT / "gateway_agent"
STATIC = PACKAGE / "static"
LOCK = WEB / "package-lock.json"
BUILT = ("phone.js", "phone.js.map")
# What a wheel must hold: the connector, its OS layer and the page with its bundle.
WHEEL_MUST_HOLD = ("gateway_agent/cli.py", "gateway_agent/bridge.py", "gateway_agent/desktop.py",
                   "gateway_agent/platforms/windows.py", "gateway_agent/platforms/macos.py",
                   "gateway_agent/platforms/linux.py", "gateway_agent/static/phone.html",
                   "gateway_agent/static/phone.css", "gateway_agent/static/phone.js",
                   "gateway_agent/static/phone.js.map", "gateway_agent/static/versions.json")


# Desktops the dependencies must have wheels for (pip --platform tags; macOS: Apple
# silicon and Intel), checked for one current CPython.
DESKTOP_PLATFORMS = {
    "windows": ["win_amd64"],
    "macos-arm64": ["macosx_11_0_arm64"],
    "macos-x86_64": ["macosx_10_13_x86_64"],
    "linux": ["manylinux2014_x86_64", "manylinux_2_28_x86_64"],
}
CHECK_PYTHON = "3.12"


class BuildError(RuntimeError):
    pass


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    print(f"build.py: {' '.join(argv)}", flush=True)
    try:
        subprocess.run(argv, cwd=cwd, check=True, env=env)
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]} not found: building the phone bundle needs Node.js and npm "
                         "(agent/install.sh installs them on Debian)") from exc
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{' '.join(argv)} failed (exit {exc.returncode})") from exc


def _reproducible_env() -> dict[str, str]:
    """Zip timestamps from the last commit (SOURCE_DATE_EPOCH): one commit, one wheel, byte for byte."""
    env = dict(os.environ)
    if "SOURCE_DATE_EPOCH" not in env:
        try:
            env["SOURCE_DATE_EPOCH"] = subprocess.run(
                ["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True,
                check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass    # not a git checkout: build-time timestamps
    return env


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def version() -> str:
    m = re.search(r'^__version__ = "([^"]+)"', (PACKAGE / "__init__.py").read_text(), re.M)
    if not m:
        raise BuildError("no __version__ in gateway_agent/__init__.py")
    return m.group(1)


def lock_versions() -> dict:
    """What web/package-lock.json resolves: the bundle's packages and the build tools."""
    lock = json.loads(LOCK.read_text())
    runtime, tools = {}, {}
    for key, info in sorted(lock.get("packages", {}).items()):
        if not key.startswith("node_modules/"):
            continue
        name = key[len("node_modules/"):]
        if info.get("optional") and info.get("dev"):
            continue        # esbuild's binary for other platforms
        (tools if info.get("dev") else runtime)[name] = info.get("version")
    return {"runtime": runtime, "build": tools}


def write_versions() -> dict:
    found = lock_versions()
    data = {
        "gateway_agent": version(),
        "jssip": found["runtime"].get("jssip"),
        "esbuild": found["build"].get("esbuild"),
        "lockfile_sha256": _sha256(LOCK),
        "packages": found["runtime"],          # what phone.js is made of
        "build_tools": found["build"],
        "bundle": {name: {"sha256": _sha256(STATIC / name), "bytes": (STATIC / name).stat().st_size}
                   for name in BUILT},
    }
    (STATIC / "versions.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def _stale() -> bool:
    out = STATIC / "phone.js"
    if not all((STATIC / n).exists() for n in (*BUILT, "versions.json")):
        return True
    newest = max(p.stat().st_mtime for p in [LOCK, WEB / "package.json", *(WEB / "src").rglob("*")])
    return newest > out.stat().st_mtime


def bundle(force: bool = False, clean: bool = False) -> dict:
    """npm ci (when the lock changed, or always with clean), esbuild, versions.json."""
    stamp = WEB / "node_modules" / f".agent-lock-{_sha256(LOCK)[:12]}"
    if clean or not stamp.exists():
        _run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], WEB)
        stamp.touch()
    if force or clean or _stale():
        for name in BUILT:
            (STATIC / name).unlink(missing_ok=True)
        _run(["npm", "run", "--silent", "build"], WEB)
    missing = [n for n in BUILT if not (STATIC / n).exists()]
    if missing:
        raise BuildError(f"esbuild did not write {missing} into {STATIC}")
    return write_versions()


def dependencies() -> list[str]:
    return list(tomllib.loads((AGENT / "pyproject.toml").read_text())["project"]["dependencies"])


def wheel(dist: Path) -> Path:
    """A clean bundle, then the wheel, built from a copy of agent/ holding only
    what ships (no node_modules, no stale build/ left from an earlier run), with
    the project venv's setuptools (no build isolation: no download at build time)."""
    found = bundle(clean=True)
    dist.mkdir(parents=True, exist_ok=True)
    name = f"webrtc_gateway_agent-{version()}-py3-none-any.whl"
    (dist / name).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="gateway-agent-build-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for f in ("pyproject.toml", "README.md"):
            shutil.copy2(AGENT / f, src / f)
        shutil.copytree(PACKAGE, src / "gateway_agent",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp"))
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
              "--wheel-dir", str(dist), str(src)], ROOT, env=_reproducible_env())
    whl = dist / name
    if not whl.exists():
        raise BuildError(f"pip wheel did not write {whl}")
    check_wheel(whl, found)
    print(f"build.py: {whl} ({whl.stat().st_size} bytes, sha256 {_sha256(whl)}; "
          f"JsSIP {found['jssip']}, bundle sha256 {found['bundle']['phone.js']['sha256'][:16]}…)")
    return whl


def check_wheel(whl: Path, found: dict) -> None:
    """The wheel holds the connector and the very bundle just built, and no Node.js."""
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        missing = [n for n in WHEEL_MUST_HOLD if n not in names]
        if missing:
            raise BuildError(f"{whl.name} lacks {missing}")
        stray = [n for n in names if "node_modules" in n or n.endswith((".mjs", ".ts"))]
        if stray:
            raise BuildError(f"{whl.name} holds build-time files {stray[:5]}")
        shipped = hashlib.sha256(z.read("gateway_agent/static/phone.js")).hexdigest()
        if shipped != found["bundle"]["phone.js"]["sha256"]:
            raise BuildError(f"{whl.name}: phone.js is not the bundle just built")
        entry = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        if not entry or "gateway-agent = gateway_agent.cli:main" not in z.read(entry[0]).decode():
            raise BuildError(f"{whl.name}: no gateway-agent command")


def check_platforms(whl: Path) -> None:
    """pip resolves the wheel's dependencies to wheels only (--only-binary) for
    each desktop: what an agent's PC installs needs no compiler and no build step."""
    for desktop, tags in DESKTOP_PLATFORMS.items():
        with tempfile.TemporaryDirectory(prefix="gateway-agent-deps-") as tmp:
            argv = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                    "--python-version", CHECK_PYTHON, "--implementation", "cp", "--dest", tmp]
            for tag in tags:
                argv += ["--platform", tag]
            _run(argv + [str(whl)], ROOT)
            got = sorted(p.name for p in Path(tmp).glob("*.whl") if p.name != whl.name)
            print(f"build.py: {desktop} (CPython {CHECK_PYTHON}): {len(got)} dependency wheels: "
                  + ", ".join(got), flush=True)


def wheelhouse(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
          "--dest", str(dest), *dependencies()], ROOT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agent/build.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("bundle")
    b.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    w = sub.add_parser("wheel")
    w.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the wheel goes (dist/)")
    w.add_argument("--no-platform-check", action="store_true",
                   help="skip checking for Windows/macOS/Linux dependency wheels (needs the index)")
    h = sub.add_parser("wheelhouse")
    h.add_argument("--dest", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.what == "bundle":
            found = bundle(force=args.force)
            print(f"build.py: bundle {STATIC / 'phone.js'} (JsSIP {found['jssip']})")
        elif args.what == "wheelhouse":
            wheelhouse(args.dest.resolve())
        else:
            whl = wheel(args.dist.resolve())
            if not args.no_platform_check:
                check_platforms(whl)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
