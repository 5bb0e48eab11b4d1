"""Parse and build SIP messages (requests and responses) for the reliability
tests' PBX emulator and WebSocket phone. Small and strict enough for what the
gateway sends; not a general SIP stack."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from kemi.bindings import split_top  # the gateway's own splitter (pure)

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
           "l": "content-length", "c": "content-type", "k": "supported", "s": "subject"}
# Headers whose comma-separated values are separate entries (RFC 3261 7.3.1).
LISTS = {"via", "record-route", "route", "path", "contact"}


def new_branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:16]


def new_tag() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Msg:
    first: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""

    @property
    def is_request(self) -> bool:
        return not self.first.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        return self.first.split(" ", 1)[0] if self.is_request else self.cseq[1]

    @property
    def ruri(self) -> str:
        return self.first.split(" ")[1]

    @property
    def status(self) -> int:
        return int(self.first.split(" ")[1]) if not self.is_request else 0

    @property
    def reason(self) -> str:
        return self.first.split(" ", 2)[2] if not self.is_request else ""

    def all(self, name: str) -> list[str]:
        name = COMPACT.get(name.lower(), name.lower())
        values = [v for k, v in self.headers if COMPACT.get(k.lower(), k.lower()) == name]
        if name in LISTS:
            return [part for v in values for part in split_top(v)]
        return values

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    @property
    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = (self.get("CSeq") or "0 ?").partition(" ")
        return int(num), method.strip()

    def tag(self, header: str) -> str:
        for param in (self.get(header) or "").split(">")[-1].split(";"):
            name, _, value = param.strip().partition("=")
            if name.lower() == "tag":
                return value
        return ""

    def uri(self, header: str) -> str:
        """The URI inside a name-addr header value (Contact, To ...)."""
        value = self.get(header) or ""
        if "<" in value:
            return value[value.index("<") + 1:value.index(">")]
        return value.split(";", 1)[0].strip()

    def text(self) -> str:
        lines = [self.first] + [f"{k}: {v}" for k, v in self.headers if k.lower() != "content-length"]
        lines.append(f"Content-Length: {len(self.body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + self.body


def parse(data: str | bytes) -> Msg:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    return Msg(lines[0], headers, body)


def request(method: str, ruri: str, headers: list[tuple[str, str]], body: str = "",
            content_type: str = "application/sdp") -> str:
    hdrs = list(headers)
    if body:
        hdrs.append(("Content-Type", content_type))
    return Msg(f"{method} {ruri} SIP/2.0", hdrs, body).text()


def response(req: Msg, code: int, reason: str, *, to_tag: str = "", extra: list[tuple[str, str]] = (),
             body: str = "", record_route: bool = False) -> str:
    """A response to `req`: its Vias, From, To (+ our tag), Call-ID, CSeq copied."""
    hdrs = [("Via", v) for v in req.all("Via")]
    to = req.get("To") or ""
    if to_tag and ";tag=" not in to.lower().replace(" ", ""):
        to = f"{to};tag={to_tag}"
    hdrs += [("From", req.get("From") or ""), ("To", to), ("Call-ID", req.call_id),
             ("CSeq", req.get("CSeq") or "")]
    if record_route:
        hdrs += [("Record-Route", rr) for rr in req.all("Record-Route")]
    hdrs += list(extra)
    if body:
        hdrs.append(("Content-Type", "application/sdp"))
    return Msg(f"SIP/2.0 {code} {reason}", hdrs, body).text()
