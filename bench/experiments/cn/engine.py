"""The experiment's own userspace rtpengine on free loopback ports, and its ng client."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

import bencode  # package "bencode.py"

LOOPBACK = "127.0.0.1"
RTPENGINE_BIN = shutil.which("rtpengine") or "/usr/bin/rtpengine"


def _udp_port_free(port: int, host: str = LOOPBACK) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def find_free_port_range(count: int, low: int = 20000, high: int = 60000) -> int:
    rnd = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        base = rnd.randrange(low, high - count) & ~1
        if all(_udp_port_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free UDP port range found")


class RtpEngine:
    """A private userspace rtpengine instance bound to loopback."""

    def __init__(self, ports: int = 400, log_level: int = int(os.environ.get("CN_EXP_LOGLEVEL", "6")), extra_args: Optional[list] = None):
        self.ports = ports
        self.log_level = log_level
        self.extra_args = extra_args or []
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[str] = None
        self._log_file = None
        self.ng_addr = None
        self._sock: Optional[socket.socket] = None
        self._seq = 0

    def start(self) -> "RtpEngine":
        base = find_free_port_range(self.ports + 1)
        self.ng_addr = (LOOPBACK, base + self.ports)  # last port of the range: ng control
        fd, self.log_path = tempfile.mkstemp(prefix="cn_experiment_rtpengine_", suffix=".log")
        self._log_file = os.fdopen(fd, "w")
        # --config-file=none: not Debian's rtpengine.conf (its CLI/HTTP ports would
        # collide with any other rtpengine started from it), as gw/stack.py starts it.
        cmd = [RTPENGINE_BIN, "--config-file=none", "--table=-1", f"--interface={LOOPBACK}",
               f"--listen-ng={LOOPBACK}:{self.ng_addr[1]}",
               f"--port-min={base}", f"--port-max={base + self.ports - 1}",
               "--foreground", "--log-stderr", "--delete-delay=0",
               f"--log-level={self.log_level}", "--num-threads=2",
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((LOOPBACK, 0))
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited early, see {self.log_path}")
            try:
                if self.ng({"command": "ping"}, timeout=0.3, attempts=1).get("result") == "pong":
                    return self
            except TimeoutError:
                pass
        raise RuntimeError("rtpengine did not answer ping")

    def ng(self, msg: dict, timeout: float = 3.0, attempts: int = 3) -> dict:
        """Send one ng command; resend with the same cookie on timeout (rtpengine answers a
        repeated cookie from its cookie cache, so a resend never runs a command twice)."""
        self._seq += 1
        cookie = f"{os.getpid()}_{self._seq}"
        packet = cookie.encode() + b" " + bencode.encode(msg)
        for attempt in range(attempts):
            if attempt:
                print(f"  ng: no reply to {msg.get('command')!r} within {timeout} s, resending",
                      file=sys.stderr, flush=True)
            self._sock.sendto(packet, self.ng_addr)
            end = time.monotonic() + timeout
            while (left := end - time.monotonic()) > 0:
                self._sock.settimeout(left)
                try:
                    data, _ = self._sock.recvfrom(65535)
                except socket.timeout:
                    break
                c, _, body = data.partition(b" ")
                if c.decode() == cookie:
                    return bencode.decode(body)
        raise TimeoutError(f"no ng reply to {msg.get('command')!r}")

    def cpu_seconds(self) -> float:
        """utime+stime of the rtpengine process (all threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        self._log_file.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, keep_log: bool = False) -> None:
        if self._sock:
            self._sock.close()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # only the process we started
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file:
            self._log_file.close()
        if self.log_path and not keep_log:
            os.unlink(self.log_path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(keep_log=bool(exc[0]))
