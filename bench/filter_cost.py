"""What the nftables CN filter itself costs per packet, measured where it runs.

The filter is evaluated in the kernel, on the receive path of every UDP packet
(prerouting hook), so none of it shows in rtpengine's CPU time. Over loopback
that receive path runs inside the sender's sendto() (softirq in the sender's
context; this kernel charges it to the sender: no IRQ time accounting), so a
sender of RTP PT 0 packets to a port of the filtered range spends the filter's
cost more per packet with the table in place than without. One table's few
hundred ns hide in the noise of a ~4 us Python send on a shared box, so the
figure comes from AMPLIFY copies of the shipped chain (rtpengine/cn-filter.sh's
base chain, hook and rule, each traversed by every packet) divided by AMPLIFY;
the shipped table alone is measured too, as a cross-check. Rounds alternate
none / shipped / amplified in the bench's network namespace; medians; a drained
receiver keeps delivery the same.
"""
from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import struct
import subprocess
import time
from typing import Callable

from gw import cnfilter

PACKET = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + b"\xfe" * 160   # RTP PT 0, 172 bytes
AMPLIFY = 50
AMP_TABLE = "gw_cn_bench_amplified"


def _drain(sock: socket.socket, stop) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            sock.recv(2048)
        except OSError:
            continue


def _blast(sock: socket.socket, to: tuple[str, int], count: int) -> float:
    """ns of the sending thread's CPU per packet."""
    t0 = time.thread_time()
    for _ in range(count):
        sock.sendto(PACKET, to)
    return 1e9 * (time.thread_time() - t0) / count


def _amplified(ports: tuple[int, int], wrap: Callable[[list[str]], list[str]], on: bool) -> None:
    if not on:
        subprocess.run(wrap(["nft", "delete", "table", "inet", AMP_TABLE]), capture_output=True)
        return
    shipped = cnfilter.ruleset(ports)
    chain = shipped[shipped.index("\tchain prerouting {"):shipped.rindex("}")].rstrip()   # the chain, as shipped
    chains = "\n".join(chain.replace("chain prerouting", f"chain prerouting{i}", 1) for i in range(AMPLIFY))
    text = f"table inet {AMP_TABLE} {{\n{chains}\n}}\n"
    subprocess.run(wrap(["nft", "-f", "-"]), input=text, text=True, check=True, capture_output=True)


def measure(ports: tuple[int, int], wrap: Callable[[list[str]], list[str]], port: int,
            count: int = 30000, rounds: int = 7) -> dict:
    """The caller is in the namespace the filter goes into; `port` lies in
    `ports` and nothing else uses it."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", port))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    drainer = ctx.Process(target=_drain, args=(rx, stop), daemon=True)
    drainer.start()
    to = ("127.0.0.1", port)
    none, shipped, amp = [], [], []
    try:
        _blast(tx, to, count)                               # warm caches
        for _ in range(rounds):
            none.append(_blast(tx, to, count))
            cnfilter.install(ports, "make bench filter cost", wrap)
            try:
                shipped.append(_blast(tx, to, count))
            finally:
                cnfilter.remove(ports, wrap)
            _amplified(ports, wrap, True)
            try:
                amp.append(_blast(tx, to, count))
            finally:
                _amplified(ports, wrap, False)
    finally:
        stop.set()
        drainer.join(2)
        if drainer.is_alive():
            drainer.kill()
        rx.close()
        tx.close()
    base = statistics.median(none)
    return {"ns_per_packet": max((statistics.median(amp) - base) / AMPLIFY, 0.0),
            "ns_shipped_direct": statistics.median(shipped) - base,
            "send_ns_without": base, "send_ns_with": statistics.median(shipped),
            "send_ns_amplified": statistics.median(amp), "rounds": rounds, "count": count}
