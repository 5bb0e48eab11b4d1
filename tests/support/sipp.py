"""Run the SIPp scenarios of tests/sipp/ with the defaults their headers document.

SIPp refuses to start when a [key] used by a scenario is not given with -key,
so every scenario lists its keys in its header comment as

    @key name default   description
    @args -option value (extra SIPp options the scenario needs)

and this module passes those defaults unless the test overrides them:

    with SippRun("pbx_uas.xml", port=pbx.port, keys={"steps": "hold,resume"},
                 log_dir=tmp_path) as pbx:
        ...  # drive the phone
        assert pbx.wait(10) == 0, pbx.errors()
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

SIPP_DIR = Path(__file__).resolve().parent.parent / "sipp"


def scenario_path(name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else SIPP_DIR / name


def scenario_keys(name: str) -> dict[str, str]:
    """{key: default} from the '@key name default' lines of the scenario header."""
    text = scenario_path(name).read_text(encoding="latin-1")
    return dict(re.findall(r"^\s*@key\s+(\S+)\s+(\S+)", text, re.M))


def scenario_args(name: str) -> list[str]:
    text = scenario_path(name).read_text(encoding="latin-1")
    return [a for line in re.findall(r"^\s*@args\s+([^(\n]+)", text, re.M) for a in shlex.split(line)]


def command(name: str, *, port: int, remote: str | None = None, local_ip: str = "127.0.0.1",
            keys: dict[str, object] | None = None, service: str | None = None, calls: int | None = 1,
            media_port: int | None = None, rtp_echo: bool = False, log_dir: Path | None = None,
            timeout_s: float | None = 60, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The sipp argv.  remote = 'host:port' for UAC scenarios (None for UAS ones)."""
    defaults = scenario_keys(name)
    unknown = set(keys or {}) - set(defaults)
    if unknown:
        raise ValueError(f"{name} has no keys {sorted(unknown)}; it takes {sorted(defaults)}")
    merged = {**defaults, **{k: str(v) for k, v in (keys or {}).items()}}
    argv = ["sipp"] + ([remote] if remote else [])
    argv += ["-sf", str(scenario_path(name)), "-i", local_ip, "-p", str(port), "-t", "u1", "-nostdin"]
    argv += scenario_args(name)
    for k, v in merged.items():
        argv += ["-key", k, v]
    if service is not None:
        argv += ["-s", service]
    if calls is not None:
        argv += ["-m", str(calls)]
    if media_port is not None:
        argv += ["-mp", str(media_port)]
    if rtp_echo:
        argv.append("-rtp_echo")
    if timeout_s:
        argv += ["-timeout", f"{int(timeout_s)}s", "-timeout_error"]
    if log_dir is not None:
        stem = Path(name).stem
        argv += ["-trace_msg", "-message_file", str(log_dir / f"{stem}_{port}_messages.log"),
                 "-trace_err", "-error_file", str(log_dir / f"{stem}_{port}_errors.log")]
    return argv + list(extra)


class SippRun:
    """A SIPp process started from command(); a context manager that stops it."""

    def __init__(self, name: str, **kw) -> None:
        self.name = name
        self.log_dir: Path | None = kw.get("log_dir")
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.argv = command(name, **kw)
        self.port = kw["port"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SippRun":
        out = open(self._file("screen"), "w") if self.log_dir else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, timeout: float) -> int:
        """Exit code: 0 all calls succeeded, 1 some failed, 97 internal stop, 99 no call, 255 fatal."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None

    def _file(self, kind: str) -> Path:
        assert self.log_dir is not None
        suffix = "screen.log" if kind == "screen" else f"{kind}.log"
        return self.log_dir / f"{Path(self.name).stem}_{self.port}_{suffix}"

    def _read(self, kind: str) -> str:
        if self.log_dir is None:
            return ""
        p = self._file(kind)
        return p.read_text(errors="replace") if p.exists() else ""

    def messages(self) -> str:
        return self._read("messages")

    def errors(self) -> str:
        return self._read("errors")

    def cmdline(self) -> str:
        return shlex.join(self.argv)

    def __enter__(self) -> "SippRun":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
