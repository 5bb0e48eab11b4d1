"""media_ports: rtpengine allocates ports inside GW_MEDIA_PORTS, answers an ICE
check on its port toward the phone, and relays RTP both ways (the firewall lets
media through); when rtpengine is down, whether another program holds the range."""
from __future__ import annotations

import random
import socket
from typing import Any, Optional

from gw.ctl.doctor.base import Check, Context, Engine, fail, ok, skip
from gw.ctl.doctor.media_probe import MediaProbe
from kemi.settings import HostPort, Settings


def is_local_address(ip: str) -> bool:
    """Is ip an address of this host (can a socket bind it)?"""
    try:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def bind_sample(ip: str, low: int, high: int, count: int = 8) -> dict:
    """Can ports of the range be bound on ip? A sample: both ends and random ones."""
    ports = sorted({low, high, *random.sample(range(low, high + 1), min(count - 2, high - low + 1))})
    result: dict[str, Any] = {"ip": ip, "sampled": len(ports), "free": 0, "in_use": [], "error": ""}
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for port in ports:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((ip, port))
            result["free"] += 1
        except OSError as exc:
            if exc.errno == 98:          # EADDRINUSE
                result["in_use"].append(port)
            else:
                result["error"] = f"{exc.strerror} ({ip})"
                break
    return result


def media_ports_check(cfg: Settings, probe: Optional[MediaProbe], engine: HostPort) -> dict:
    target = f"udp:{engine}"
    low, high = cfg.media_ports
    sample = bind_sample(cfg.media_ip, low, high) if is_local_address(cfg.media_ip) else None
    data: dict[str, Any] = {"range": f"{low}-{high}", "media_ip": cfg.media_ip, "bind_sample": sample}
    firewall_fix = (f"Open UDP {low}-{high} (GW_MEDIA_PORTS) toward rtpengine in the host firewall and any "
                    "security group (nft list ruleset / iptables -S / ufw status), and make sure nothing "
                    "else drops it on the way in.")
    if probe is None:
        if sample and sample["free"] == 0 and sample["in_use"]:
            return fail("media_ports", f"rtpengine is down, and every sampled port of {low}-{high} on "
                        f"{cfg.media_ip} is taken by another program", "Give rtpengine a port range "
                        "nothing else uses (Asterisk's rtp.conf rtpstart/rtpend must not overlap).",
                        target=target, data=data)
        return skip("media_ports", "rtpengine does not answer; ports not probed", target=target, data=data)
    data.update(ports=probe.ports, bound=probe.bound, stun_reply=probe.stun_reply,
                relay_ports=list(probe.relay_ports), relayed=probe.relayed)
    if probe.error:
        if "port" not in probe.error.lower():
            return skip("media_ports", "no sample session (see media_address)", target=target, data=data)
        taken = f"; {len(sample['in_use'])}/{sample['sampled']} sampled ports in use on {cfg.media_ip}" \
            if sample else ""
        return fail("media_ports", f"rtpengine could not allocate media ports: {probe.error}{taken}",
                    "rtpengine's port range is exhausted or taken by another program: give it a range "
                    f"of its own (port-min/port-max = GW_MEDIA_PORTS {low}-{high}; Asterisk's rtp.conf "
                    "must not overlap) and large enough (4 ports per call).", target=target, data=data)
    outside = sorted(p for p in probe.ports if not low <= p <= high)
    problems, fixes = [], []
    if outside:
        problems.append(f"rtpengine allocated port(s) {outside} outside GW_MEDIA_PORTS {low}-{high}")
        fixes.append("Make rtpengine's port-min/port-max and GW_MEDIA_PORTS (and the firewall rules "
                     "built from it) the same range.")
    closed = False
    if not probe.stun_reply:
        closed = True
        problems.append(f"no answer to an ICE check sent to {probe.bound}:{probe.phone_port} "
                        "(rtpengine's port toward the phone)")
    lost = [way for way, came in probe.relayed.items() if not came]
    if lost:
        closed = True
        a_port, b_port = probe.relay_ports
        problems.append(f"RTP sent to {probe.bound}:{b_port} and {probe.bound}:{a_port} was not relayed "
                        f"({', '.join(lost)} lost)")
    if closed:
        fixes.append(firewall_fix)
    if problems:
        return fail("media_ports", "; ".join(problems), " ".join(fixes), target=target, data=data)
    extra = ""
    if sample and sample["error"]:
        extra = f"; GW_MEDIA_IP: {sample['error']}"
    elif sample and sample["in_use"]:
        extra = f"; {len(sample['in_use'])}/{sample['sampled']} sampled ports in use on {cfg.media_ip}"
    return ok("media_ports", f"ports {sorted(probe.ports)} in {low}-{high}; rtpengine at {probe.bound} "
              f"answered an ICE check ({probe.stun_reply}) and relayed RTP both ways{extra}",
              target=target, data=data)


def _run(ctx: Context, engine: Optional[Engine]) -> dict:
    assert engine is not None
    return media_ports_check(ctx.cfg, engine.probe, engine.address)


CHECK = Check("media_ports", _run, per_engine=True, needs_probe=True)
