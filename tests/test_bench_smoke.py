"""`make bench` harness, smallest step (BENCH_SMOKE=1): both stacks (KEMI app and
bench/kamailio-native.cfg) start, every flow (phone->PBX and PBX->phone calls,
REGISTER with the binding in Redis, latency against a direct call, media relay)
runs at 10/s for a second, and the table and RESULTS file come out. The real
numbers come from `make bench`, not from this test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    env = dict(os.environ, BENCH_SMOKE="1", BENCH_OUT=str(out), BENCH_RUN_DIR=str(tmp_path / "run"),
               BENCH_KEEP="1")
    proc = subprocess.run([sys.executable, "-m", "bench"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # The table, printed and written, with a figure for each variant and flow.
    for label in ("calls/s phone->PBX", "calls/s PBX->phone", "REGISTER/s", "added latency INVITE->180",
                  "CPU us per call phone->PBX", "relayed G.711 calls with 0 loss"):
        assert label in proc.stdout, log[-6000:]
    md = out.read_text()
    assert "## Summary" in md and "Machine:" in md and "kernel" in md
    for row in md.splitlines():
        if row.startswith(("| calls/s", "| REGISTER/s")):
            kemi, native = row.split("|")[2].strip(), row.split("|")[3].strip()
            # 10/s is nothing: both variants must carry it cleanly (a rate with "+":
            # no failing step was found).
            assert kemi.startswith("10"), row
            assert native.startswith("10"), row
    # The REGISTER flow left the same binding record in Redis from both variants.
    assert "- kemi: `{" in md and "- native: `{" in md
    # Media: packets went through rtpengine both ways, none lost.
    assert "| 5 | 1 |" in md and "0.0000%" in md
    # Connections: the agents of the smoke run all registered and took their calls.
    assert "## Connections: one node full of agents" in md
    assert "| WebSocket agents registered (200 at" in md and "| 200 in " in md
    assert "| calls to random connected agents, failed | 0 of 20 |" in md


def test_bench_webrtc_media_smoke(tmp_path: Path) -> None:
    """The WebRTC media section alone at its smallest (4 calls, 2 s): real ICE +
    DTLS-SRTP phone legs through one rtpengine, for each variant; Janus too when
    it is installed (make bench-deps). The figures come from `make bench`; here:
    every call carried audio both ways, PT 13 reached the phones only on the
    plain relay (and through Janus), and only the transcoder path transcodes."""
    env = dict(os.environ, BENCH_SMOKE="1", BENCH_RUN_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "bench.media_webrtc"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 15 and cells[0] in ("ramp", "compare"):
            rows.setdefault(cells[1], []).append(cells)
    janus = Path("/usr/bin/janus").exists()
    assert set(rows) == {"filter", "plain", "transcoder"} | ({"janus"} if janus else set()), log[-6000:]
    for variant, steps in rows.items():
        for cells in steps:
            lost, sent = map(int, cells[7].split("/"))
            assert sent > 0 and lost == 0, (variant, cells, log[-4000:])
            pt13 = int(cells[9])
            assert (pt13 > 0) == (variant in ("plain", "janus")), (variant, cells)
    assert "| gateway, CN transcoder (fallback) |" in proc.stdout
    transcoding = {line.split("|")[1].strip(): line.split("|")[-2].strip()
                   for line in proc.stdout.splitlines() if line.startswith("| gateway,")}
    assert transcoding == {"gateway, CN filter (product)": "0", "gateway, plain relay, no CN handling": "0",
                           "gateway, CN transcoder (fallback)": "4"}, transcoding
    assert "nftables filter itself" in proc.stdout
