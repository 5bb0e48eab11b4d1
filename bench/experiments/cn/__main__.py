"""python -m bench.experiments.cn (see __init__.py)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import bench.experiments.cn as experiment
from bench.experiments.cn.calls import SHAPES, VARIANTS
from bench.experiments.cn.dtls import dtls_test
from bench.experiments.cn.engine import RTPENGINE_BIN, RtpEngine
from bench.experiments.cn.report import cpu_test, packet_table, print_packet_table, webrtc_sdp_check


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.experiments.cn", description=experiment.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", help="comma-separated variant names (default: all)")
    ap.add_argument("--shapes", help=f"comma-separated shapes (default: {','.join(SHAPES)})")
    ap.add_argument("--show-sdp", action="store_true")
    ap.add_argument("--webrtc-sdp", action="store_true", help="also run the WebRTC SDP check")
    ap.add_argument("--skip-media", action="store_true", help="skip the plain-RTP packet table")
    ap.add_argument("--dtls", action="store_true",
                    help="also run calls with a real DTLS-SRTP phone leg (aiortc)")
    ap.add_argument("--cpu", action="store_true", help="run the CPU test instead")
    ap.add_argument("--cpu-calls", type=int, default=20)
    ap.add_argument("--cpu-seconds", type=float, default=10)
    ap.add_argument("--cpu-shapes", default="A,B")
    ap.add_argument("--keep-log", action="store_true", help="keep and print the rtpengine log path")
    args = ap.parse_args(argv)

    variants = VARIANTS
    if args.variants:
        wanted = args.variants.split(",")
        variants = [v for v in VARIANTS if v.name in wanted]
        missing = set(wanted) - {v.name for v in variants}
        if missing:
            ap.error(f"unknown variants: {missing}; known: {[v.name for v in VARIANTS]}")
    shapes = args.shapes.split(",") if args.shapes else SHAPES

    version = subprocess.run([RTPENGINE_BIN, "--version"], capture_output=True, text=True)
    print(f"rtpengine: {(version.stdout + version.stderr).strip()}")
    for v in variants:
        print(f"  {v.name:28} offer>pbx [{v.offer_to_pbx}] answer>phone [{v.answer_to_phone}] "
              f"offer>phone [{v.offer_to_phone}] answer>pbx [{v.answer_to_pbx}]  ({v.note})")

    if args.cpu:
        cpu_test(variants, args.cpu_shapes.split(","), args.cpu_calls, args.cpu_seconds)
        return 0

    rtpe = RtpEngine().start()
    failed = True
    try:
        if not args.skip_media:
            rows = packet_table(rtpe, variants, shapes, args.show_sdp)
            print_packet_table(rows)
        if args.webrtc_sdp:
            webrtc_sdp_check(rtpe, variants, shapes, args.show_sdp)
        if args.dtls:
            dtls_test(rtpe, variants)
        failed = False
    finally:
        if rtpe.proc.poll() is not None:
            print(f"\nrtpengine exited with status {rtpe.proc.returncode}")
        rtpe.stop(keep_log=args.keep_log or failed)
        if args.keep_log or failed:
            print(f"\nrtpengine log: {rtpe.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
