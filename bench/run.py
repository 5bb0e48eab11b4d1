"""`make bench`: capacity of the gateway (KEMI) next to the same routing in native
Kamailio cfg, on loopback, in one run. Prints a table and writes bench/RESULTS.md.

1. calls/s, phone -> PBX and PBX -> phone (Redis lookup): rate stepped up until
   more than 0.1 % of calls fail (or SIPp cannot hold the rate); highest clean rate
2. REGISTER/s forwarded to the PBX emulator, binding written to Redis
3. latency added by the gateway at half the KEMI peak: INVITE->100 and
   INVITE->180 at the caller, minus the same with the UAS called directly
4. CPU microseconds per call / per REGISTER in Kamailio, rtpengine, Redis (/proc)
5. KEMI/native ratios
6. media: N concurrent relayed G.711 calls, largest N with 0 loss (plain RTP both legs)
7. REGISTER storm over WebSockets (bench/regstorm.py, test wsreg): 100 phones
   connect and register, then send 10 REGISTERs each at once; Kamailio CPU per
   REGISTER of the storm and per connecting phone, KEMI next to native
8. connections (bench/connections.py): 10,000 WebSocket agents registering 200
   at a time, Kamailio memory per connected agent, idle CPU with keepalives,
   calls to random agents while all are connected
9. WebRTC media (bench/media_webrtc.py): ICE + DTLS-SRTP phones, CN from the PBX; the
   CN filter path next to a plain relay, the transcoder fallback and Janus

Settings (environment; BENCH_QUICK=1 for a ~2 minute run, BENCH_SMOKE=1 for the
few-seconds harness check):
  BENCH_STEP_S, BENCH_HOLD_MS, BENCH_CALL_START, BENCH_REG_START, BENCH_FACTOR,
  BENCH_REFINE, BENCH_MAX_STEPS, BENCH_MAX_RATE, BENCH_RETRY, BENCH_LAT_S,
  BENCH_LAT_ROUNDS (fixed-rate runs per variant at half the peak, alternating, pooled: 3),
  BENCH_AB_ROUNDS (side-by-side rounds, test ab, bench/abcpu.py: 4),
  BENCH_MEDIA_CALLS, BENCH_MEDIA_S, BENCH_MEDIA_PROCS, BENCH_DNS, BENCH_CHILDREN,
  BENCH_SHM_MB, BENCH_LOG_LEVEL, BENCH_VARIANTS, BENCH_TESTS, BENCH_PROFILE,
  BENCH_OUT, BENCH_RUN_DIR, BENCH_KEEP, BENCH_PAUSE_S, BENCH_PERF,
  BENCH_KAMAILIO_ARGS (extra Kamailio options, both variants, e.g. "-x tlsf"),
  BENCH_KEMI_PATCHES (diffs applied to a copy of kemi/ for the KEMI variant),
  BENCH_WSREG (connections x REGISTERs each, "100x10"), BENCH_WSREG_RUNS,
  BENCH_CONN_AGENTS, BENCH_CONN_CONCURRENCY, BENCH_CONN_CALLS,
  BENCH_CONN_CALL_CONCURRENCY, BENCH_CONN_IDLE_S, BENCH_CONN_SETTLE_S,
  BENCH_WEBRTC_CALLS, BENCH_WEBRTC_N, BENCH_WEBRTC_S, BENCH_WEBRTC_ROUNDS, BENCH_WEBRTC_VARIANTS,
  BENCH_WEBRTC_COST_ROUNDS (the WebRTC media section; `python -m bench.media_webrtc` runs it alone)
`python -m bench.abcpu` (bench/abcpu.py) runs the KEMI app, the native cfg and optionally a
patched app at the same time under the same calls: the A/B that decides whether a change pays.
`python -m bench --render bench/_runs/<run>/results.pickle [out.md]` writes the
report again from a finished run (e.g. after editing bench/NOTES.md).

Layout: settings.py (BENCH_*), stacks.py (the two gateways), steps.py (one
fixed-rate SIPp step and its CPU accounting, measure.py), ramp.py (peak search,
half-peak runs), rtp.py (media), profiling.py (py-spy, perf), connections.py
(a node full of WebSocket agents), media_webrtc.py (WebRTC media and comfort
noise: media_gen.py, webrtc_peers.py, filter_cost.py), report.py.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import abcpu, connections, media_webrtc, ramp, regstorm, rtp, sipp, stacks  # noqa: E402
from bench.measure import idle_rate, machine_info, proc_cpu  # noqa: E402
from bench.profiling import profile  # noqa: E402
from bench.report import report  # noqa: E402
from bench.stacks import PHONE_IP, BenchStack  # noqa: E402
# Config, Step and Peak also under bench.run: results.pickle files of earlier runs
# name them there (python -m bench --render).
from bench.results import Peak, Step  # noqa: E402,F401
from bench.settings import Config  # noqa: E402


class Bench:
    """One run: the stacks it started, their idle CPU rates, every step's results."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stacks: dict[str, BenchStack] = {}
        self.idle: dict[str, dict[str, float]] = {}
        self.work = cfg.run_dir / "sipp"
        self.results: dict = {"steps": []}
        self.t_start = time.monotonic()

    def log(self, text: str) -> None:
        el = time.monotonic() - self.t_start
        print(f"[bench {el:6.1f}s] {text}", flush=True)

    def setup(self) -> None:
        missing = [p for p in ("kamailio", "rtpengine", "redis-server", "sipp") if not shutil.which(p)]
        if missing:
            raise SystemExit(f"bench: missing programs {missing}: run `make deps`")
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.users_out = sipp.write_inf(self.work / "pbx_users.csv", [f"2{i:04d}" for i in range(self.cfg.dns)])
        self.agents = [f"5{i:04d}" for i in range(self.cfg.dns)]
        self.users_in = sipp.write_inf(self.work / "agents.csv", self.agents)
        self.reg_users = [f"7{i:04d}" for i in range(self.cfg.dns)]
        self.users_reg = sipp.write_inf(self.work / "reg_users.csv", self.reg_users)
        media_ports = stacks.media_range()
        self.log(f"starting rtpengine (media ports {media_ports[0]}-{media_ports[1]})")
        self.rtpengine, ng = stacks.start_rtpengine(self.cfg.run_dir / "rtpengine", media_ports)
        self.ng, self.media_ports = ng, media_ports
        for v in self.cfg.variants:
            self.log(f"starting {v} stack")
            s = stacks.start(v, self.cfg.run_dir / v, children=self.cfg.children, shm_mb=self.cfg.shm_mb,
                             log_level=self.cfg.log_level, rtpengine=self.rtpengine, ng=ng,
                             media_ports=media_ports)
            self.stacks[v] = s
            stacks.write_bindings(s, self.agents, stacks.free_ports(PHONE_IP, 1))
            self.log(f"{v}: SIP {s.sip}, PBX {s.pbx}, phone UAS {PHONE_IP}:{s.phone_port}, "
                     f"kamailio pid {s.kamailio.pid} ({len(s.kamailio_workers())} children)")
        time.sleep(self.cfg.pause * 2)
        for v, s in self.stacks.items():
            self.idle[v] = idle_rate(s.cpu, 0.5 if self.cfg.mode == "smoke" else 2.0)

    def teardown(self) -> None:
        daemons = []
        for s in self.stacks.values():
            s.stop()
            daemons += [s.kamailio, s.redis]
        if getattr(self, "rtpengine", None) is not None:
            self.rtpengine.stop()
            daemons.append(self.rtpengine)
        if not self.cfg.keep:
            stacks.trim_logs(daemons)

    def run(self) -> dict:
        cfg = self.cfg
        res = self.results
        res["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        res["peaks"] = ramp.peaks(self)
        if "lat" in cfg.tests:
            res["lat"] = ramp.half_peak(self, res["peaks"])
        if "ab" in cfg.tests and {"kemi", "native"} <= set(self.stacks):
            res["ab"] = abcpu.bench_steps(self, res["peaks"])
        if "wsreg" in cfg.tests:
            self.log("=== REGISTER storm over WebSockets (bench/regstorm.py)")
            res["wsreg"] = regstorm.bench_storms(self)
        if "media" in cfg.tests:
            res["media"] = self.media()
        if "webrtc" in cfg.tests:
            res["webrtc"] = media_webrtc.run(cfg.run_dir / "webrtc", self.log)
        if "profile" in cfg.tests and cfg.profile and "kemi" in self.stacks:
            res["profile"] = profile(self)
        if "conn" in cfg.tests:
            self.log("=== connections: one node full of WebSocket agents (bench/connections.py)")
            opts = connections.settings_from_env(cfg.mode)
            res["conn"] = (opts, connections.run(cfg.run_dir / "conn", self.rtpengine, self.ng,
                                                  self.media_ports, log=self.log, **opts))
        return res

    def media(self) -> list[rtp.MediaResult]:
        s = self.stacks.get("kemi") or next(iter(self.stacks.values()))
        out: list[rtp.MediaResult] = []
        self.log(f"=== media through {s.variant}'s rtpengine (pid {s.rtpengine.pid})")
        for n in self.cfg.media_calls:
            r = rtp.run_step(s.ng(), lambda: proc_cpu(s.rtpengine.pid), n, self.cfg.media_s,
                             procs=self.cfg.media_procs)
            if r.lost or r.setup_failed:
                self.log(f"media {n} calls: lost {r.lost}/{r.sent}: once more")
                r2 = rtp.run_step(s.ng(), lambda: proc_cpu(s.rtpengine.pid), n, self.cfg.media_s,
                                  procs=self.cfg.media_procs)
                if not r2.lost and not r2.setup_failed:
                    r = r2
            out.append(r)
            self.log(f"media {n} calls: sent {r.sent} received {r.received} loss {r.loss:.4%} "
                     f"rtpengine {r.rtpengine_cpu / r.seconds:.2f} cores, generator "
                     f"{r.generator_cpu / r.seconds:.2f} cores, late ticks {r.late_ticks}")
            if r.lost or r.setup_failed:
                break
            time.sleep(1.0)
        return out


def render(pickled: Path, out: Optional[Path] = None) -> int:
    """Write RESULTS.md again from a run's saved results (e.g. after editing bench/NOTES.md)."""
    import pickle
    data = pickle.loads(pickled.read_bytes())
    cfg = data["cfg"]
    text, md = report(data["res"], cfg, data["machine"], data["elapsed"])
    print(text)
    target = out or cfg.out
    target.write_text(md)
    print(f"bench: wrote {target}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--render"] and len(argv) >= 2:
        return render(Path(argv[1]), Path(argv[2]) if len(argv) > 2 else None)
    cfg = Config.from_env()
    print(f"bench: {cfg.mode} run, output {cfg.out}, work dir {cfg.run_dir}", flush=True)
    machine = machine_info()
    bench = Bench(cfg)
    t0 = time.monotonic()
    try:
        bench.setup()
        res = bench.run()
    finally:
        bench.teardown()
    elapsed = time.monotonic() - t0
    text, md = report(res, cfg, machine, elapsed)
    print()
    print(f"Gateway benchmark ({cfg.mode}) on {machine['cpu']}, {machine['cores']} cores, "
          f"kernel {machine['kernel']}")
    print(text)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(md)
    try:
        import pickle
        (cfg.run_dir / "results.pickle").write_bytes(pickle.dumps(
            {"res": res, "cfg": cfg, "machine": machine, "elapsed": elapsed}))
    except Exception as exc:  # noqa: BLE001 - only for re-rendering
        print(f"bench: results not saved for --render: {exc}")
    print(f"bench: wrote {cfg.out} ({elapsed / 60:.1f} min)")
    if not cfg.keep:
        # The SIPp statistics are small; the daemons' logs were trimmed. Keep the
        # last run only.
        runs = cfg.run_dir.parent
        if runs.name == "_runs":
            for old in sorted(p for p in runs.iterdir() if p.is_dir() and p != cfg.run_dir):
                shutil.rmtree(old, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
