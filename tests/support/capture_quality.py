"""Capture the rtpengine `query` replies that tests/unit/test_quality.py parses:
real calls through a private gateway (the same daemons as the tests), one per
situation, each queried just before its BYE, as the gateway does at a call's
end. Addresses are rewritten to documentation ones (rtpengine 192.0.2.10, the
PBX 198.51.100.20, the phone 203.0.113.50) before anything is written.

    .venv/bin/python tests/support/capture_quality.py   # rewrites tests/data/rtpengine/
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "rtpengine"
RTPENGINE, PBX, PHONE = "192.0.2.10", "198.51.100.20", "203.0.113.50"


def sanitize(reply: dict) -> dict:
    """Loopback addresses out: rtpengine's own sockets, then each leg's peer
    by the leg's protocol (the phone's is DTLS-SRTP, the PBX's plain RTP)."""
    out = json.loads(json.dumps(reply))
    for tag in (out.get("tags") or {}).values():
        for media in tag.get("medias") or []:
            peer = PHONE if "SAVP" in str(media.get("protocol")) else PBX
            for stream in media.get("streams") or []:
                if "local address" in stream:
                    stream["local address"] = RTPENGINE
                for key in ("endpoint", "advertised endpoint"):
                    ep = stream.get(key)
                    if isinstance(ep, dict) and ep.get("address"):
                        ep["address"] = peer
    text = json.dumps(out)
    assert "127.0.0." not in text, "a loopback address is left in the capture"
    return out


def _scenarios() -> list[tuple[str, Any]]:
    from support.media_calls import PBX_TONE, Scenario
    from support.rtp_pbx import MediaPlan

    def plan(**kw: Any) -> MediaPlan:
        return MediaPlan(freq=PBX_TONE, **kw)
    return [
        ("clean_phone_to_pbx", Scenario("clean", "phone->pbx", "4681", plan(), hangup="phone")),
        ("lossy_pbx_leg_phone_to_pbx", Scenario("lossy", "phone->pbx", "4682", plan(drop_ratio=0.1))),
        ("lossy_pbx_leg_pbx_to_phone", Scenario("lossy in", "pbx->phone", "4683", plan(drop_ratio=0.1))),
        ("pbx_without_rtcp", Scenario("no rtcp", "phone->pbx", "4684", plan(rtcp_interval=None))),
    ]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest
    from support.media_calls import run_all
    from support.rtp_pbx import MediaPlan, RtpPbx
    from support.webrtc_phone import LoopThread

    items = _scenarios()
    replies: dict[str, dict] = {}

    def query_before_bye(name: str, talk: float = 10.0):
        async def script(sc) -> None:
            await asyncio.sleep(talk)
            replies[name] = sc_stack.ng().query(sc.call.call_id)
        return script

    sc_stack = conftest._start_stack(ROOT / "tests" / "_artifacts" / "capture_quality")
    pbx = RtpPbx(sc_stack.pbx.host, sc_stack.pbx.port, MediaPlan())
    loop = LoopThread()
    try:
        for name, sc in items:
            sc.script = query_before_bye(name)
        loop.run(run_all([sc for _, sc in items], sc_stack, pbx), timeout=120)
        for _, sc in items:
            sc.check()
    finally:
        loop.close()
        pbx.close()
        conftest._stop_stack(sc_stack)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, reply in replies.items():
        (OUT / f"query_{name}.json").write_text(json.dumps(sanitize(reply), indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT / f'query_{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
