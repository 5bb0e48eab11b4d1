"""What a step measures besides SIPp's own counts: CPU time of each daemon from
/proc (utime+stime of a process, its threads and children), how busy the whole
box is, the kernel's UDP receive-buffer drops; and the machine for the report."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU time (user + system) of a process and all its threads, seconds; 0 if it
    is gone. From each thread's /proc/<pid>/task/<tid>/schedstat (nanoseconds: the
    same time utime+stime counts in clock ticks); /proc/<pid>/stat where absent."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
        for tid in tids:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (Kamailio forks its workers from the main process)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in parents.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu(pid: int) -> float:
    return proc_cpu(pid) + sum(proc_cpu(c) for c in children_of(pid))


def idle_rate(cpu: Callable[[], dict[str, float]], seconds: float = 2.0) -> dict[str, float]:
    """CPU seconds per second each component uses with no load (taken off every step)."""
    a = cpu()
    time.sleep(seconds)
    b = cpu()
    return {k: max(b[k] - a[k], 0.0) / seconds for k in a}


def box_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v) - idle, sum(v)
    except (OSError, ValueError):
        return 0, 0


def busy(a: tuple[int, int], b: tuple[int, int]) -> float:
    return (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else 0.0


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped because a socket's receive buffer was full
    (all sockets on the box: a proxy that falls behind shows up here first)."""
    try:
        rows = [line.split() for line in open("/proc/net/snmp") if line.startswith("Udp:")]
        return int(dict(zip(rows[0][1:], rows[1][1:])).get("RcvbufErrors", 0))
    except (OSError, IndexError, ValueError):
        return 0


def machine_info() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def ver(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip().splitlines()[0].strip()
        except Exception:  # noqa: BLE001
            return "?"
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except Exception:  # noqa: BLE001
        pass
    return {
        "cpu": model or platform.processor() or "?",
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": _os_release(),
        "kamailio": ver(["kamailio", "-v"]).replace("version: ", ""),
        "rtpengine": ver(["rtpengine", "--version"]),
        "redis": ver(["redis-server", "--version"]).split(" sha=")[0],
        "sipp": ver(["sipp", "-v"]),
        "python": platform.python_version(),
    }


def _os_release() -> str:
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()
