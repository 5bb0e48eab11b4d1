"""One fixed-rate step: a SIPp caller and callee through one stack (or straight to
each other: `direct`), the CPU each daemon used, and what the step left behind.

A step: N = rate x step time calls at a fixed rate; failed = calls that did not end
in success. CPU: /proc deltas over the step minus the stack's idle rate."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Optional

from bench import sipp, stacks
from bench.measure import box_cpu, busy, udp_rcvbuf_errors
from bench.results import Step
from bench.stacks import PBX_IP, PHONE_IP, BenchStack

if TYPE_CHECKING:
    from bench.run import Bench


def sip_step(bench: "Bench", test: str, variant: str, rate: float, *, seconds: Optional[float] = None,
             latency: bool = False) -> Step:
    """test: out (phone -> PBX), in (PBX -> phone), reg (REGISTER), direct (no gateway)."""
    cfg = bench.cfg
    seconds = cfg.step_s if seconds is None else seconds
    n = max(int(round(rate * seconds)), 1)
    hold = 0 if test == "reg" else cfg.hold_ms
    st = Step(test, variant, rate, n)
    s = bench.stacks.get(variant) if variant != "direct" else next(iter(bench.stacks.values()))
    uac, uas = _sipp_pair(bench, s, test, variant, rate, n, seconds, hold)
    _run(bench, st, s, uac, uas, seconds, hold)
    _collect(bench, st, s, uac, uas, latency)
    bench.results["steps"].append(st)
    bench.log(st.brief())
    if not st.clean and variant != "direct":
        cleanup(bench, s)
    time.sleep(cfg.pause)
    return st


def _sipp_pair(bench: "Bench", s: BenchStack, test: str, variant: str, rate: float, n: int,
               seconds: float, hold: int) -> tuple[sipp.Sipp, sipp.Sipp]:
    """The caller (uac) and the callee (uas) of this step, not started yet."""
    tag = f"{variant}_{test}_{int(rate)}_{int(time.time() * 1000) % 100000}"
    if test == "reg":
        uas = sipp.uas(f"{tag}_uas", "bench_registrar.xml", s.pbx.host, s.pbx.port,
                       stacks.free_ports(s.pbx.host, 4), n, bench.work)
        uac = sipp.uac(f"{tag}_uac", "bench_register.xml", str(s.pbx), PHONE_IP,
                       stacks.free_ports(PHONE_IP, 1), stacks.free_ports(PHONE_IP, 4), rate, n, bench.work,
                       inf=bench.users_reg, rsa=str(s.sip), limit=max(int(rate * 3), 100),
                       timeout_s=int(seconds + 30))
        clear_reg(bench, s)
        return uac, uas
    if test == "out":
        uas_ip, uas_port = s.pbx.host, s.pbx.port
        uac_ip, remote, rsa, inf = PHONE_IP, str(s.pbx), str(s.sip), bench.users_out
    elif test == "in":
        uas_ip, uas_port = PHONE_IP, s.phone_port
        uac_ip, remote, rsa, inf = PBX_IP, str(s.sip), None, bench.users_in
    else:  # direct: the caller reaches the UAS without the gateway
        uas_ip, uas_port = PBX_IP, stacks.free_ports(PBX_IP, 1)
        uac_ip, remote, rsa, inf = PHONE_IP, f"{PBX_IP}:{uas_port}", None, bench.users_out
    uas = sipp.uas(f"{tag}_uas", "bench_uas.xml", uas_ip, uas_port,
                   stacks.free_ports(uas_ip, 4), n, bench.work)
    uac = sipp.uac(f"{tag}_uac", "bench_uac.xml", remote, uac_ip, stacks.free_ports(uac_ip, 1),
                   stacks.free_ports(uac_ip, 4), rate, n, bench.work, inf=inf, rsa=rsa,
                   hold_ms=hold, limit=max(int(rate * (hold / 1000 + 3)), 100),
                   timeout_s=int(seconds + hold / 1000 + 30), trace_logs=True)
    return uac, uas


def _run(bench: "Bench", st: Step, s: BenchStack, uac: sipp.Sipp, uas: sipp.Sipp, seconds: float,
         hold: int) -> None:
    """Run the pair; CPU of each daemon, the box's load and UDP drops meanwhile."""
    variant = st.variant
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
        st.box_busy = busy(box0, box_mid)
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
        idle = bench.idle.get(variant, {})
        st.cpu = {k: max(cpu1[k] - cpu0[k] - idle.get(k, 0.0) * st.wall, 0.0) for k in cpu0}


def _collect(bench: "Bench", st: Step, s: BenchStack, uac: sipp.Sipp, uas: sipp.Sipp,
             latency: bool) -> None:
    """SIPp's counts (and per-call latencies), and the bindings a REGISTER step left."""
    n, test, variant, rate = st.calls, st.test, st.variant, st.rate
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
        missing = check_reg(bench, s, min(st.successful, len(bench.reg_users)))
        if missing:
            st.note = f"{missing} bindings missing in Redis"


def cleanup(bench: "Bench", s: BenchStack) -> None:
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
        bench.log(f"cleanup: deleted {len(calls)} leftover rtpengine sessions")


def clear_reg(bench: "Bench", s: BenchStack) -> None:
    r = s.redis_client()
    keys = [f"gw:reg:{u}" for u in bench.reg_users]
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])


def check_reg(bench: "Bench", s: BenchStack, expected: int) -> int:
    """Bindings the REGISTERs must have left in Redis (JSON, this node, the phone's address)."""
    r = s.redis_client()
    vals = r.mget([f"gw:reg:{u}" for u in bench.reg_users])
    good = 0
    for u, v in zip(bench.reg_users, vals):
        if not v:
            continue
        try:
            rec = json.loads(v)
        except ValueError:
            continue
        if rec.get("node") == str(s.sip) and rec.get("received", "").startswith(f"sip:{PHONE_IP}:") \
                and rec.get("user") == u and int(rec.get("expires", 0)) == 600:
            good += 1
    if s.variant not in bench.results.setdefault("reg_records", {}):
        sample = next((json.loads(v) for v in vals if v), None)
        bench.results["reg_records"][s.variant] = sample
    return max(expected - good, 0)
