"""Forked media workers, shared by bench/rtp.py (plain RTP) and bench/media_gen.py
(the WebRTC section's PBX legs): the legs split over processes that all start
sending at one moment, and what each sends back at its end."""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any, Callable, Sequence

START_DELAY_S = 0.3   # every worker forked and waiting before the first packet


def start(target: Callable[..., None], legs: Sequence[Any], procs: int,
          *args: Any) -> tuple[float, list]:
    """Fork up to `procs` workers, each running target(its legs, t_start, *args,
    conn); returns t_start (time.monotonic) and the workers for results()."""
    procs = max(1, min(procs, len(legs)))
    ctx = mp.get_context("fork")
    t_start = time.monotonic() + START_DELAY_S
    workers = []
    for k in range(procs):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=target, args=(legs[k::procs], t_start, *args, child), daemon=True)
        p.start()
        child.close()
        workers.append((p, parent))
    return t_start, workers


def results(workers: list, timeout: float) -> list[Any]:
    """What each worker sent back; one silent for `timeout` is killed and counts for nothing."""
    out = []
    for p, parent in workers:
        if parent.poll(timeout):
            out.append(parent.recv())
        p.join(5)
        if p.is_alive():
            p.kill()
    return out
