"""rtpengine flag choice. Pure Python, no Kamailio.

Flags are chosen by the side that RECEIVES the SDP: a WebRTC phone must get
UDP/TLS/RTP/SAVPF with ICE, DTLS and rtcp-mux; the PBX must get plain RTP/AVP
with none of those. The system this gateway replaces used the WebRTC flags in
both directions, and Asterisk/Genesys then rejected or mangled the SDP.

Whether the SDP's own addresses are trusted depends on the side that SENT it:
the PBX (or its media server, which may sit on another address than SIP Server)
says where it is; a phone behind NAT does not, and ICE finds it instead.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass


class Side(enum.Enum):
    PHONE = "phone"
    PBX = "pbx"

    @property
    def other(self) -> "Side":
        return Side.PBX if self is Side.PHONE else Side.PHONE


class Op(enum.Enum):
    OFFER = "offer"
    ANSWER = "answer"


# Comfort noise must never reach a phone (browsers drop audio on it). CN is
# stripped from every SDP toward the phone, and never offered to the PBX, so a
# compliant PBX never sends it. A PBX that sends PT 13 anyway is handled at the
# RTP level by the flags in _CN_BLOCK (see rtpengine/FLAGS.md).
_CN_STRIP = ("codec-strip=CN",)
_CN_BLOCK: tuple[str, ...] = ()

_TO_PHONE = ("ICE=force", "SDES-off", "generate-mid", "rtcp-mux-require")
_TO_PBX = ("ICE=remove", "DTLS=off", "SDES-off", "rtcp-mux-demux")

_FROM = {
    # A PBX's SDP address is authoritative; a phone's is not (NAT, .invalid).
    Side.PBX: ("trust-address",),
    Side.PHONE: (),
}


@dataclass(frozen=True)
class Flags:
    tokens: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(self.tokens)


@functools.lru_cache(maxsize=None)
def flags(op: Op, receiver: Side, sender: Side | None = None) -> Flags:
    """The rtpengine module flag string for an offer/answer going to `receiver`.

    `sender` defaults to the other side; it differs only for plain SIP phones
    (load tests, desk phones) calling the PBX, where both sides are plain RTP."""
    sender = receiver.other if sender is None else sender
    tokens: list[str] = ["replace-origin", "replace-session-connection"]
    tokens += _FROM[sender]
    if receiver is Side.PHONE:
        tokens += _TO_PHONE
        if op is Op.OFFER:
            tokens.append("UDP/TLS/RTP/SAVPF")
        tokens += _CN_STRIP
    else:
        tokens += _TO_PBX
        if op is Op.OFFER:
            tokens.append("RTP/AVP")
            tokens += _CN_STRIP
        tokens += _CN_BLOCK
    return Flags(tuple(tokens))


def ng_params(flags_: Flags) -> dict[str, object]:
    """The ng dictionary Kamailio's rtpengine module builds from a flag string,
    for the tokens this gateway uses; lets tests drive rtpengine directly with
    exactly what the gateway would send."""
    out: dict[str, object] = {}

    def add(key: str, value: str) -> None:
        out.setdefault(key, [])
        out[key].append(value)  # type: ignore[union-attr]

    for token in flags_.tokens:
        name, sep, value = token.partition("=")
        if name.startswith("replace-"):
            add("replace", name[len("replace-"):])
        elif name in ("ICE", "DTLS") and sep:
            out[name] = value
        elif name.startswith("SDES-"):
            add("SDES", name[len("SDES-"):])
        elif name.startswith("rtcp-mux-"):
            add("rtcp-mux", name[len("rtcp-mux-"):])
        elif "/" in name and not sep:
            out["transport-protocol"] = name
        elif name.startswith("codec-") and sep:
            codec = out.setdefault("codec", {})
            codec.setdefault(name[len("codec-"):], []).extend(value.split(","))  # type: ignore[union-attr]
        elif sep:
            out[name] = value
        else:
            add("flags", name)
    return out
