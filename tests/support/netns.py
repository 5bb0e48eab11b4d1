"""A network namespace with nothing but loopback, for tests that must send
messages carrying foreign addresses (RFC 4475 uses example.com and 192.0.2.x
in Via, Contact and Route): the gateway runs inside it, so any reply or
relay toward such an address has no route and never leaves the machine.

Daemons run inside with `ip netns exec NAME ...` (it execs the program, so
the pid is the daemon's own); this test process enters the namespace for a
block of code with `with ns.entered():` (setns on the calling thread), and
every socket it opens there belongs to the namespace for good."""
from __future__ import annotations

import ctypes
import os
import subprocess
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetNs:
    def __init__(self, name: str) -> None:
        self.name = name
        self.created = False

    def create(self) -> "NetNs":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=10)
        self.created = True
        self.run(["ip", "link", "set", "lo", "up"])
        return self

    def delete(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
            self.created = False

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str]) -> str:
        return subprocess.run(self.argv(argv), check=True, capture_output=True, text=True,
                              timeout=10).stdout

    def interfaces(self) -> list[str]:
        """Names of the namespace's network interfaces (only `lo` is expected)."""
        out = self.run(["ip", "-o", "link", "show"])
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]

    def routes(self) -> str:
        return self.run(["ip", "route", "show", "table", "all"])

    @contextmanager
    def entered(self) -> Iterator[None]:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(target)
