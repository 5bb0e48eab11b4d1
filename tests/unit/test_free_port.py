"""gw/stack.free_port: the ports the test stacks listen on."""
from __future__ import annotations

import socket

from gw import stack


def _ephemeral() -> tuple[int, int]:
    lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    return int(lo), int(hi)


def test_ports_come_from_below_the_ephemeral_range_and_never_twice():
    """An outgoing socket can take a port of the kernel's ephemeral range between
    the check and the daemon's bind (a PBX emulator once failed with "Address
    already in use" that way); and two stacks asked in a row must not get the
    same port before either has bound it."""
    lo, _ = _ephemeral()
    ports = [stack.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(stack.PORT_BAND[0] <= p < stack.PORT_BAND[1] < lo for p in ports)


def test_a_port_bound_for_either_protocol_is_skipped(monkeypatch):
    picks = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", stack.free_port()))
        udp.bind(("127.0.0.1", stack.free_port()))
        busy = [tcp.getsockname()[1], udp.getsockname()[1]]
        free = stack.free_port()
        stack._handed.discard(("127.0.0.1", free))
        candidates = iter(busy + [free])
        monkeypatch.setattr(stack.random, "randrange", lambda *a: picks.append(a) or next(candidates))
        assert stack.free_port() == free and len(picks) == 3
        assert not stack.udp_port_free(busy[1])
