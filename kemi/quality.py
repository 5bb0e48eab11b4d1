"""Call quality from rtpengine's `query` reply: per leg loss, jitter, MOS, RTT.
Pure Python, no Kamailio.

Where rtpengine's figures come from (read in rtpengine 10.5's daemon/ssrc.c and
rtcp.c, and measured): every RTCP receiver report block that echoes a sender
report (LSR/DLSR set) becomes one stats block (fraction lost as a whole percent,
rounded down; jitter in ms; round-trip time of that leg, and of both legs
together once the other side has reported too; a MOS from those). A block goes
to the SSRC of the endpoint that *sent* the report: it describes what that
endpoint *received*. The reply's "SSRC" section lists an SSRC only once a block
had a MOS, which needs round-trip times from both legs: so both ends must send
sender reports and answer the other's. Browsers do; Asterisk does (rtcpinterval);
a PBX that sends no RTCP leaves every figure of the call empty.

So the figures of "what came from the phone" are the PBX's reports, found under
the PBX's SSRC, and the other way round. Values rtpengine did not measure stay
None here and are left out of the log line and the metrics, never zero.
"""
from __future__ import annotations

import json
import time
from json.encoder import encode_basestring_ascii as _q   # json.dumps' string encoder (C)
from dataclasses import dataclass, field
from typing import Any, Optional

PHONE = "phone"
PBX = "pbx"
SIDES = (PHONE, PBX)


@dataclass(frozen=True)
class Figures:
    """What came from one leg, as the other end reported it (averages over the
    call's reports that had a MOS)."""
    mos: Optional[float] = None           # 1.0 .. 5.0
    loss: Optional[float] = None          # ratio 0 .. 1 (1 % resolution)
    jitter_ms: Optional[float] = None
    rtt_ms: Optional[float] = None        # both legs' round trips together
    rtt_leg_ms: Optional[float] = None    # the reporting end <-> rtpengine
    samples: int = 0
    mos_lowest: Optional[float] = None


@dataclass(frozen=True)
class Leg:
    side: str                 # "phone" | "pbx" | "?" (could not tell)
    tag: str
    protocol: str = ""
    codec: str = ""
    peer: str = ""            # where its media comes from (address:port as rtpengine sees it)
    local: str = ""           # rtpengine's address:port toward it
    ssrcs: tuple[int, ...] = ()
    packets: int = 0          # RTP packets rtpengine received from it (RTCP too when muxed)
    errors: int = 0
    last_packet: Optional[int] = None
    crypto: str = ""
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallQuality:
    call_id: str
    created: Optional[int]
    legs: tuple[Leg, ...]
    came_from: dict[str, Figures] = field(default_factory=dict)   # side -> figures

    def leg(self, side: str) -> Optional[Leg]:
        return next((leg for leg in self.legs if leg.side == side), None)

    def figures(self, side: str) -> Figures:
        return self.came_from.get(side, Figures())

    @property
    def packets(self) -> int:
        return sum(leg.packets for leg in self.legs)

    @property
    def mos(self) -> Optional[float]:
        """The call is as good as its worse direction."""
        values = [f.mos for f in self.came_from.values() if f.mos is not None]
        return min(values) if values else None

    @property
    def rtt_ms(self) -> Optional[float]:
        values = [f.rtt_ms for f in self.came_from.values() if f.rtt_ms is not None]
        return max(values) if values else None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dicts(value: Any) -> list[dict]:
    """The dictionaries in a list (rtpengine's reply is trusted, but a bug in
    it must cost a call's figures, never the BYE that asked for them)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _int(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _side_of(tag: dict) -> str:
    """WebRTC phones get UDP/TLS/RTP/SAVPF (DTLS-SRTP, ICE), the PBX plain RTP/AVP
    (kemi/media.py): the protocol rtpengine speaks to a leg says which it is."""
    for media in _dicts(tag.get("medias")):
        protocol = str(media.get("protocol") or "")
        flags = _list(media.get("flags"))
        if "SAVP" in protocol or "DTLS-SRTP" in flags or "ICE" in flags:
            return PHONE
        if protocol.startswith("RTP/AVP"):
            return PBX
    return "?"


def _endpoint(ep: Any) -> str:
    if not isinstance(ep, dict) or not ep.get("address"):
        return ""
    return f"{ep['address']}:{ep.get('port', '')}"


def _counted(tag: dict) -> tuple[list[dict], list[dict], tuple[int, ...], int]:
    """A tag's medias, its RTP streams (the first stream when none is marked RTP),
    its SSRCs and the RTP packets rtpengine received from it: what every call's
    quality line needs (_leg adds the rest for gwctl)."""
    medias = _dicts(tag.get("medias"))
    streams = [s for m in medias for s in _dicts(m.get("streams"))]
    rtp = [s for s in streams if "RTP" in _list(s.get("flags"))] or streams[:1]
    ssrcs = tuple(sorted({v for v in (_int(s.get("SSRC")) for s in streams) if v is not None}))
    packets = sum(_int(_dict(s.get("stats")).get("packets")) or 0 for s in rtp)
    return medias, rtp, ssrcs, packets


def _leg(tag: dict, side: str, detail: bool = True) -> Leg:
    """One leg; without `detail` only what the call.quality line needs (side,
    tag, SSRCs, packets): the line is written at every call's end, the rest only
    for gwctl."""
    medias, rtp, ssrcs, packets = _counted(tag)
    if not detail:
        return Leg(side, str(tag.get("tag") or ""), ssrcs=ssrcs, packets=packets)
    first = medias[0] if medias else {}
    head = rtp[0] if rtp else {}
    last = [v for v in (_int(s.get("last packet")) for s in rtp) if v]
    return Leg(
        side=side,
        tag=str(tag.get("tag") or ""),
        protocol=str(first.get("protocol") or ""),
        codec=str(first.get("codec") or ""),
        peer=_endpoint(head.get("endpoint")),
        local=f"{head['local address']}:{head.get('local port', '')}" if head.get("local address") else "",
        ssrcs=ssrcs,
        packets=packets,
        errors=sum(_int(_dict(s.get("stats")).get("errors")) or 0 for s in rtp),
        last_packet=max(last) if last else None,
        crypto=str(head.get("crypto suite") or ""),
        flags=tuple(str(f) for f in _list(first.get("flags"))),
    )


def _figures(entry: dict) -> Figures:
    avg, low = _dict(entry.get("average MOS")), _dict(entry.get("lowest MOS"))
    mos = _int(avg.get("MOS"))
    loss = _int(avg.get("packet loss"))
    jitter = _int(avg.get("jitter"))
    rtt = _int(avg.get("round-trip time"))
    rtt_leg = _int(avg.get("round-trip time leg"))
    lowest = _int(low.get("MOS"))
    return Figures(
        # rtpengine: MOS in tenths (0 = none), loss in whole percent, jitter in
        # ms, round-trip times in microseconds (0 = not measured)
        mos=mos / 10 if mos else None,
        loss=min(max(loss, 0), 100) / 100 if loss is not None else None,
        jitter_ms=float(jitter) if jitter is not None else None,
        rtt_ms=rtt / 1000 if rtt else None,
        rtt_leg_ms=rtt_leg / 1000 if rtt_leg else None,
        samples=_int(avg.get("samples")) or 0,
        mos_lowest=lowest / 10 if lowest else None,
    )


def parse(reply: dict, call_id: str = "", caller_tag: str = "", caller_side: str = "",
          detail: bool = True) -> CallQuality:
    """The legs and figures of one call from an ng `query` (or `delete`) reply.

    A leg is told apart by its protocol; when both legs look alike (a plain
    SIP phone), the caller's From-tag and which side called decide. Without
    `detail` the legs carry only what the call.quality line needs (_leg)."""
    tags = [t for t in _dict(reply.get("tags")).values() if isinstance(t, dict) and _dicts(t.get("medias"))]
    sides = [_side_of(t) for t in tags]
    if caller_tag and caller_side in SIDES and (len(set(sides)) < len(sides) or "?" in sides):
        other = PBX if caller_side == PHONE else PHONE
        sides = [caller_side if str(t.get("tag")) == caller_tag else other for t in tags]
    legs = tuple(_leg(t, s, detail) for t, s in zip(tags, sides))
    came_from: dict[str, Figures] = {}
    ssrc_stats = _dict(reply.get("SSRC"))
    for reporter in legs:
        if reporter.side not in SIDES:
            continue
        # reports sent by this leg describe what it received: what came from the other leg
        entries = [ssrc_stats[str(s)] for s in reporter.ssrcs
                   if isinstance(ssrc_stats.get(str(s)), dict)]
        if not entries:
            continue
        best = max((_figures(e) for e in entries), key=lambda f: f.samples)
        came_from[PBX if reporter.side == PHONE else PHONE] = best
    return CallQuality(call_id or str(reply.get("call-id") or ""), _int(reply.get("created")), legs,
                       came_from)


def parse_json(text: str, **kw: Any) -> Optional[CallQuality]:
    """From Kamailio's rtpengine_query_v("j", ...) output; None if unreadable."""
    try:
        reply = json.loads(text)
    except ValueError:
        return None
    return parse(reply, **kw) if isinstance(reply, dict) else None


def had_media(call: CallQuality, answered: bool) -> bool:
    """Worth a quality line: an answered call (even one whose media never
    arrived: that is the worst quality of all), or one that carried early media."""
    return answered or call.packets > 0


def _fmt(value: Optional[float], digits: int) -> Optional[str]:
    return None if value is None else f"{value:.{digits}f}"


def log_fields(call: CallQuality) -> dict[str, Optional[str]]:
    """The figures of the call.quality line; None values are left out by logfmt."""
    phone, pbx = call.figures(PHONE), call.figures(PBX)
    fields: dict[str, Optional[str]] = {
        "mos": _fmt(call.mos, 1),
        "loss_phone": _fmt(phone.loss, 2),
        "loss_pbx": _fmt(pbx.loss, 2),
        "jitter_ms_phone": _fmt(phone.jitter_ms, 0),
        "jitter_ms_pbx": _fmt(pbx.jitter_ms, 0),
        "rtt_ms": _fmt(call.rtt_ms, 1),
    }
    for side in SIDES:
        leg = call.leg(side)
        fields[f"packets_{side}"] = str(leg.packets) if leg is not None else None
    return fields


@dataclass(frozen=True)
class CallEnd:
    call: CallQuality
    fields: dict[str, Optional[str]]      # the call.quality line after its call_id


# The dialog's value once its quality line is out: BYEs crossing each other, or
# a BYE after a failed re-INVITE already ended the media, find rtpengine's call
# still there (its delete-delay) and must not count the call twice.
REPORTED = "reported"


def dlg_call(direction: str, dn: str, from_tag: str) -> str:
    """What the dialog keeps from the initial INVITE for the call's end: which
    way it went (inbound: to the agent), the agent's DN and the caller's tag."""
    # json.dumps([...]) written out with its own string encoder (every call's INVITE)
    return f"[{_q(direction)}, {_q(dn or '')}, {_q(from_tag or '')}]"


def queue_key(call_id: str, dlg_value: str, start_ts: Any, answered: bool, ended: float) -> str:
    """What at_end needs besides rtpengine's reply, in one string (kemi/qualityroute.py
    queues the reply with it): tab-separated, the Call-ID last (a Call-ID holds no
    tab, a dlg_call() value is JSON, which escapes them)."""
    return f"{dlg_value}\t{start_ts or ''}\t{1 if answered else 0}\t{ended:.3f}\t{call_id}"


def read_queue_key(key: str) -> tuple[str, str, str, bool, float]:
    """(call_id, dlg_value, start_ts, answered, ended) of queue_key(); ValueError if not one."""
    dlg_value, start_ts, answered, ended, call_id = key.split("\t", 4)
    return call_id, dlg_value, start_ts, answered == "1", float(ended)


def at_end(query_json: str, dlg_value: str, start_ts: Any, answered: bool,
           now: Optional[float] = None) -> Optional[CallEnd]:
    """The quality line of a call that ends (None: no media, nothing to say),
    from rtpengine's query reply (JSON), the dialog's dlg_call() value and the
    dialog's start (the 2xx, epoch seconds; only answered calls have a duration)."""
    if dlg_value == REPORTED:
        return None
    try:
        direction, dn, from_tag = (list(json.loads(dlg_value)) + ["", "", ""])[:3]
    except (ValueError, TypeError):
        direction = dn = from_tag = ""
    call = parse_json(query_json, caller_tag=str(from_tag),
                      caller_side=PHONE if direction == "outbound" else PBX, detail=False)
    if call is None or not had_media(call, answered):
        return None
    start = _int(start_ts) or 0
    now = time.time() if now is None else now
    fields: dict[str, Optional[str]] = {
        "dn": str(dn) or None, "direction": str(direction) or None,
        "duration": str(max(int(now - start), 0)) if answered and start > 0 else None,
    }
    fields.update(log_fields(call))
    return CallEnd(call, fields)
