"""A SIP dialog (RFC 3261 12) for the media test endpoints: route set, remote
target, tags and CSeq, from either side of the INVITE, and the in-dialog
requests built from it (ACK, re-INVITE, BYE). Plus the SDP helpers both
endpoints need. Small on purpose; built on sipmsg."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from support import sipmsg
from support.sipmsg import Msg


@dataclass
class Dialog:
    call_id: str
    local: str            # our From/To header value, with our tag
    remote: str           # theirs, with their tag
    route: list[str]
    target: str           # remote target (their Contact URI)
    cseq: int
    invite_cseq: int = 1
    uac: bool = True

    @classmethod
    def as_uac(cls, invite: Msg, final: Msg) -> "Dialog":
        return cls(invite.call_id, invite.get("From") or "", final.get("To") or "",
                   list(reversed(final.all("Record-Route"))), final.uri("Contact"),
                   invite.cseq[0], invite.cseq[0], True)

    @classmethod
    def as_uas(cls, invite: Msg, local_tag: str) -> "Dialog":
        to = invite.get("To") or ""
        if ";tag=" not in to.replace(" ", "").lower():
            to = f"{to};tag={local_tag}"
        return cls(invite.call_id, to, invite.get("From") or "", invite.all("Record-Route"),
                   invite.uri("Contact"), 0, invite.cseq[0], False)

    def next_hop_uri(self) -> str:
        return self.route[0].split(">")[0].lstrip("<") if self.route else self.target

    def request(self, method: str, via: str, body: str = "", *, cseq: int | None = None,
                extra: list[tuple[str, str]] = ()) -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        headers = [("Via", via)] + [("Route", r) for r in self.route]
        headers += [("Max-Forwards", "70"), ("From", self.local), ("To", self.remote),
                    ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")]
        headers += list(extra)
        return sipmsg.request(method, self.target, headers, body)

    def ack(self, via: str, body: str = "", extra: list[tuple[str, str]] = ()) -> str:
        """ACK for the 2xx of the last INVITE we sent."""
        return self.request("ACK", via, body, cseq=self.invite_cseq, extra=extra)


# ------------------------------------------------------------------------ SDP
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


@dataclass
class Sdp:
    text: str
    addr: str = ""
    port: int = 0
    proto: str = ""
    pts: list[int] = field(default_factory=list)
    rtpmap: dict[int, str] = field(default_factory=dict)
    direction: str = "sendrecv"

    def pt_of(self, name: str, rate: int = 8000) -> int | None:
        for pt in self.pts:
            enc = self.rtpmap.get(pt) or STATIC.get(pt, "")
            n, _, r = enc.partition("/")
            if n.lower() == name.lower() and r.split("/")[0] == str(rate):
                return pt
        return None

    def codec_names(self) -> list[str]:
        return [f"{(self.rtpmap.get(pt) or STATIC.get(pt, '?')).split('/')[0]}:{pt}" for pt in self.pts]

    def has_cn(self) -> bool:
        return any(n.lower().startswith("cn:") for n in self.codec_names()) or bool(
            re.search(r"^a=rtpmap:\d+ CN/", self.text, re.M | re.I))


STATIC = {0: "PCMU/8000", 8: "PCMA/8000", 9: "G722/8000", 13: "CN/8000"}


def parse_sdp(text: str) -> Sdp:
    sdp = Sdp(text)
    session_dir, media_dir, in_media = None, None, False
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if line.startswith("c=IN IP4 ") and (in_media or not sdp.addr):
            sdp.addr = line.split()[2]
        elif line.startswith("m=audio "):
            parts = line.split()
            sdp.port, sdp.proto = int(parts[1]), parts[2]
            sdp.pts = [int(p) for p in parts[3:]]
            in_media = True
        elif line.startswith("m="):
            in_media = False
        elif line.startswith("a=rtpmap:"):
            pt, enc = line[len("a=rtpmap:"):].split(" ", 1)
            sdp.rtpmap[int(pt)] = enc
        elif line[2:] in DIRECTIONS and line.startswith("a="):
            if in_media:
                media_dir = line[2:]
            else:
                session_dir = line[2:]
    sdp.direction = media_dir or session_dir or "sendrecv"
    if sdp.addr == "0.0.0.0" and sdp.direction == "sendrecv":
        sdp.direction = "sendonly"  # RFC 2543 hold: it may send, nothing is sent to it
    return sdp


def reverse_direction(direction: str) -> str:
    return {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)


def sends(direction: str) -> bool:
    return direction in ("sendrecv", "sendonly")
