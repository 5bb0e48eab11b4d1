"""comfort_noise: CN (payload type 13) never reaches a phone. The SDP a phone
receives never negotiates it (doctor's sample sessions, from PBX and browser
SDPs that carry it), and PT 13 sent through a real rtpengine session is dropped:
by the CN filter in front of rtpengine (the plain-relay path, ok), or by
rtpengine's transcoder (the fallback, a warning), read against the CN path the
running gateway says it takes ($shv(gw_cn), set by its KEMI app)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from gw import cnfilter
from gw.ctl.common import DOCTOR_PREFIX, GwctlError
from gw.ctl.doctor.base import Check, Context, Engine, fail, ok, skip, warn
from gw.ctl.doctor.media_probe import MediaProbe
from gw.ctl.kamailio import Kamailio
from kemi.media import CnBlock
from kemi.settings import HostPort, Settings


def sdp_cn(sdp: str) -> list[str]:
    """What in this SDP still negotiates comfort noise: PT 13 on an m= line, or a CN rtpmap."""
    hits = [f"m=audio payload 13" for m in re.findall(r"^m=audio \d+ \S+ ([\d ]+)", sdp, re.M)
            if "13" in m.split()]
    hits += re.findall(r"^a=rtpmap:\d+ CN/\d+[^\r\n]*", sdp, re.M)
    return hits


def gateway_cn_path(kam: Kamailio) -> Optional[str]:
    """How the running gateway keeps CN from phones: 'filter' or 'transcode'
    (its KEMI app sets $shv(gw_cn) at start), None when Kamailio cannot say."""
    try:
        reply = kam.rpc("pv.shvGet", "gw_cn")
    except GwctlError:
        return None
    value = reply[0].get("value") if reply and isinstance(reply[0], dict) else None
    return value if value in ("filter", "transcode") else None


def cn_block(path: Optional[str]) -> CnBlock:
    """The flags doctor's sample sessions use: the gateway's, the transcoder's when unknown."""
    return CnBlock.FILTER if path == "filter" else CnBlock.TRANSCODE


@dataclass
class CnEvidence:
    """PT 13 sent through rtpengine on the plain-relay path (the filter's job)
    and, when that came out, on the transcoder path; the gateway's CN path."""

    path: Optional[str]
    relay: Optional[cnfilter.CnProbe] = None
    transcoder: Optional[cnfilter.CnProbe] = None


def probe_cn(engine: HostPort, path: Optional[str]) -> CnEvidence:
    ev = CnEvidence(path, relay=cnfilter.probe(engine, CnBlock.FILTER, call_prefix=DOCTOR_PREFIX))
    if ev.relay.relayed and not ev.relay.cn_blocked:
        ev.transcoder = cnfilter.probe(engine, CnBlock.TRANSCODE, call_prefix=DOCTOR_PREFIX)
    return ev


def _fix(cfg: Settings, then: str) -> str:
    low, high = cfg.media_ports
    return (f"Install the CN filter in front of rtpengine's ports: as root on its host, "
            f"rtpengine/cn-filter.sh install {low} {high} (nftables, CAP_NET_ADMIN; compose: the "
            "rtpengine container installs it at start with cap_add NET_ADMIN: check its log; make run "
            f"installs it when run as root). {then} (rtpengine/FLAGS.md)")


def comfort_noise_check(cfg: Settings, probe: MediaProbe, ev: CnEvidence) -> dict:
    """The SDP half here, the RTP half in _packets."""
    target = probe.engine
    if probe.error:
        return skip("comfort_noise", "no sample session (see media_address/media_ports)", target=target)
    found = {f"{name} to the phone": hits for name, sdp in probe.to_phone.items() if (hits := sdp_cn(sdp))}
    data: dict[str, Any] = {"gateway_cn_path": ev.path}
    if found:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items())
        return fail("comfort_noise", f"comfort noise (CN, PT 13) is negotiated toward the phone: {what}",
                    "Browsers drop audio on CN. The gateway's CN flags (kemi/media.py: codec-strip=CN "
                    "with the CN filter, else codec-consume-CN on offers to the phone and "
                    "codec-strip=full + codec-transcode=CN on offers to the PBX; rtpengine/FLAGS.md) are "
                    "not in effect: run this version's kemi/ and an rtpengine built with transcoding "
                    "support (10.5 as in deploy/rtpengine), which the fallback flags need.",
                    target=target, data={**data, "found": found})
    return _packets(cfg, target, ev, data)


def _packets(cfg: Settings, target: str, ev: CnEvidence, data: dict[str, Any]) -> dict:
    """Where PT 13 sent through rtpengine ended up, read against the gateway's CN path."""
    relay = ev.relay
    assert relay is not None
    data["relay_probe"] = relay.summary()
    if not relay.relayed:
        return skip("comfort_noise", f"PT 13 not tested: rtpengine relayed no audio ({relay.summary()}; "
                    "see media_ports)", target=target, data=data)
    sdp_ok = "no CN in the SDP toward the phone; "
    if relay.cn_blocked:
        if ev.path == "transcode":
            return warn("comfort_noise", sdp_ok + "PT 13 is dropped in front of rtpengine (nftables "
                        f"filter: {relay.summary()}), but the gateway still sends every call through "
                        "rtpengine's transcoder (it started before the filter worked)",
                        "Restart the gateway (make run, or docker compose restart gateway): it then "
                        "sees the filter and relays calls plainly.", target=target, data=data)
        return ok("comfort_noise", sdp_ok + "PT 13 sent through rtpengine was dropped in front of it "
                  f"(nftables filter; {relay.summary()}); calls are plain relays", target=target, data=data)
    trans = ev.transcoder
    data["transcoder_probe"] = trans.summary() if trans else None
    missing = f"PT 13 sent through a plain-relay session came out of rtpengine ({relay.summary()})"
    if ev.path == "filter":
        return fail("comfort_noise", missing + ": the CN filter in front of rtpengine is gone or not "
                    "working, and the gateway relays calls without the transcoder, so CN from the "
                    "PBX reaches the phones",
                    _fix(cfg, "Or restart the gateway now: without a working filter it falls back "
                              "to rtpengine's transcoder."), target=target, data=data)
    if trans is None or not trans.cn_blocked:
        return fail("comfort_noise", missing + "; rtpengine's transcoder did not stop it either "
                    f"({trans.summary() if trans else 'not tested'})",
                    _fix(cfg, "The transcoder fallback needs rtpengine with transcoding (Debian's "
                              "rtpengine-daemon 10.5, deploy/rtpengine)."), target=target, data=data)
    how = ("the gateway uses rtpengine's transcoder" if ev.path == "transcode"
           else "the gateway's CN path is unknown (Kamailio did not say); with the default "
                "GW_CN_FILTER=auto it then uses rtpengine's transcoder")
    return warn("comfort_noise", sdp_ok + missing + f": no CN filter in front of rtpengine; {how}, which "
                f"keeps CN from phones ({trans.summary()}) at ~2.4x rtpengine CPU per call and without "
                "kernel forwarding", _fix(cfg, "Then restart the gateway: it sees the filter and relays "
                                               "calls plainly."), target=target, data=data)


def _run(ctx: Context, engine: Optional[Engine]) -> dict:
    assert engine is not None
    if engine.probe is None:
        return skip("comfort_noise", "rtpengine does not answer", target=f"udp:{engine.address}")
    if ctx.cn_path is None:
        ctx.cn_path = gateway_cn_path(ctx.kam) or ""
    path = ctx.cn_path or None
    ev = probe_cn(engine.address, path) if not engine.probe.error else CnEvidence(path)
    return comfort_noise_check(ctx.cfg, engine.probe, ev)


CHECK = Check("comfort_noise", _run, per_engine=True, needs_probe=True)
