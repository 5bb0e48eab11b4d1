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
import re
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


# A failed re-INVITE keeps the session it tried to change, except these final
# statuses, after which the dialog is over (RFC 3261 12.2.1.2) and so is its media.
DIALOG_ENDING = frozenset({408, 481})


class CnBlock(enum.Enum):
    """How comfort noise (RTP payload type 13) is kept from the phones.

    Browsers drop audio on CN, and stripping CN from the SDP is not enough:
    rtpengine relays RTP of a payload type it has no codec for untouched, and
    Asterisk and Genesys media servers send CN in silences, sometimes without
    their SDP ever offering it (rtpengine/FLAGS.md)."""
    # An nftables filter in front of rtpengine's media ports drops PT 13
    # (rtpengine/cn-filter.sh); rtpengine only strips CN from the SDP and every
    # stream stays a plain relay (kernel-forwardable, ~1/2.4 the CPU).
    FILTER = "filter"
    # No filter: rtpengine must *know* PT 13 on the PBX leg and decode it
    # (its transcoder engages for the whole call).
    TRANSCODE = "transcode"


# CnBlock.TRANSCODE, the fallback when no filter is in front of rtpengine:
#  - offers to the PBX: the phone's codecs without its CN, stripped for good
#    ("full", so no answer brings it back to the phone; the except list is
#    what browsers offer besides CN), and rtpengine's own CN offered instead
#    (transcode=CN): CN from the PBX then reaches rtpengine's CN decoder and
#    the phone gets comfort noise as audio in its codec;
#  - offers to the phone: the PBX's CN is consumed the same way (hidden from
#    the phone, decoded by rtpengine);
#  - every SDP from the PBX gets CN declared before rtpengine sees it
#    (declare_cn, in app.py through the rtpengine module's read_sdp_pv), so a
#    PBX sending PT 13 it never offered still hits that decoder.
# Measured end to end in tests/test_media_webrtc.py (0 PT 13 at a real
# DTLS-SRTP phone); the flags were chosen with bench/experiments/cn (README there).
_CN_OFFER_TO_PBX = ("codec-strip=full", "codec-except=opus", "codec-except=G722",
                    "codec-except=PCMU", "codec-except=PCMA", "codec-except=telephone-event",
                    "codec-transcode=CN")
_CN_OFFER_TO_PHONE = ("codec-consume-CN",)
# CnBlock.FILTER: CN is taken out of every offer, so neither side negotiates
# it (the phone never sees it; the PBX never gets the phone's); what the PBX
# sends anyway dies in the filter. Strip alone creates no transcoder.
_CN_STRIP = ("codec-strip=CN",)

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
def flags(op: Op, receiver: Side, sender: Side | None = None,
          cn: CnBlock = CnBlock.TRANSCODE) -> Flags:
    """The rtpengine module flag string for an offer/answer going to `receiver`.

    `sender` defaults to the other side; it differs only for plain SIP phones
    (load tests, desk phones) calling the PBX, where both sides are plain RTP.
    `cn` is how CN is kept from the phones; TRANSCODE (the default) is the one
    that needs nothing in front of rtpengine."""
    sender = receiver.other if sender is None else sender
    tokens: list[str] = ["replace-origin", "replace-session-connection"]
    tokens += _FROM[sender]
    if receiver is Side.PHONE:
        tokens += _TO_PHONE
        if op is Op.OFFER:
            tokens.append("UDP/TLS/RTP/SAVPF")
            tokens += _CN_STRIP if cn is CnBlock.FILTER else _CN_OFFER_TO_PHONE
    else:
        tokens += _TO_PBX
        if op is Op.OFFER:
            tokens.append("RTP/AVP")
            tokens += _CN_STRIP if cn is CnBlock.FILTER else _CN_OFFER_TO_PBX
    return Flags(tuple(tokens))


def flag_text(offer: bool, to_phone: bool, from_phone: bool, cn: CnBlock) -> str:
    """flags() as the rtpengine module's flag string, for the routing's hot path:
    all of them built once, looked up by plain booleans (an Enum's hash is Python
    code, and an lru_cache lookup hashes three of them)."""
    return _FLAG_TEXT[cn is CnBlock.FILTER][offer][to_phone][from_phone]


def rtpengine_sdp(sdp: str, sender: Side, cn: CnBlock = CnBlock.TRANSCODE) -> str:
    """The SDP rtpengine must read for an offer/answer that `sender` sent: the
    PBX's with CN declared when rtpengine has to decode it (TRANSCODE); as it
    is otherwise (with the filter nothing needs to know PT 13)."""
    if sender is Side.PBX and cn is CnBlock.TRANSCODE:
        return declare_cn(sdp)
    return sdp


def declare_cn(sdp: str) -> str:
    """The PBX's SDP as rtpengine must see it: CN (13 CN/8000) declared on
    every active RTP audio stream with an 8 kHz codec that does not declare it
    already, so rtpengine decodes CN the PBX sends without having offered it
    (see _CN_OFFER_TO_PBX). Only rtpengine sees this; its output replaces the
    body. Every SDP from the PBX passes here: it works on each media section's
    text as a whole, not line by line (issue 14; the same output)."""
    if "m=audio" not in sdp:
        return sdp
    eol = "\r\n" if "\r\n" in sdp else "\n"
    starts = [0] if sdp.startswith("m=") else []
    i = sdp.find(eol + "m=")
    while i >= 0:
        starts.append(i + len(eol))
        i = sdp.find(eol + "m=", i + len(eol))
    if not starts:
        return sdp
    out = [sdp[:starts[0]]]
    for k, begin in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(sdp)
        out.append(_section_with_cn(sdp[begin:end], eol))
    return "".join(out)


_RTPMAP = re.compile(r"^a=rtpmap:(\S*)[ \t]+(\S+)", re.M)


def _section_with_cn(section: str, eol: str) -> str:
    """One media section (its text, with its line breaks)."""
    if not section.startswith("m=audio "):
        return section
    nl = section.find(eol)
    mline = section if nl < 0 else section[:nl]
    parts = mline.split()
    pts = parts[3:]
    if len(parts) < 4 or parts[1] == "0" or not parts[2].startswith("RTP/") or "13" in pts:
        return section
    last = section.rfind(eol + "a=rtpmap:")
    if last < 0 or "cn/" in section.lower() or ("0" not in pts and "8" not in pts):
        # The rare cases, exactly: no rtpmap line to follow, maybe CN already,
        # no static 8 kHz codec (look the encodings up).
        if last < 0:
            return eol.join(_with_cn(section.split(eol)))
        rtpmaps = {pt: enc.lower() for pt, enc in _RTPMAP.findall(section)}
        if any(enc.startswith("cn/") for enc in rtpmaps.values()):
            return section
        if not any(pt in ("0", "8") or (rtpmaps.get(pt, "").endswith("/8000")
                                         and not rtpmaps[pt].startswith("telephone-event"))
                   for pt in pts):
            return section
    # after the last a=rtpmap line (the m-line comes first, so it follows a line break)
    end = section.find(eol, last + len(eol))
    if end < 0:
        end = len(section)
    return mline + " 13" + section[len(mline):end] + eol + "a=rtpmap:13 CN/8000" + section[end:]


def _with_cn(section: list[str]) -> list[str]:
    if not section or not section[0].startswith("m=audio "):
        return list(section)
    parts = section[0].split()
    if len(parts) < 4 or parts[1] == "0" or not parts[2].startswith("RTP/"):
        return list(section)
    pts = parts[3:]
    rtpmaps = {line.split()[0][len("a=rtpmap:"):]: line.split()[1].lower()
               for line in section if line.startswith("a=rtpmap:") and len(line.split()) > 1}
    if "13" in pts or any(enc.startswith("cn/") for enc in rtpmaps.values()):
        return list(section)
    narrowband = any(pt in ("0", "8") or (rtpmaps.get(pt, "").endswith("/8000")
                                         and not rtpmaps[pt].startswith("telephone-event"))
                     for pt in pts)
    if not narrowband:
        return list(section)
    new = [section[0] + " 13"] + section[1:]
    last_map = max((i for i, line in enumerate(new) if line.startswith("a=rtpmap:")), default=None)
    if last_map is None:
        # after the m-line's c=/b= lines, or at the end of the section
        last_map = max((i for i, line in enumerate(new) if line[:2] in ("m=", "c=", "b=")))
        # keep a trailing empty string (the body's final line break) last
        if new[-1] == "" and last_map == len(new) - 1:
            last_map -= 1
    new.insert(last_map + 1, "a=rtpmap:13 CN/8000")
    return new


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


# flag_text's table: [filter][offer][to_phone][from_phone]
_FLAG_TEXT = [[[[str(flags(Op.OFFER if offer else Op.ANSWER, Side.PHONE if to_phone else Side.PBX,
                           Side.PHONE if from_phone else Side.PBX, cn))
                 for from_phone in (False, True)] for to_phone in (False, True)] for offer in (False, True)]
              for cn in (CnBlock.TRANSCODE, CnBlock.FILTER)]
