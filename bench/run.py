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
7. connections (bench/connections.py): 10,000 WebSocket agents registering 200
   at a time, Kamailio memory per connected agent, idle CPU with keepalives,
   calls to random agents while all are connected
8. WebRTC media (bench/media_webrtc.py): ICE + DTLS-SRTP phones, CN from the PBX; the
   CN filter path next to a plain relay, the transcoder fallback and Janus

Settings (environment; BENCH_QUICK=1 for a ~2 minute run, BENCH_SMOKE=1 for the
few-seconds harness check):
  BENCH_STEP_S, BENCH_HOLD_MS, BENCH_CALL_START, BENCH_REG_START, BENCH_FACTOR,
  BENCH_REFINE, BENCH_MAX_STEPS, BENCH_MAX_RATE, BENCH_RETRY, BENCH_LAT_S,
  BENCH_MEDIA_CALLS, BENCH_MEDIA_S, BENCH_MEDIA_PROCS, BENCH_DNS, BENCH_CHILDREN,
  BENCH_WEBRTC_CALLS, BENCH_WEBRTC_N, BENCH_WEBRTC_S, BENCH_WEBRTC_ROUNDS, BENCH_WEBRTC_VARIANTS
  (the WebRTC media section, bench/media_webrtc.py; `python -m bench.media_webrtc` runs it alone),
  BENCH_SHM_MB, BENCH_LOG_LEVEL, BENCH_VARIANTS, BENCH_TESTS, BENCH_PROFILE,
  BENCH_OUT, BENCH_RUN_DIR, BENCH_KEEP, BENCH_PAUSE_S, BENCH_PERF,
  BENCH_KAMAILIO_ARGS (extra Kamailio options, both variants, e.g. "-x tlsf"),
  BENCH_KEMI_PATCHES (diffs applied to a copy of kemi/ for the KEMI variant),
  BENCH_CONN_AGENTS, BENCH_CONN_CONCURRENCY, BENCH_CONN_CALLS,
  BENCH_CONN_CALL_CONCURRENCY, BENCH_CONN_IDLE_S, BENCH_CONN_SETTLE_S
`python -m bench --render bench/_runs/<run>/results.pickle [out.md]` writes the
report again from a finished run (e.g. after editing bench/NOTES.md).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import connections, media_webrtc, rtp, sipp, stacks  # noqa: E402
from bench.stacks import PBX_IP, PHONE_IP, BenchStack  # noqa: E402
from gw import stack as gwstack  # noqa: E402

FAIL_RATIO = 0.001       # more than 0.1 % failed calls: not clean
RATE_SLACK = 0.92        # SIPp must have launched the calls at >= 92 % of the asked rate
TARGETS = {"calls": 1000, "register": 2000, "lat_p99_ms": 5.0, "cpu_ratio": 1.1, "media": 500}


# ------------------------------------------------------------------ settings
def _env(name: str, full, quick, smoke, cast=float):
    mode = "smoke" if os.environ.get("BENCH_SMOKE") == "1" else (
        "quick" if os.environ.get("BENCH_QUICK") == "1" else "full")
    default = {"full": full, "quick": quick, "smoke": smoke}[mode]
    raw = os.environ.get(name)
    return cast(raw) if raw not in (None, "") else default


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).replace(",", " ").split()]


@dataclass
class Config:
    mode: str
    step_s: float
    hold_ms: int
    call_start: float
    reg_start: float
    factor: float
    refine: int
    max_steps: int
    max_rate: float
    retry: int
    lat_s: float
    media_calls: list[int]
    media_s: float
    media_procs: int
    dns: int
    children: int
    shm_mb: int
    log_level: str
    variants: list[str]
    tests: list[str]
    profile: bool
    out: Path
    run_dir: Path
    keep: bool
    pause: float          # settle time between steps, seconds

    @classmethod
    def from_env(cls) -> "Config":
        mode = "smoke" if os.environ.get("BENCH_SMOKE") == "1" else (
            "quick" if os.environ.get("BENCH_QUICK") == "1" else "full")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        pyspy = shutil.which("py-spy") or (ROOT / ".venv" / "bin" / "py-spy").exists()
        return cls(
            mode=mode,
            step_s=_env("BENCH_STEP_S", 5, 2.5, 1),
            hold_ms=_env("BENCH_HOLD_MS", 500, 500, 100, int),
            call_start=_env("BENCH_CALL_START", 300, 150, 10),
            reg_start=_env("BENCH_REG_START", 500, 400, 10),
            factor=_env("BENCH_FACTOR", 1.5, 2.0, 2.0),
            refine=_env("BENCH_REFINE", 1, 0, 0, int),
            max_steps=_env("BENCH_MAX_STEPS", 12, 4, 1, int),
            max_rate=_env("BENCH_MAX_RATE", 6000, 6000, 6000),
            retry=_env("BENCH_RETRY", 1, 0, 1, int),
            lat_s=_env("BENCH_LAT_S", 10, 2, 1),
            media_calls=_ints(_env("BENCH_MEDIA_CALLS", "100,250,500,750,1000",
                                   "100,500", "5", str)),
            media_s=_env("BENCH_MEDIA_S", 6, 2, 1),
            media_procs=_env("BENCH_MEDIA_PROCS", 2, 2, 1, int),
            dns=_env("BENCH_DNS", 1000, 1000, 50, int),
            children=_env("BENCH_CHILDREN", 4, 4, 2, int),
            shm_mb=_env("BENCH_SHM_MB", 0, 0, 0, int),
            log_level=_env("BENCH_LOG_LEVEL", "info", "info", "info", str),
            variants=_env("BENCH_VARIANTS", "kemi,native", "kemi,native", "kemi,native", str).split(","),
            tests=_env("BENCH_TESTS", "out,in,reg,lat,media,webrtc,profile,conn",
                       "out,in,reg,lat,media,webrtc,profile,conn", "out,in,reg,lat,media,conn", str).split(","),
            profile=_env("BENCH_PROFILE", "1" if pyspy else "0", "1" if pyspy else "0", "0", str) == "1",
            out=Path(_env("BENCH_OUT", str(ROOT / "bench" / "RESULTS.md"), str(ROOT / "bench" / "RESULTS.md"),
                          str(ROOT / "bench" / "RESULTS.md"), str)),
            run_dir=Path(_env("BENCH_RUN_DIR", str(ROOT / "bench" / "_runs" / stamp),
                              str(ROOT / "bench" / "_runs" / stamp), str(ROOT / "bench" / "_runs" / stamp), str)),
            keep=_env("BENCH_KEEP", "0", "0", "0", str) == "1",
            pause=_env("BENCH_PAUSE_S", 0.5, 0.3, 0.1),
        )


# ------------------------------------------------------------------- results
@dataclass
class Step:
    test: str                 # out, in, reg, direct
    variant: str              # kemi, native, direct
    rate: float
    calls: int
    successful: int = 0
    failed: int = 0
    achieved: float = 0.0     # calls/s SIPp actually launched
    retrans: int = 0
    wall: float = 0.0
    cpu: dict = field(default_factory=dict)        # seconds per component, idle removed
    sipp_cpu: dict = field(default_factory=dict)   # seconds, uac/uas
    lat100: list = field(default_factory=list)
    lat180: list = field(default_factory=list)
    lat200: list = field(default_factory=list)
    note: str = ""
    udp_drops: int = 0        # kernel UDP receive-buffer drops during the step (whole box)
    load_cores: dict = field(default_factory=dict)  # cores per component while calls were launched
    box_busy: float = 0.0     # the whole box's CPU use meanwhile, 0..1 (other programs too)

    @property
    def clean(self) -> bool:
        return (self.calls > 0 and self.failed <= FAIL_RATIO * self.calls
                and self.achieved >= RATE_SLACK * self.rate and not self.note)

    def cpu_us(self, comp: Optional[str] = None) -> float:
        if not self.successful:
            return 0.0
        total = sum(self.cpu.values()) if comp is None else self.cpu.get(comp, 0.0)
        return total / self.successful * 1e6

    def brief(self) -> str:
        state = "clean" if self.clean else "FAIL"
        extra = f" ({self.note})" if self.note else ""
        return (f"{self.variant:6} {self.test:4} {self.rate:7.0f}/s: {self.successful}/{self.calls} ok, "
                f"{self.failed} failed, launched {self.achieved:.0f}/s, retrans {self.retrans}, "
                f"udp drops {self.udp_drops}, "
                f"cpu/call {self.cpu_us():.0f} us (kam {self.cpu_us('kamailio'):.0f}) -> {state}{extra}")


@dataclass
class Peak:
    best: Optional[Step]
    first_fail: Optional[float]
    steps: list[Step]

    @property
    def rate(self) -> float:
        return self.best.rate if self.best else 0.0


class Bench:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stacks: dict[str, BenchStack] = {}
        self.idle: dict[str, dict[str, float]] = {}
        self.work = cfg.run_dir / "sipp"
        self.results: dict = {"steps": []}
        self.t_start = time.monotonic()

    # ----------------------------------------------------------- logging
    def log(self, text: str) -> None:
        el = time.monotonic() - self.t_start
        print(f"[bench {el:6.1f}s] {text}", flush=True)

    # ------------------------------------------------------------ setup
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
            self.idle[v] = self._idle_rate(s, 0.5 if self.cfg.mode == "smoke" else 2.0)

    @staticmethod
    def _idle_rate(s: BenchStack, seconds: float = 2.0) -> dict[str, float]:
        a = s.cpu()
        time.sleep(seconds)
        b = s.cpu()
        return {k: max(b[k] - a[k], 0.0) / seconds for k in a}

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

    # ------------------------------------------------------------ steps
    def sip_step(self, test: str, variant: str, rate: float, *, seconds: Optional[float] = None,
                 latency: bool = False) -> Step:
        cfg = self.cfg
        seconds = cfg.step_s if seconds is None else seconds
        n = max(int(round(rate * seconds)), 1)
        hold = 0 if test == "reg" else cfg.hold_ms
        st = Step(test, variant, rate, n)
        s = self.stacks.get(variant) if variant != "direct" else next(iter(self.stacks.values()))
        tag = f"{variant}_{test}_{int(rate)}_{int(time.time() * 1000) % 100000}"
        if test == "reg":
            uas = sipp.uas(f"{tag}_uas", "bench_registrar.xml", s.pbx.host, s.pbx.port,
                           stacks.free_ports(s.pbx.host, 4), n, self.work)
            uac = sipp.uac(f"{tag}_uac", "bench_register.xml", str(s.pbx), PHONE_IP,
                           stacks.free_ports(PHONE_IP, 1), stacks.free_ports(PHONE_IP, 4), rate, n, self.work,
                           inf=self.users_reg, rsa=str(s.sip), limit=max(int(rate * 3), 100),
                           timeout_s=int(seconds + 30))
            self._clear_reg(s)
        else:
            if test == "out":
                uas_ip, uas_port = s.pbx.host, s.pbx.port
                uac_ip, remote, rsa, inf = PHONE_IP, str(s.pbx), str(s.sip), self.users_out
            elif test == "in":
                uas_ip, uas_port = PHONE_IP, s.phone_port
                uac_ip, remote, rsa, inf = PBX_IP, str(s.sip), None, self.users_in
            else:  # direct: the caller reaches the UAS without the gateway
                uas_ip, uas_port = PBX_IP, stacks.free_ports(PBX_IP, 1)
                uac_ip, remote, rsa, inf = PHONE_IP, f"{PBX_IP}:{uas_port}", None, self.users_out
            uas = sipp.uas(f"{tag}_uas", "bench_uas.xml", uas_ip, uas_port,
                           stacks.free_ports(uas_ip, 4), n, self.work)
            uac = sipp.uac(f"{tag}_uac", "bench_uac.xml", remote, uac_ip, stacks.free_ports(uac_ip, 1),
                           stacks.free_ports(uac_ip, 4), rate, n, self.work, inf=inf, rsa=rsa,
                           hold_ms=hold, limit=max(int(rate * (hold / 1000 + 3)), 100),
                           timeout_s=int(seconds + hold / 1000 + 30), trace_logs=True)
        uas.start()
        time.sleep(0.2)
        cpu0 = s.cpu() if variant != "direct" else {}
        drops0 = udp_rcvbuf_errors()
        t0 = time.monotonic()
        box0 = box_cpu()
        uac.start()
        # While the calls are being launched: the cores each part uses, and how
        # busy the whole box is (other programs included).
        if not uac.wait(seconds * 0.9) and variant != "direct":
            t_mid = time.monotonic() - t0
            cpu_mid, box_mid = s.cpu(), box_cpu()
            st.load_cores = {k: max(cpu_mid[k] - cpu0[k], 0.0) / t_mid for k in cpu0}
            st.box_busy = _busy(box0, box_mid)
        # SIPp gives up on a call after 8 s without an answer (-recv_timeout);
        # a step still running 15 s after its last call was due is failing anyway.
        if not uac.wait(seconds * 0.1 + hold / 1000 + 15):
            uac.stop()
        # The UAS lingers 2 s after each BYE for retransmissions; once the caller
        # has all its answers there is nothing left to wait for.
        if not uas.wait(0.3):
            uas.stop()
        st.wall = time.monotonic() - t0
        st.udp_drops = max(udp_rcvbuf_errors() - drops0, 0)
        if variant != "direct":
            cpu1 = s.cpu()
            idle = self.idle.get(variant, {})
            st.cpu = {k: max(cpu1[k] - cpu0[k] - idle.get(k, 0.0) * st.wall, 0.0) for k in cpu0}
        ur, sr = uac.result(n), uas.result(n)
        st.successful = ur.successful
        st.failed = n - ur.successful
        span = uac.launch_span() if test != "reg" else None
        span = span if span else ur.launch
        st.achieved = (n - 1) / span if n > 1 and span > 0 else rate
        st.retrans = ur.retrans + sr.retrans
        st.sipp_cpu = {"uac": ur.cpu, "uas": sr.cpu}
        if ur.outgoing < n:
            st.note = f"SIPp created {ur.outgoing}/{n} calls"
        if variant != "direct" and not s.alive():
            st.note = f"{variant} stack died"
        if latency:
            lats = uac.latencies()
            st.lat100 = [x[0] for x in lats if x[0] >= 0]
            st.lat180 = [x[1] for x in lats if x[1] >= 0]
            st.lat200 = [x[2] for x in lats if x[2] >= 0]
        if test == "reg" and st.successful:
            missing = self._check_reg(s, min(st.successful, len(self.reg_users)))
            if missing:
                st.note = f"{missing} bindings missing in Redis"
        self.results["steps"].append(st)
        self.log(st.brief())
        if not st.clean and variant != "direct":
            self._cleanup(s)
        time.sleep(self.cfg.pause)
        return st

    def _cleanup(self, s: BenchStack) -> None:
        """After an overloaded step: calls that never completed keep their rtpengine
        sessions (and ports) until tm gives up (fr_inv_timer, 60 s). Delete them so
        the next step starts clean, and let retransmissions die down."""
        time.sleep(1.0)
        ng = s.ng(2.0)
        try:
            calls = ng.list_calls()
        except Exception:  # noqa: BLE001
            return
        for cid in calls:
            try:
                ng.request({"command": "delete", "call-id": cid})
            except Exception:  # noqa: BLE001
                pass
        if calls:
            self.log(f"cleanup: deleted {len(calls)} leftover rtpengine sessions")

    def _clear_reg(self, s: BenchStack) -> None:
        r = s.redis_client()
        keys = [f"gw:reg:{u}" for u in self.reg_users]
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])

    def _check_reg(self, s: BenchStack, expected: int) -> int:
        """Bindings the REGISTERs must have left in Redis (JSON, this node, the phone's address)."""
        r = s.redis_client()
        vals = r.mget([f"gw:reg:{u}" for u in self.reg_users])
        good = 0
        for u, v in zip(self.reg_users, vals):
            if not v:
                continue
            try:
                rec = json.loads(v)
            except ValueError:
                continue
            if rec.get("node") == str(s.sip) and rec.get("received", "").startswith(f"sip:{PHONE_IP}:") \
                    and rec.get("user") == u and int(rec.get("expires", 0)) == 600:
                good += 1
        if "reg_record" not in self.results.setdefault("reg_records", {}):
            sample = next((json.loads(v) for v in vals if v), None)
            self.results["reg_records"][s.variant] = sample
        return max(expected - good, 0)

    # ------------------------------------------------------- peak search
    def find_peak(self, test: str, variant: str, start: float) -> Peak:
        cfg = self.cfg
        steps: list[Step] = []

        def attempt(rate: float) -> Step:
            st = self.sip_step(test, variant, rate)
            steps.append(st)
            for _ in range(cfg.retry):
                if st.clean:
                    break
                self.log(f"{variant} {test} {rate:.0f}/s not clean: once more")
                st = self.sip_step(test, variant, rate)
                steps.append(st)
            return st

        best: Optional[Step] = None
        fail: Optional[float] = None
        rate = start
        for _ in range(cfg.max_steps):
            st = attempt(rate)
            if st.clean:
                best = st
                if rate >= cfg.max_rate:
                    break
                rate = min(round(rate * cfg.factor / 10) * 10 or rate * cfg.factor, cfg.max_rate)
            else:
                fail = rate
                if best is None and rate > 10 and len(steps) < cfg.max_steps + 3:
                    # Not even the first rate: come down until one is clean.
                    rate = max(round(rate / 2), 5)
                    best_down = attempt(rate)
                    if best_down.clean:
                        best = best_down
                    else:
                        fail = rate
                break
        for _ in range(cfg.refine):
            if best is None or fail is None:
                break
            mid = round((best.rate + fail) / 2 / 10) * 10
            if mid <= best.rate or mid >= fail:
                break
            st = attempt(mid)
            if st.clean:
                best = st
            else:
                fail = mid
        return Peak(best, fail, steps)

    # ---------------------------------------------------------- the tests
    def run(self) -> dict:
        cfg = self.cfg
        res = self.results
        res["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        res["peaks"] = {}
        order = [("out", cfg.call_start), ("in", cfg.call_start), ("reg", cfg.reg_start)]
        for test, start in order:
            if test not in cfg.tests:
                continue
            for v in cfg.variants:
                self.log(f"=== peak {test} {v}")
                res["peaks"][(test, v)] = self.find_peak(test, v, start)
        if "lat" in cfg.tests:
            res["lat"] = {}
            # BENCH_TESTS=lat alone: the fixed-rate runs only, at half BENCH_CALL_START /
            # BENCH_REG_START (an A/B comparison of CPU per call without the ramps).
            lat_tests = [t for t in ("out", "in", "reg") if t in cfg.tests] or ["out", "in", "reg"]
            for test in lat_tests:
                start = cfg.reg_start if test == "reg" else cfg.call_start
                peak = res["peaks"].get((test, "kemi")) or res["peaks"].get((test, cfg.variants[0]))
                rate = max(round((peak.rate if peak else start) / 2), 5)
                self.log(f"=== half-peak {test} at {rate}/s: latency and CPU per call")
                runs = {}
                if test != "reg":
                    runs["direct"] = self.sip_step("direct", "direct", rate, seconds=cfg.lat_s, latency=True)
                for v in cfg.variants:
                    runs[v] = self.sip_step(test, v, rate, seconds=cfg.lat_s, latency=test != "reg")
                res["lat"][test] = (rate, runs)
        if "media" in cfg.tests:
            res["media"] = self.media()
        if "webrtc" in cfg.tests:
            res["webrtc"] = media_webrtc.run(cfg.run_dir / "webrtc", self.log)
        if "profile" in cfg.tests and cfg.profile and "kemi" in self.stacks:
            res["profile"] = self.profile()
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
            r = rtp.run_step(s.ng(), lambda: stacks.proc_cpu(s.rtpengine.pid), n, self.cfg.media_s,
                             procs=self.cfg.media_procs)
            if r.lost or r.setup_failed:
                self.log(f"media {n} calls: lost {r.lost}/{r.sent}: once more")
                r2 = rtp.run_step(s.ng(), lambda: stacks.proc_cpu(s.rtpengine.pid), n, self.cfg.media_s,
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

    def profile(self) -> dict:
        """Where a KEMI worker's time goes, while phone -> PBX calls run at ~70 % of
        the KEMI peak: py-spy (--native) on the busiest worker, then perf (if
        installed) over all Kamailio processes; perf again on the native stack at
        the same rate, for comparison."""
        s = self.stacks["kemi"]
        peak = self.results["peaks"].get(("out", "kemi"))
        rate = max(round((peak.rate if peak else self.cfg.call_start) * 0.7), 10)
        pyspy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
        perf = shutil.which("perf") if os.environ.get("BENCH_PERF", "1") == "1" else None
        secs = 8 if self.cfg.mode == "full" else 6
        self.log(f"=== profile: phone->PBX at {rate}/s: py-spy on the busiest KEMI worker"
                 + (", perf on all Kamailio processes" if perf else ""))
        import threading
        out: dict = {"rate": rate, "perf": {}}

        def spy() -> None:
            time.sleep(1.5)
            workers = s.kamailio_workers()
            a = {p: stacks.proc_cpu(p) for p in workers}
            time.sleep(0.5)
            b = {p: stacks.proc_cpu(p) for p in workers}
            busy = sorted(workers, key=lambda p: b[p] - a[p], reverse=True)
            out["worker_cpu_share"] = {p: round((b[p] - a[p]) / 0.5, 2) for p in busy[:6]}
            raw = self.cfg.run_dir / "pyspy.raw"
            cmd = [pyspy, "record", "--pid", str(busy[0]), "--duration", "3", "--rate", "200",
                   "--format", "raw", "--output", str(raw), "--native"]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0 or not raw.exists():
                cmd.remove("--native")
                cmd.append("--nonblocking")
                p = subprocess.run(cmd, capture_output=True, text=True)
            out.update(pid=busy[0], cmd=" ".join(cmd[:1] + ["record"] + cmd[2:]).replace(str(ROOT) + "/", ""),
                       raw=str(raw), stderr=p.stderr[-500:])
            if perf:
                out["perf"]["kemi"] = perf_split(perf, s, 2, self.cfg.run_dir / "perf-kemi.data")

        th = threading.Thread(target=spy)
        th.start()
        out["step"] = self.sip_step("out", "kemi", rate, seconds=secs)
        th.join()
        out["summary"] = summarize_pyspy(Path(out.get("raw", "/nonexistent")))
        if perf and "native" in self.stacks:
            n = self.stacks["native"]

            def perf_native() -> None:
                time.sleep(1.5)
                out["perf"]["native"] = perf_split(perf, n, 2, self.cfg.run_dir / "perf-native.data")
            th = threading.Thread(target=perf_native)
            th.start()
            out["native_step"] = self.sip_step("out", "native", rate, seconds=max(secs - 3, 4))
            th.join()
        return out


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


def box_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v) - idle, sum(v)
    except (OSError, ValueError):
        return 0, 0


def _busy(a: tuple[int, int], b: tuple[int, int]) -> float:
    return (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else 0.0


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped because a socket's receive buffer was full
    (all sockets on the box: a proxy that falls behind shows up here first)."""
    try:
        rows = [line.split() for line in open("/proc/net/snmp") if line.startswith("Udp:")]
        return int(dict(zip(rows[0][1:], rows[1][1:])).get("RcvbufErrors", 0))
    except (OSError, IndexError, ValueError):
        return 0


# ---------------------------------------------------------------- py-spy
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


# ---------------------------------------------------------------- report
def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(q / 100.0 * (len(v) - 1)))))
    return v[k]


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


def _fmt(x: Optional[float], nd: int = 0) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:,.{nd}f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if not a or not b or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}"


def summary_rows(res: dict, variants: list[str]) -> list[list[str]]:
    """metric | KEMI | native | KEMI/native | target | met"""
    rows: list[list[str]] = []
    peaks = res.get("peaks", {})
    lat = res.get("lat", {})

    def peak(test: str, v: str) -> Optional[float]:
        p = peaks.get((test, v))
        return p.rate if p else None

    def peak_txt(test: str, v: str) -> str:
        p = peaks.get((test, v))
        if not p:
            return "n/a"
        if p.best is None:
            return f"< {p.first_fail:.0f}" if p.first_fail else "0"
        return f"{p.rate:,.0f}" + ("" if p.first_fail else "+")

    def met(ok: Optional[bool]) -> str:
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    for test, label, tgt in (("out", "calls/s phone->PBX, highest clean", TARGETS["calls"]),
                             ("in", "calls/s PBX->phone (Redis lookup), highest clean", TARGETS["calls"]),
                             ("reg", "REGISTER/s (binding to Redis), highest clean", TARGETS["register"])):
        if ("out" if test == "out" else test, variants[0]) not in peaks:
            continue
        k, n = peak(test, "kemi"), peak(test, "native")
        rows.append([label, peak_txt(test, "kemi"), peak_txt(test, "native"), _ratio(k, n),
                     f">= {tgt:,}", met(None if k is None else k >= tgt)])
    for test in ("out", "in"):
        if test not in lat:
            continue
        rate, runs = lat[test]
        d = runs.get("direct")
        for which, attr in (("INVITE->100", "lat100"), ("INVITE->180", "lat180")):
            vals = {}
            for v in variants:
                r = runs.get(v)
                if r is None or d is None:
                    continue
                vals[v] = (_pct(getattr(r, attr), 50) - _pct(getattr(d, attr), 50),
                           _pct(getattr(r, attr), 99) - _pct(getattr(d, attr), 99))
            if not vals:
                continue
            k = vals.get("kemi")
            n = vals.get("native")
            rows.append([f"added latency {which} {'phone->PBX' if test == 'out' else 'PBX->phone'} "
                         f"@ {rate}/s, p50 / p99 ms",
                         f"{_fmt(k[0], 2)} / {_fmt(k[1], 2)}" if k else "n/a",
                         f"{_fmt(n[0], 2)} / {_fmt(n[1], 2)}" if n else "n/a",
                         _ratio(k[0], n[0]) if k and n and k[0] > 0 and n[0] > 0 else "n/a",
                         f"p99 <= {TARGETS['lat_p99_ms']:g}",
                         met(None if not k else k[1] <= TARGETS["lat_p99_ms"])])
    for test, label in (("out", "call phone->PBX"), ("in", "call PBX->phone"), ("reg", "REGISTER")):
        if test not in lat:
            continue
        rate, runs = lat[test]
        k, n = runs.get("kemi"), runs.get("native")
        def split(r: Optional[Step]) -> str:
            if r is None or not r.successful:
                return "n/a"
            return (f"{r.cpu_us():,.0f} (kam {r.cpu_us('kamailio'):,.0f} + rtp {r.cpu_us('rtpengine'):,.0f}"
                    f" + redis {r.cpu_us('redis'):,.0f})")
        kt, nt = (k.cpu_us() if k else None), (n.cpu_us() if n else None)
        rows.append([f"CPU us per {label} @ {rate}/s: total (kamailio + rtpengine + redis)",
                     split(k), split(n), _ratio(kt, nt), f"<= {TARGETS['cpu_ratio']}",
                     met(None if not kt or not nt else kt / nt <= TARGETS["cpu_ratio"])])
        kk = k.cpu_us("kamailio") if k else None
        nk = n.cpu_us("kamailio") if n else None
        rows.append([f"CPU us per {label}: Kamailio alone", _fmt(kk), _fmt(nk), _ratio(kk, nk), "", ""])
    media = res.get("media")
    if media:
        clean = [m for m in media if not m.lost and not m.setup_failed]
        best = max(clean, key=lambda m: m.calls) if clean else None
        first_bad = next((m for m in media if m.lost or m.setup_failed), None)
        txt = f"{best.calls:,}" if best else "0"
        if best and not first_bad:
            txt += "+"
        rows.append(["plain RTP both legs (SIP phones, no WebRTC): relayed G.711 calls with 0 loss "
                     "(userspace rtpengine)", txt, "(same rtpengine)", "",
                     f">= {TARGETS['media']}", met(None if not media else (best.calls if best else 0)
                                                  >= TARGETS["media"])])
        if best:
            rows.append([f"plain RTP both legs: rtpengine CPU per relayed call @ {best.calls} calls (% of a core)",
                         f"{100 * best.rtpengine_cpu / best.seconds / best.calls:.3f}", "", "", "", ""])
    if res.get("webrtc"):
        rows += media_webrtc.summary_rows(res["webrtc"])
    return rows


def table_md(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def table_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line, fmt(header), line] + [fmt(r) for r in rows] + [line])


HEADER = ["metric", "KEMI (Python)", "native cfg", "KEMI/native", "target", "met"]


def report(res: dict, cfg: Config, machine: dict, elapsed: float) -> tuple[str, str]:
    rows = summary_rows(res, cfg.variants)
    text = table_text(HEADER, rows)
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = [f"# Gateway benchmark ({cfg.mode} run, {when})", "",
          "Generated by `make bench` (bench/run.py); hand-written analysis in bench/NOTES.md (included below).",
          "",
          f"Machine: **{machine['cpu']}**, {machine['cores']} cores, {machine['memory']}, "
          f"kernel {machine['kernel']}, {machine['os']}. Everything (gateway, rtpengine, Redis, SIPp, RTP "
          "generator) on this one box, over loopback.", "",
          f"Software: kamailio {machine['kamailio']}; {machine['rtpengine']}; {machine['redis']}; "
          f"{machine['sipp']}; Python {machine['python']}.", "",
          f"Settings: Kamailio children={cfg.children} (UDP workers), "
          f"{'shm ' + str(cfg.shm_mb) + ' MB' if cfg.shm_mb else 'memory options as gw/stack.py'}"
          f"{', extra options ' + repr(os.environ.get('BENCH_KAMAILIO_ARGS')) if os.environ.get('BENCH_KAMAILIO_ARGS') else ''}"
          f"{', KEMI patched with ' + os.environ.get('BENCH_KEMI_PATCHES', '') if os.environ.get('BENCH_KEMI_PATCHES') else ''}, log level "
          f"{cfg.log_level} (one logfmt line per routing decision in both variants); call hold "
          f"{cfg.hold_ms} ms; {cfg.step_s:g} s per rate step, x{cfg.factor:g} ramp then {cfg.refine} "
          f"bisection step(s), a failed step retried {cfg.retry}x; 'clean' = <= 0.1 % failed calls and "
          f"SIPp launched >= {RATE_SLACK:.0%} of the asked rate; {cfg.dns} agent bindings in Redis. "
          f"Run took {elapsed / 60:.1f} min.", "",
          "## Summary", "", table_md(HEADER, rows), "",
          "KEMI/native: ratio of the two columns (for latency rows, of the p50s). A rate with `+`: no "
          "failing step was reached (the harness's step limit or the load generators ran out first); "
          "`< N`: not even the lowest rate tried was clean.", "",
          "## How it was measured", "",
          "- Both gateways run side by side on loopback, each with its own Kamailio and Redis, sharing "
          "one userspace rtpengine (`--table=-1`, as gw/stack.py starts it); one flow runs at a time, so "
          "the CPU read for a step is that step's. KEMI = kamailio.cfg + kemi/app.py exactly as "
          "`make run` starts them (gw/stack.py `kamailio_argv`); native = bench/kamailio-native.cfg, "
          "the same routing in Kamailio's language (ndb_redis + jansson for the bindings), same core "
          "settings and modules.",
          "- Calls: SIPp `tests/sipp/bench_uac.xml` -> gateway -> `bench_uas.xml`: INVITE (SDP) / 100 / "
          "180 / 200 (SDP) / ACK, hold, BYE / 200; rtpengine offer on the INVITE, answer on the 200, "
          "delete on the BYE. phone->PBX: UAC on 127.0.0.2, Request-URI = the PBX, sent to the gateway "
          "(`-rsa`). PBX->phone: UAC on 127.0.0.1 (= GW_PBX), INVITE sip:<DN>@gateway, DN cycling "
          f"over {cfg.dns} bindings in Redis that point at the UAS 'phone' on 127.0.0.2.",
          "- REGISTER: `bench_register.xml` (127.0.0.2, To user cycling over "
          f"{cfg.dns} DNs) -> gateway (Path added, Redis GET) -> `bench_registrar.xml` (200 echoing "
          "Contact;expires=600 and Path) -> the gateway writes gw:reg:<DN> (checked after each step).",
          "- A step: N = rate x step time calls at a fixed rate (`-r`); failed = calls that did not end "
          "in success (timeouts after 8 s, unexpected replies, SIPp stopped 15 s after the last call "
          "was due). CPU: utime+stime (from /proc/<pid>/task/*/schedstat, ns) of Kamailio's main "
          "process and all its children, rtpengine and redis-server, before/after, minus their idle "
          "rate, divided by the successful calls.",
          "- Latency: per call at the caller, `gettimeofday` just before the INVITE is sent and when "
          "the 100/180/200 are processed; the same scenario with the UAS called directly is the "
          "baseline. Added latency = gateway percentile - direct percentile.",
          "- Media: bench/rtp.py sets N sessions up over ng with the gateway's own flags "
          "(kemi/media.py, plain RTP both sides) and sends G.711 both ways, 50 packets/s per stream; "
          "loss counted per RTP sequence number (plain RTP on both legs, as for SIP desk phones).",
          "- WebRTC media (bench/media_webrtc.py): real ICE + DTLS-SRTP phone legs (a second rtpengine plays "
          "the browsers), plain-RTP PBX legs with CN from the PBX, the gateway's flags on one userspace "
          "rtpengine: the CN filter path, a plain relay, the transcoder fallback, and Janus with the same "
          "calls; all in a network namespace of the bench's own.",
          "", "Reproduce: `make bench` (about 15 min), `BENCH_QUICK=1 make bench` (about 2 min); the "
          "settings are environment variables listed at the top of bench/run.py, e.g. "
          "`BENCH_KAMAILIO_ARGS='-x tlsf'` to try a Kamailio option on both variants, "
          "`BENCH_KEMI_PATCHES=file.diff` to measure a change to kemi/ before it lands.", ""]
    md += details_md(res, cfg)
    if "conn" in res:
        opts, conn = res["conn"]
        md += [""] + connections.markdown(conn, opts["concurrency"])
        text += "\n\nConnections (bench/connections.py)\n" + table_text(
            ["metric", "measured", "target", "met"], connections.rows(conn))
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists() and cfg.mode != "smoke":
        md += ["", notes.read_text().strip(), ""]
    return text, "\n".join(md) + "\n"


def details_md(res: dict, cfg: Config) -> list[str]:
    md = ["## Every rate step", "",
          "CPU columns: microseconds per successful call/REGISTER, /proc utime+stime deltas minus the "
          "stack's idle rate; cores: CPU each part used while the calls were being launched; box busy: "
          "the whole machine's CPU use meanwhile (2 cores = 100 %, other programs included); SIPp "
          "columns: the load generators' own CPU over the step, share of one core; UDP drops: "
          "the kernel's RcvbufErrors during the step (whole box: a socket whose reader fell behind).", ""]
    hdr = ["variant", "test", "rate/s", "calls", "failed", "launched/s", "retrans", "UDP drops", "kamailio us",
           "rtpengine us", "redis us", "total us", "cores: kamailio / rtpengine / redis", "box busy",
           "SIPp uac/uas cores", "clean"]
    rows = []
    for st in res.get("steps", []):
        if st.variant == "direct":
            continue
        lc = st.load_cores
        cores = (f"{lc.get('kamailio', 0):.2f} / {lc.get('rtpengine', 0):.2f} / {lc.get('redis', 0):.2f}"
                 if lc else "")
        rows.append([st.variant, st.test, f"{st.rate:.0f}", str(st.calls), str(st.failed), f"{st.achieved:.0f}",
                     str(st.retrans), str(st.udp_drops), f"{st.cpu_us('kamailio'):.0f}",
                     f"{st.cpu_us('rtpengine'):.0f}",
                     f"{st.cpu_us('redis'):.0f}", f"{st.cpu_us():.0f}", cores,
                     f"{st.box_busy:.0%}" if lc else "",
                     f"{st.sipp_cpu.get('uac', 0) / st.wall:.2f} / {st.sipp_cpu.get('uas', 0) / st.wall:.2f}"
                     if st.wall else "", ("yes" if st.clean else "no") + (f" ({st.note})" if st.note else "")])
    md += [table_md(hdr, rows), ""]
    lat = res.get("lat", {})
    if lat:
        md += ["## Latency at half the KEMI peak", "",
               "Wall-clock at the caller (SIPp `gettimeofday` before sending the INVITE and when the reply "
               "is processed), ms. `direct`: the same UAC and UAS without the gateway; the gateway's 100 "
               "comes from Kamailio (tm) after the request route ran, including the rtpengine offer and, "
               "PBX->phone, the Redis lookup.", ""]
        hdr = ["direction", "rate/s", "path", "calls timed", "100 p50", "100 p99", "180 p50", "180 p90",
               "180 p99", "180 max", "180 overtaken by 200", "200 p50", "200 p99"]
        rows = []
        for test in ("out", "in"):
            if test not in lat:
                continue
            rate, runs = lat[test]
            for v, r in runs.items():
                rows.append(["phone->PBX" if test == "out" else "PBX->phone", str(rate), v, str(len(r.lat200)),
                             *[f"{_pct(r.lat100, q):.2f}" for q in (50, 99)],
                             *[f"{_pct(r.lat180, q):.2f}" for q in (50, 90, 99)],
                             f"{max(r.lat180) if r.lat180 else float('nan'):.2f}",
                             str(max(len(r.lat200) - len(r.lat180), 0)),
                             *[f"{_pct(r.lat200, q):.2f}" for q in (50, 99)]])
        md += [table_md(hdr, rows), ""]
    media = res.get("media")
    if media:
        md += ["## Media, plain RTP both legs (SIP phones; RTP relayed by userspace rtpengine)", "",
               "Each call: two legs, 50 packets/s each way (PCMU 20 ms, 172-byte packets), set up over ng "
               "with the gateway's flags for a plain-RTP call; generator and receiver in Python "
               f"({cfg.media_procs} processes) on the same box.", ""]
        hdr = ["calls", "seconds", "packets sent", "received", "loss", "rtpengine cores", "rtpengine % core per call",
               "rtpengine us per packet", "generator cores", "late ticks"]
        rows = []
        for m in media:
            cores = m.rtpengine_cpu / m.seconds
            rows.append([str(m.calls), f"{m.seconds:g}", str(m.sent), str(m.received), f"{m.loss:.4%}",
                         f"{cores:.2f}", f"{100 * cores / m.calls:.3f}",
                         f"{1e6 * m.rtpengine_cpu / m.sent:.1f}" if m.sent else "n/a",
                         f"{m.generator_cpu / m.seconds:.2f}", str(m.late_ticks)])
        md += [table_md(hdr, rows), ""]
    if res.get("webrtc"):
        md += media_webrtc.report_md(res["webrtc"])
    prof = res.get("profile")
    if prof:
        md += [f"## Where the time goes (phone->PBX calls at {prof['rate']}/s)", ""]
        for v, label in (("kemi", "KEMI"), ("native", "native cfg")):
            pr = prof.get("perf", {}).get(v)
            if not pr:
                continue
            if "error" in pr:
                md += [f"perf ({label}) failed: `{pr['error']}`", ""]
                continue
            md += [f"perf, all Kamailio processes of the {label} stack, share of CPU samples by binary "
                   "(kernel = syscalls: SIP and ng sends/receives, scheduling):", "",
                   table_md(["binary", "% CPU samples"], [[k, f"{x:.1f}"] for k, x in pr["dso"]]), "",
                   f"Top symbols ({label}):", "",
                   table_md(["binary / symbol", "% CPU samples"], [[k, f"{x:.1f}"] for k, x in pr["sym"]]), ""]
        summ = prof.get("summary")
        if summ:
            md += [f"py-spy on the busiest KEMI worker (`{prof.get('cmd', '')}`, {summ['samples']} samples, "
                   "wall clock: waiting is included and shown apart). Workers' CPU share (cores): "
                   f"{', '.join(f'pid {p}: {c:.2f}' for p, c in prof.get('worker_cpu_share', {}).items())}.",
                   "",
                   table_md(["kind of work", "% samples"], [[k, f"{x}"] for k, x in summ["categories"]]), "",
                   "Innermost frame (self time):", "",
                   table_md(["frame", "% samples"], [[k, f"{x}"] for k, x in summ["self"]]), "",
                   "Anywhere on the stack (inclusive):", "",
                   table_md(["frame", "% samples"], [[k, f"{x}"] for k, x in summ["inclusive"]]), ""]
    recs = res.get("reg_records")
    if recs:
        md += ["## Binding records written by each variant (parity check)", ""]
        for v, rec in recs.items():
            md += [f"- {v}: `{json.dumps(rec, sort_keys=True)}`"]
        md += [""]
    return md


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
