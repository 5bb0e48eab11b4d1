"""SIPp processes for load: start, wait (with the rusage of the child), read the
statistics CSV (-trace_stat, every 200 ms) and the latency log (-trace_logs)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "sipp"
SOCK_BUF = 4 * 1024 * 1024


@dataclass
class SippResult:
    outgoing: int = 0         # calls created (UAC) / received (UAS)
    successful: int = 0
    failed: int = 0
    retrans: int = 0
    elapsed: float = 0.0      # first to last statistics row, seconds
    launch: float = 0.0       # seconds until the last call was created (UAC)
    cpu: float = 0.0          # SIPp's own utime+stime, seconds
    exit_code: Optional[int] = None
    killed: bool = False


class Sipp:
    def __init__(self, name: str, scenario: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.stat = workdir / f"{name}_stat.csv"
        self.log = workdir / f"{name}_logs.log"
        self.err = workdir / f"{name}.out"
        for p in (self.stat, self.log):
            if p.exists():
                p.unlink()
        self.argv = ["sipp", *args, "-sf", str(SCENARIOS / scenario), "-nostdin",
                     "-trace_stat", "-fd", "200ms", "-stf", str(self.stat),
                     "-buff_size", str(SOCK_BUF)]
        self.popen: Optional[subprocess.Popen] = None
        self.rusage_cpu = 0.0
        self.returncode: Optional[int] = None
        self.killed = False

    def start(self) -> "Sipp":
        with open(self.err, "ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=self.workdir,
                                          start_new_session=True)
        return self

    def _reap(self, flags: int) -> bool:
        assert self.popen is not None
        if self.returncode is not None:
            return True
        try:
            pid, status, ru = os.wait4(self.popen.pid, flags)
        except ChildProcessError:
            self.returncode = self.popen.returncode if self.popen.returncode is not None else -1
            return True
        if pid == 0:
            return False
        self.rusage_cpu = ru.ru_utime + ru.ru_stime
        self.returncode = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.returncode
        return True

    def wait(self, timeout: float) -> bool:
        """True if SIPp exited by itself within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._reap(os.WNOHANG):
                return True
            time.sleep(0.05)
        return self._reap(os.WNOHANG)

    def stop(self) -> None:
        """Stop a SIPp that did not finish (SIGTERM, then SIGKILL)."""
        if self.popen is None or self._reap(os.WNOHANG):
            return
        self.killed = True
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            if self.wait(grace):
                return

    def result(self, expected: int = 0) -> SippResult:
        rows = _rows(self.stat)
        res = SippResult(cpu=self.rusage_cpu, exit_code=self.returncode, killed=self.killed)
        if not rows:
            return res
        last = rows[-1]
        created = "OutgoingCall(C)" if int(last.get("OutgoingCall(C)", 0) or 0) else "IncomingCall(C)"
        res.outgoing = int(last.get(created, 0) or 0)
        res.successful = int(last.get("SuccessfulCall(C)", 0) or 0)
        res.failed = int(last.get("FailedCall(C)", 0) or 0)
        res.retrans = int(last.get("Retransmissions(C)", 0) or 0)
        t0 = _epoch(rows[0]["StartTime"])
        res.elapsed = _epoch(last["CurrentTime"]) - t0
        target = expected or res.outgoing
        # Seconds from the first call to the last one (interpolated between the
        # 200 ms statistics rows): the rate SIPp really held is (target-1)/launch.
        t_first = t_last = None
        prev_t, prev_n = t0, 0
        for row in rows:
            t, n = _epoch(row["CurrentTime"]), int(row.get(created, 0) or 0)
            if t_first is None and n >= 1:
                t_first = prev_t + (1 - prev_n) / (n - prev_n) * (t - prev_t)
            if n >= target:
                frac = (target - prev_n) / (n - prev_n) if n > prev_n else 1.0
                t_last = prev_t + frac * (t - prev_t)
                break
            prev_t, prev_n = t, n
        if t_first is not None and t_last is not None:
            res.launch = max(t_last - t_first, 1e-3)
        else:
            res.launch = res.elapsed
        return res

    def launch_span(self) -> Optional[float]:
        """First to last INVITE sent, seconds, from the latency log (exact)."""
        if not self.log.exists():
            return None
        first = last = None
        with open(self.log, errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) != 10 or parts[0] != "lat":
                    continue
                t = float(parts[2]) + float(parts[3]) / 1e6
                first = t if first is None or t < first else first
                last = t if last is None or t > last else last
        return (last - first) if first is not None and last is not None and last > first else None

    def latencies(self) -> list[tuple[float, float, float]]:
        """(INVITE->100, INVITE->180, INVITE->200) in ms per call, from the `lat`
        log lines (-1: not seen, e.g. a 180 overtaken by the 200)."""
        out = []
        if not self.log.exists():
            return out
        with open(self.log, errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) != 10 or parts[0] != "lat":
                    continue
                v = [float(x) for x in parts[2:]]
                t0 = v[0] * 1e3 + v[1] / 1e3
                out.append(tuple((v[i] * 1e3 + v[i + 1] / 1e3 - t0) if v[i] >= 0 else -1.0
                                 for i in (2, 4, 6)))
        return out


def _epoch(field: str) -> float:
    # "2026-11-25\t03:21:38.144320\t1795576898.144320"
    return float(field.split("\t")[-1])


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f, delimiter=";")
        return [r for r in reader if r.get("CurrentTime")]


def uas(name: str, scenario: str, ip: str, port: int, media_port: int, calls: int,
        workdir: Path, extra: Optional[list[str]] = None) -> Sipp:
    args = ["-i", ip, "-p", str(port), "-mp", str(media_port), "-t", "u1", "-m", str(calls)]
    return Sipp(name, scenario, args + (extra or []), workdir)


def uac(name: str, scenario: str, remote: str, ip: str, port: int, media_port: int, rate: float,
        calls: int, workdir: Path, *, inf: Optional[Path] = None, rsa: Optional[str] = None,
        hold_ms: int = 0, limit: int = 0, timeout_s: int = 0, trace_logs: bool = False,
        extra: Optional[list[str]] = None) -> Sipp:
    args = [remote, "-i", ip, "-p", str(port), "-mp", str(media_port), "-t", "u1",
            "-r", f"{rate:g}", "-rp", "1000", "-m", str(calls), "-d", str(hold_ms)]
    if inf is not None:
        args += ["-inf", str(inf)]
    if rsa:
        args += ["-rsa", rsa]
    if limit:
        args += ["-l", str(limit)]
    if timeout_s:
        # Whole run bounded; a call without any answer fails after 8 s.
        args += ["-timeout", f"{timeout_s}s", "-timeout_error", "-recv_timeout", "8000"]
    if trace_logs:
        args += ["-trace_logs", "-log_file", str(workdir / f"{name}_logs.log")]
    return Sipp(name, scenario, args + (extra or []), workdir)


def write_inf(path: Path, users: list[str]) -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(f"{u}\n" for u in users))
    return path
