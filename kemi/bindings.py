"""Registration binding records (what Redis holds under gw:reg:<user>) and the
SIP header arithmetic needed to build them. Pure Python, no Kamailio.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _q   # json.dumps' own string encoder (C)
from typing import Any

KEY_PREFIX = "gw:reg:"
DEFAULT_EXPIRES = 3600
# A DN or SIP user part as registered by agents: keep keys predictable and safe.
_USER_RE = re.compile(r"^[A-Za-z0-9_.!~*'()&=+$,;?/%-]{1,64}$")


def key(user: str) -> str:
    return KEY_PREFIX + user


def valid_user(user: str) -> bool:
    return bool(_USER_RE.match(user))


def user_problem(user: str) -> str:
    """Why valid_user refuses a user, in words for a reply and a log line."""
    if not user:
        return "empty"
    if len(user) > 64:
        return "over 64 characters"
    return "characters a DN cannot have" if not valid_user(user) else ""


@dataclass
class Binding:
    """One agent's registration, as stored in Redis (JSON)."""

    user: str                 # the AOR user / DN (To user of the REGISTER)
    contact: str              # the phone's Contact URI exactly as it sent it
    received: str             # where the phone really is: sip:IP:PORT;transport=ws
    socket: str               # the gateway socket the phone is connected to: ws:IP:PORT
    conid: int                # Kamailio's TCP/WS connection id
    node: str                 # the gateway node (GW_SIP_LISTEN) holding the connection
    expires: int = 0          # granted expiry in seconds (Redis TTL)
    registered_at: float = 0.0
    call_id: str = ""
    user_agent: str = ""
    instance: str = ""        # +sip.instance, when the phone sends one
    src_ip: str = ""          # the phone's address (behind nginx: its X-Real-IP, not nginx's)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """The record, exactly json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)."""
        head, mid, tail = self.record_parts()
        return head + _json(self.expires) + mid + _json(self.registered_at) + tail

    def record_parts(self) -> tuple[str, str, str]:
        """The JSON record around its two numbers, expires and registered_at, which
        only the REGISTER's 2xx tells: built once, at the request (issue 14: the
        reply adds the numbers, nothing is parsed or encoded again). Keys sorted."""
        head = (f'{{"call_id":{_json(self.call_id)},"conid":{_json(self.conid)},'
                f'"contact":{_json(self.contact)},"expires":')
        mid = (f',"extra":{_json(self.extra)},"instance":{_json(self.instance)},"node":{_json(self.node)},'
               f'"received":{_json(self.received)},"registered_at":')
        tail = (f',"socket":{_json(self.socket)},"src_ip":{_json(self.src_ip)},"user":{_json(self.user)},'
                f'"user_agent":{_json(self.user_agent)}}}')
        return head, mid, tail

    @classmethod
    def from_json(cls, text: str | bytes) -> "Binding":
        # bytes from Redis: decoded here, json.loads would guess their encoding first
        data = json.loads(text.decode() if type(text) is bytes else text)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def _json(value: Any) -> str:
    if type(value) is str:
        return _q(value)
    if type(value) is int:
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# A binding draft in one AVP at the REGISTER (kemi/app.py REGISTRAR): the user,
# the +sip.instance, the contact, then the record's parts, a line each. A DN and
# a header parameter hold no line feed and JSON escapes it, so the first two and
# the last three splits are exact whatever the contact holds.
def draft(user: str, instance: str, contact: str, parts: tuple[str, str, str]) -> str:
    return "\n".join((user, instance, contact, *parts))


def read_draft(text: str) -> tuple[str, str, str, tuple[str, str, str]]:
    """(user, instance, contact, record parts) of a draft."""
    user, instance, rest = text.split("\n", 2)
    contact, head, mid, tail = rest.rsplit("\n", 3)
    return user, instance, contact, (head, mid, tail)


def record(parts: tuple[str, str, str], expires: int, now: float | None = None) -> str:
    """The JSON record a draft's parts make with the granted expiry and the time."""
    head, mid, tail = parts
    return head + str(expires) + mid + repr(round(time.time() if now is None else now, 3)) + tail


@dataclass(frozen=True)
class ContactSpec:
    uri: str
    params: dict[str, str]

    @property
    def expires(self) -> int | None:
        value = self.params.get("expires")
        return int(value) if value is not None and value.isdigit() else None


_SPECIAL: dict[str, "re.Pattern[str]"] = {}


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside <>, quotes (the tests' SIP parser uses it too).
    Visits only the characters that matter (a REGISTER's Contact is parsed twice
    per registration, so not character by character in Python)."""
    if '"' not in text and "<" not in text and ">" not in text:
        parts = text.split(sep)
    else:
        special = _SPECIAL.get(sep)
        if special is None:
            special = _SPECIAL[sep] = re.compile("[" + re.escape('<>"' + sep) + "]")
        parts, start, depth, quoted = [], 0, 0, False
        for m in special.finditer(text):
            ch = m.group()
            if ch == '"':
                quoted = not quoted
            elif not quoted and ch == "<":
                depth += 1
            elif not quoted and ch == ">":
                depth -= 1
            if ch == sep and depth == 0 and not quoted:
                parts.append(text[start:m.start()])
                start = m.end()
        parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_contacts(value: str) -> list[ContactSpec]:
    """Parse one or more Contact header values (comma separated) into URI + header params."""
    contacts = []
    for item in split_top(value, ","):
        if item == "*":
            contacts.append(ContactSpec("*", {}))
            continue
        if "<" in item:
            uri = item[item.index("<") + 1: item.index(">")]
            rest = item[item.index(">") + 1:]
        else:
            uri, _, rest = item.partition(";")
            rest = ";" + rest if rest else ""
        params = {}
        for p in split_top(rest, ";"):
            name, _, val = p.partition("=")
            params[name.strip().lower()] = val.strip().strip('"')
        contacts.append(ContactSpec(uri.strip(), params))
    return contacts


def uri_user_host(uri: str) -> str:
    """user@host[:port] of a SIP URI, without scheme and parameters (for matching)."""
    body = uri.split(":", 1)[1] if ":" in uri else uri
    return body.split(";", 1)[0].split("?", 1)[0].lower()


def requested_expiry(contact: ContactSpec | None, expires_hdr: str | None) -> int:
    if contact is not None and contact.expires is not None:
        return contact.expires
    if expires_hdr and expires_hdr.strip().isdigit():
        return int(expires_hdr.strip())
    return DEFAULT_EXPIRES


def granted_expiry(reply_contacts: str | None, reply_expires: str | None,
                   our_contact: str, requested: int) -> int:
    """The expiry the registrar granted to our contact (RFC 3261 10.2.4):
    the matching Contact's expires param, else the Expires header, else what we asked.
    A 2xx that does not list our contact at all means the binding is gone (0)."""
    if reply_contacts:
        ours = uri_user_host(our_contact)
        for c in parse_contacts(reply_contacts):
            if c.uri != "*" and uri_user_host(c.uri) == ours:
                if c.expires is not None:
                    return c.expires
                break
        else:
            return 0
    if reply_expires and reply_expires.strip().isdigit():
        return int(reply_expires.strip())
    return requested if reply_contacts else 0


def finalize(draft: Binding, expires: int, now: float | None = None) -> Binding:
    draft.expires = expires
    draft.registered_at = round(time.time() if now is None else now, 3)
    return draft


def source_uri(ip: str, port: int | str, proto: str) -> str:
    """SIP URI of a transport address, e.g. sip:127.0.0.2:40000;transport=ws."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"sip:{host}:{port};transport={proto.lower()}"
