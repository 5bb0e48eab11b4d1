"""comfort_noise: the SDP a phone receives never negotiates CN (payload type 13),
from sample PBX and browser SDPs that carry it."""
from __future__ import annotations

import re
from typing import Optional

from gw.ctl.doctor.base import Check, Context, Engine, fail, ok, skip
from gw.ctl.doctor.media_probe import MediaProbe


def sdp_cn(sdp: str) -> list[str]:
    """What in this SDP still negotiates comfort noise: PT 13 on an m= line, or a CN rtpmap."""
    hits = [f"m=audio payload 13" for m in re.findall(r"^m=audio \d+ \S+ ([\d ]+)", sdp, re.M)
            if "13" in m.split()]
    hits += re.findall(r"^a=rtpmap:\d+ CN/\d+[^\r\n]*", sdp, re.M)
    return hits


def comfort_noise_check(probe: MediaProbe) -> dict:
    """CN toward the phone: the SDP a phone receives must not negotiate it (offers
    to the PBX do carry rtpengine's own CN, by design: rtpengine/FLAGS.md)."""
    target = probe.engine
    if probe.error:
        return skip("comfort_noise", "no sample session (see media_address/media_ports)", target=target)
    found = {f"{name} to the phone": hits for name, sdp in probe.to_phone.items() if (hits := sdp_cn(sdp))}
    if found:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items())
        return fail("comfort_noise", f"comfort noise (CN, PT 13) is negotiated toward the phone: {what}",
                    "Browsers drop audio on CN. The gateway's CN flags (kemi/media.py: codec-consume-CN "
                    "on offers to the phone, codec-strip=full + codec-transcode=CN on offers to the PBX; "
                    "rtpengine/FLAGS.md) are not in effect: run this version's kemi/ and an rtpengine "
                    "built with transcoding support (10.5 as in deploy/rtpengine), which these flags need.",
                    target=target, data={"found": found})
    return ok("comfort_noise", "no CN in the SDP toward the phone (outbound answer, inbound offer) from "
              "sample PBX and browser SDPs that carry CN 13", target=target)


def _run(ctx: Context, engine: Optional[Engine]) -> dict:
    assert engine is not None
    if engine.probe is None:
        return skip("comfort_noise", "rtpengine does not answer", target=f"udp:{engine.address}")
    return comfort_noise_check(engine.probe)


CHECK = Check("comfort_noise", _run, per_engine=True, needs_probe=True)
