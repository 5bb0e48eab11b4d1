"""What arrived where: the packet table, the WebRTC SDP check, the CPU cost."""
from __future__ import annotations

import sys
import time
from typing import Optional

from bench.experiments.cn.calls import _negotiated, delete_call, run_media, setup_call
from bench.experiments.cn.engine import RtpEngine
from bench.experiments.cn.wire import Sdp


def _cn_in(sdp: Optional[Sdp]) -> str:
    if sdp is None:
        return "-"
    return "CN" if any(n.lower().startswith("cn:") for n in sdp.names()) else "no"


def packet_table(rtpe: RtpEngine, variants: list, shapes: list, show_sdp: bool) -> list:
    rows = []
    for variant in variants:
        for shape in shapes:
            print(f"  running {variant.name} / {shape}", file=sys.stderr, flush=True)
            call = setup_call(rtpe, shape, variant)
            if call.sdp_to_phone is None or call.sdp_to_pbx is None:
                rows.append((variant.name, shape, "FAILED: " + "; ".join(call.errors)))
                continue
            run_media([call])
            ph, px = call.phone, call.pbx
            te_pbx = _negotiated(call.pbx_sdp, "telephone-event")
            te_phone = _negotiated(call.phone_sdp, "telephone-event")
            rows.append(dict(
                variant=variant.name, shape=shape,
                sdp_phone=_cn_in(call.sdp_to_phone), sdp_pbx=_cn_in(call.sdp_to_pbx),
                ph_pt0=ph.received[0], ph_pt13=ph.received[13],
                ph_te=ph.received[te_phone] if te_phone is not None else 0,
                ph_other=sum(v for k, v in ph.received.items() if k not in (0, 13, te_phone)),
                ph_exact=ph.rx_pcmu_exact, px_sent0=px.sent[0],
                ph_lat=1000 * max(ph.rx_latency, default=0),
                px_pt0=px.received[0], px_pt13=px.received[13],
                px_te=px.received[te_pbx] if te_pbx is not None else 0,
                px_exact=px.rx_pcmu_exact, ph_sent0=ph.sent[0],
                errors="; ".join(call.errors)))
            if show_sdp:
                print(f"--- {variant.name} / {shape}: SDP to PBX ---\n{call.sdp_to_pbx.text}"
                      f"--- SDP to phone ---\n{call.sdp_to_phone.text}")
            delete_call(rtpe, call)
    return rows


def print_packet_table(rows: list):
    print("\nPBX sends per call: 100 x PCMU(0), 25 x CN(13), 7 x telephone-event; phone sends "
          "125 x PCMU(0) + 7 x telephone-event.")
    print("ph_* = received at the phone socket, px_* = received at the PBX socket; exact = PCMU "
          "payloads byte-identical to what was sent; maxlat = worst PBX->phone delay of those.")
    hdr = (f"{'variant':28} {'shape':6} {'SDP>ph':6} {'SDP>pbx':7} | {'ph_0':>5} {'ph_13':>5} "
           f"{'ph_te':>5} {'ph_oth':>6} {'exact':>5} | {'px_0':>5} {'px_13':>5} {'px_te':>5} "
           f"{'exact':>5} {'maxlat':>6}  verdict")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if isinstance(r, tuple):
            print(f"{r[0]:28} {r[1]:6} {r[2]}")
            continue
        ok = (r["sdp_phone"] == "no" and r["ph_pt13"] == 0 and r["ph_pt0"] >= 95
              and r["ph_te"] > 0 and r["px_te"] > 0 and r["px_pt0"] >= 110)
        print(f"{r['variant']:28} {r['shape']:6} {r['sdp_phone']:6} {r['sdp_pbx']:7} | "
              f"{r['ph_pt0']:5} {r['ph_pt13']:5} {r['ph_te']:5} {r['ph_other']:6} "
              f"{r['ph_exact']:5} | {r['px_pt0']:5} {r['px_pt13']:5} {r['px_te']:5} "
              f"{r['px_exact']:5} {r['ph_lat']:5.1f}ms  {'OK' if ok else 'LEAK/FAIL'}"
              + (f"  [{r['errors']}]" if r["errors"] else ""))


def webrtc_sdp_check(rtpe: RtpEngine, variants: list, shapes: list, show_sdp: bool):
    """Signalling only, real WebRTC SDP on the phone leg: does rtpengine accept the flags?"""
    print("\nWebRTC SDP check (phone leg UDP/TLS/RTP/SAVPF, ICE, DTLS, rtcp-mux; no media):")
    print(f"{'variant':28} {'shape':6} {'to phone: proto':22} {'codecs to phone':44} "
          f"{'ICE':3} {'fp':3} {'mux':3} | {'to PBX: proto':10} codecs to PBX")
    for variant in variants:
        for shape in shapes:
            call = setup_call(rtpe, shape, variant, mode="webrtc")
            tp, tx = call.sdp_to_phone, call.sdp_to_pbx
            if tp is None or tx is None:
                print(f"{variant.name:28} {shape:6} FAILED: {'; '.join(call.errors)}")
                continue
            print(f"{variant.name:28} {shape:6} {tp.proto:22} {' '.join(tp.names()):44} "
                  f"{'y' if tp.has('ice-ufrag') else 'n':3} "
                  f"{'y' if tp.has('fingerprint') else 'n':3} {'y' if tp.has('rtcp-mux') else 'n':3} | "
                  f"{tx.proto:10} {' '.join(tx.names())}"
                  + (f"  [{'; '.join(call.errors)}]" if call.errors else ""))
            if show_sdp:
                print(f"--- SDP to PBX ---\n{tx.text}--- SDP to phone ---\n{tp.text}")
            delete_call(rtpe, call)


def cpu_test(variants: list, shapes: list, calls_n: int, seconds: float):
    """rtpengine CPU time for `calls_n` concurrent calls, 50 pps each direction."""
    print(f"\nCPU: {calls_n} concurrent calls, 50 pps each direction, {seconds:.0f} s "
          f"(PBX: 100 pkt PCMU / 25 pkt CN / 7 pkt DTMF cycle); fresh rtpengine per row")
    print(f"{'variant':28} {'shape':5} {'rtpengine cpu s':>15} {'% of 1 core':>11} "
          f"{'ms cpu/call/s':>13} {'rx pkts':>8} {'ph_13':>6}")
    results = {}
    ticks = int(seconds / 0.02)
    for variant, shape in [(v, sh) for sh in shapes for v in variants]:
        with RtpEngine(ports=max(400, calls_n * 8 + 40), log_level=4) as rtpe:
            calls = [setup_call(rtpe, shape, variant, call_id=f"cpu-{i}") for i in range(calls_n)]
            bad = [c for c in calls if c.sdp_to_phone is None or c.sdp_to_pbx is None]
            if bad:
                print(f"{variant.name:28} {shape:5} FAILED: {bad[0].errors}")
                continue
            run_media(calls, ticks=10, tail=0.3)  # warm-up: latch, create handlers
            cpu0, t0 = rtpe.cpu_seconds(), time.monotonic()
            run_media(calls, ticks=ticks, tail=0.0)
            cpu1, t1 = rtpe.cpu_seconds(), time.monotonic()
            run_media(calls, ticks=0, tail=0.3)  # collect stragglers
            rx = sum(sum(c.phone.received.values()) + sum(c.pbx.received.values()) for c in calls)
            ph13 = sum(c.phone.received[13] for c in calls)
            cpu = cpu1 - cpu0
            results[(variant.name, shape)] = cpu
            print(f"{variant.name:28} {shape:5} {cpu:15.2f} {100 * cpu / (t1 - t0):10.1f}% "
                  f"{1000 * cpu / (t1 - t0) / calls_n:13.2f} {rx:8} {ph13:6}")
            for c in calls:
                delete_call(rtpe, c)
    return results
