"""Where the time goes, while phone -> PBX calls run at ~70 % of the KEMI peak:
py-spy (--native) on the busiest KEMI worker, perf (when installed, BENCH_PERF)
over all Kamailio processes of each stack; and the summaries the report shows."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.measure import proc_cpu
from bench.settings import ROOT
from bench.stacks import BenchStack
from bench.steps import sip_step

if TYPE_CHECKING:
    from bench.run import Bench


def profile(bench: "Bench") -> dict:
    """py-spy on the busiest KEMI worker, then perf (if installed) over all Kamailio
    processes; perf again on the native stack at the same rate, for comparison."""
    s = bench.stacks["kemi"]
    peak = bench.results["peaks"].get(("out", "kemi"))
    rate = max(round((peak.rate if peak else bench.cfg.call_start) * 0.7), 10)
    pyspy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    perf = shutil.which("perf") if os.environ.get("BENCH_PERF", "1") == "1" else None
    secs = 8 if bench.cfg.mode == "full" else 6
    bench.log(f"=== profile: phone->PBX at {rate}/s: py-spy on the busiest KEMI worker"
              + (", perf on all Kamailio processes" if perf else ""))
    out: dict = {"rate": rate, "perf": {}}

    def spy() -> None:
        time.sleep(1.5)
        _pyspy_busiest_worker(s, pyspy, bench.cfg.run_dir / "pyspy.raw", out)
        if perf:
            out["perf"]["kemi"] = perf_split(perf, s, 2, bench.cfg.run_dir / "perf-kemi.data")

    th = threading.Thread(target=spy)
    th.start()
    out["step"] = sip_step(bench, "out", "kemi", rate, seconds=secs)
    th.join()
    out["summary"] = summarize_pyspy(Path(out.get("raw", "/nonexistent")))
    if perf and "native" in bench.stacks:
        n = bench.stacks["native"]

        def perf_native() -> None:
            time.sleep(1.5)
            out["perf"]["native"] = perf_split(perf, n, 2, bench.cfg.run_dir / "perf-native.data")
        th = threading.Thread(target=perf_native)
        th.start()
        out["native_step"] = sip_step(bench, "out", "native", rate, seconds=max(secs - 3, 4))
        th.join()
    return out


def _pyspy_busiest_worker(s: BenchStack, pyspy: str, raw: Path, out: dict) -> None:
    """py-spy record (3 s) on the Kamailio worker that used the most CPU over 0.5 s."""
    workers = s.kamailio_workers()
    a = {p: proc_cpu(p) for p in workers}
    time.sleep(0.5)
    b = {p: proc_cpu(p) for p in workers}
    busy = sorted(workers, key=lambda p: b[p] - a[p], reverse=True)
    out["worker_cpu_share"] = {p: round((b[p] - a[p]) / 0.5, 2) for p in busy[:6]}
    cmd = [pyspy, "record", "--pid", str(busy[0]), "--duration", "3", "--rate", "200",
           "--format", "raw", "--output", str(raw), "--native"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not raw.exists():
        cmd.remove("--native")
        cmd.append("--nonblocking")
        p = subprocess.run(cmd, capture_output=True, text=True)
    out.update(pid=busy[0], cmd=" ".join(cmd[:1] + ["record"] + cmd[2:]).replace(str(ROOT) + "/", ""),
               raw=str(raw), stderr=p.stderr[-500:])


def perf_split(perf: str, s: BenchStack, seconds: float, data: Path) -> dict:
    """perf record (CPU samples) over Kamailio's processes; share of samples per
    binary/library and the top symbols."""
    pids = ",".join(str(p) for p in [s.kamailio.pid] + s.kamailio_workers())
    rec = subprocess.run([perf, "record", "-q", "-F", "499", "-p", pids, "-o", str(data), "--",
                          "sleep", str(seconds)], capture_output=True, text=True)
    if rec.returncode != 0 or not data.exists():
        return {"error": (rec.stderr or rec.stdout)[-300:]}

    def report(sort: str, top: int) -> list[tuple[str, float]]:
        r = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
                            "-g", "none", "--percent-limit", "0.5"], capture_output=True, text=True)
        rows = []
        for line in r.stdout.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "%" not in line:
                continue
            pct, _, rest = line.partition("%")
            try:
                rows.append((" ".join(rest.split()), float(pct)))
            except ValueError:
                continue
        return rows[:top]
    return {"dso": report("dso", 12), "sym": report("dso,sym", 15)}


PY_SYSCALL_WAIT = {"poll", "recvfrom", "recv", "epoll_wait", "select", "__poll"}


def _category(frames: list[str]) -> str:
    """Where one py-spy --native sample was: waiting, or which kind of CPU work."""
    leaf = frames[-1]
    leaf_name = leaf.split(" (")[0]
    leaf_file = leaf.rpartition(" (")[2].rstrip(")")
    in_rtp = any("(rtpengine.so)" in f for f in frames)
    in_py = any(".py:" in f or f.endswith(".py)") for f in frames)
    if leaf_name in PY_SYSCALL_WAIT:
        if in_rtp:
            return "wait: rtpengine ng reply (poll/recv)"
        if not in_py:
            return "wait: idle, no SIP message (recvfrom)"
    if ".py" in leaf_file:
        base = leaf_file.split(":")[0].rsplit("/", 1)[-1]
        if "/kemi/" in leaf_file or leaf_file.startswith("kemi/"):
            return f"cpu: Python, kemi/{base}"
        if "prometheus_client" in leaf_file:
            return "cpu: Python, prometheus_client (metrics)"
        return f"cpu: Python, {base}"
    if "libpython" in leaf_file:
        return "cpu: Python interpreter (libpython)"
    if "app_python3.so" in leaf_file:
        return "cpu: KEMI glue (app_python3.so)"
    if in_rtp:
        return "cpu: rtpengine module (ng encode/send/parse, incl. syscalls)"
    if leaf_file.startswith("libc") and leaf_name in ("sendto", "sendmsg", "writev", "write", "send"):
        return "cpu: syscall " + leaf_name + (" (called from Python)" if in_py else "")
    return "cpu: Kamailio C (core/tm/rr/sanity/...)" + (" called from Python" if in_py else "")


def summarize_pyspy(raw: Path, top: int = 18) -> dict:
    """Self and inclusive sample shares from py-spy's raw (collapsed stack) output,
    and a breakdown by kind of work (waiting vs CPU: Python, Kamailio C, syscalls)."""
    if not raw.exists():
        return {}
    total = 0
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    cats: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack_s, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack_s.split(";") if f]
        if not frames:
            continue
        total += n
        names = [_frame_name(f) for f in frames]
        self_t[names[-1]] = self_t.get(names[-1], 0) + n
        for name in set(names):
            incl[name] = incl.get(name, 0) + n
        c = _category(frames)
        cats[c] = cats.get(c, 0) + n
    if not total:
        return {}

    def pct(d: dict[str, int], of: int = total) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / of, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    busy = sum(v for k, v in cats.items() if k.startswith("cpu:"))
    return {"samples": total, "self": pct(self_t), "inclusive": pct(incl),
            "categories": pct(cats, total), "cpu_categories": pct({k: v for k, v in cats.items()
                                                                   if k.startswith("cpu:")}, busy or 1),
            "busy_samples": busy}


def _frame_name(frame: str) -> str:
    # "Gateway.RELAY (kemi/app.py:97)" -> "Gateway.RELAY (app.py)"; native: "fn (libx.so)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.split(":")[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name
