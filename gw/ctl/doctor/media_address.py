"""media_address: the address rtpengine advertises to phones (c= and ICE
candidates of the SDP a phone receives) is one the phones can reach (--phones,
the rule in `gwctl doctor --help`)."""
from __future__ import annotations

import ipaddress
from typing import Optional

from gw.ctl.doctor.base import Check, Context, Engine, fail, ok, skip
from gw.ctl.doctor.media_probe import MediaProbe, sdp_addresses
from kemi.settings import Settings

_PRIVATE = [ipaddress.ip_network(n) for n in
            ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")]


def address_kind(ip: str) -> str:
    """loopback, unspecified, link-local, private (RFC 1918, CGNAT, ULA) or public."""
    addr = ipaddress.ip_address(ip)
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if any(addr in net for net in _PRIVATE):
        return "private"
    return "public"


# Where the phones are (--phones) -> the kinds of address they reach.
REACHABLE = {
    "local": {"loopback", "link-local", "private", "public"},
    "lan": {"private", "public"},
    "internet": {"public"},
}
PHONES = tuple(REACHABLE)          # local, lan, internet


def media_address_check(cfg: Settings, probe: MediaProbe, phones: str) -> dict:
    target = probe.engine
    if probe.error and "port" not in probe.error.lower():
        return fail("media_address", f"rtpengine refused the gateway's sample offer: {probe.error}",
                    "Read rtpengine's log: it must accept the gateway's flags (rtpengine/FLAGS.md); "
                    "calls get 503 until it does.", target=target)
    if probe.error:
        return skip("media_address", "no sample session (see media_ports)", target=target)
    advertised = []
    for sdp in probe.to_phone.values():
        advertised += [a for a in sdp_addresses(sdp) if a not in advertised]
    if not advertised:
        return fail("media_address", "the SDP toward the phone carries no address",
                    "rtpengine's interface has no address: check its interface= setting.", target=target)
    kinds = {a: address_kind(a) for a in advertised}
    bad = {a: k for a, k in kinds.items() if k not in REACHABLE[phones]}
    shown = ", ".join(f"{a} ({k})" for a, k in kinds.items())
    data = {"advertised": advertised, "kinds": kinds, "bound": probe.bound, "phones": phones,
            "media_ip": cfg.media_ip}
    if bad:
        where = {"local": "on this host", "lan": "on your network", "internet": "on the internet"}[phones]
        return fail(
            "media_address",
            f"rtpengine advertises {shown} to phones in c= and ICE candidates; phones {where} "
            f"cannot reach {', '.join(bad)}",
            "Give rtpengine an address the phones reach: its interface= (make run: GW_MEDIA_IP) on "
            "a public address, or behind 1:1 NAT interface=PRIVATE!PUBLIC (compose: "
            "RTPENGINE_ADVERTISED_IP in deploy/.env). If the phones really are "
            f"{'on this host' if phones != 'local' else 'elsewhere'}, say so: gwctl doctor "
            f"--phones {'local' if phones != 'local' else 'lan'}.",
            target=target, data=data)
    return ok("media_address", f"rtpengine advertises {shown} to phones; reachable for phones "
              f"{phones} (--phones)", target=target, data=data)


def _run(ctx: Context, engine: Optional[Engine]) -> dict:
    assert engine is not None
    if engine.probe is None:
        return skip("media_address", "rtpengine does not answer", target=f"udp:{engine.address}")
    return media_address_check(ctx.cfg, engine.probe, ctx.phones)


CHECK = Check("media_address", _run, per_engine=True, needs_probe=True)
