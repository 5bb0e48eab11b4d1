"""Reaching a phone again after its WebSocket reconnected. Pure Python, no Kamailio.

A dialog toward a WebRTC phone is routed to the connection the phone had when
the dialog began: the `;alias=ip~port~5` NATDETECT put in its Contact, and the
connection id our Record-Route carries (`gwcid`). When the WebSocket drops,
JsSIP reconnects with the same Contact URI and `+sip.instance` and registers
again; the phone's binding in Redis then says where it is now. This module
holds the decisions: which binding belongs to the phone a request is for, what
to do with an in-dialog request for it, and when a request waiting for the
phone should go on.

Redis keys: next to `gw:reg:<user>` (kemi/bindings.py, unchanged), a secondary
index `gw:contact:<sha256(user@host of the Contact)[:32]>` -> ContactIndex JSON
with the binding's TTL, so a Contact URI leads to its DN's binding.
"""
from __future__ import annotations

import enum
import hashlib
import json
import re
from json.encoder import encode_basestring_ascii as _q   # json.dumps' string encoder
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from kemi.bindings import Binding, parse_contacts, uri_user_host

CONTACT_PREFIX = "gw:contact:"
RR_CONID = "gwcid"          # Record-Route parameter: the phone's connection when the dialog began


def contact_key(contact: str) -> str:
    """The index key of a Contact URI (its user@host, so ;alias= and other params do not count)."""
    digest = hashlib.sha256(uri_user_host(contact).encode()).hexdigest()[:32]
    return CONTACT_PREFIX + digest


@dataclass(frozen=True)
class ContactIndex:
    """What gw:contact:<hash> holds: whose binding a Contact URI belongs to."""

    user: str
    contact: str
    instance: str = ""

    @classmethod
    def of(cls, binding: Binding) -> "ContactIndex":
        return cls(binding.user, binding.contact, binding.instance)

    def to_json(self) -> str:
        """json.dumps(asdict(self), separators=(",", ":"), sort_keys=True), written
        out (every REGISTER writes one: asdict copies deeply)."""
        return (f'{{"contact":{_q(self.contact)},"instance":{_q(self.instance)},'
                f'"user":{_q(self.user)}}}')

    @classmethod
    def from_json(cls, text: str | bytes) -> "ContactIndex":
        data = json.loads(text)
        return cls(str(data["user"]), str(data["contact"]), str(data.get("instance", "")))


def same_phone(binding: Optional[Binding], index: Optional[ContactIndex], contact: str) -> bool:
    """Is `binding` (the DN's current one) the phone that registered `contact`?
    Same Contact URI, or the same +sip.instance it registered that Contact with.
    Another phone registered later under the same DN matches neither."""
    if binding is None or index is None:
        return False
    wanted = uri_user_host(contact)
    if uri_user_host(index.contact) != wanted:
        return False  # a hash collision, never a match
    if uri_user_host(binding.contact) == wanted:
        return True
    return bool(index.instance) and binding.instance == index.instance


def route_uris(routes: str) -> list[str]:
    """The URIs of Route header values ('<sip:a;lr>, <sip:b;lr>')."""
    return [c.uri for c in parse_contacts(routes) if c.uri != "*"]


def _uri_params(uri: str) -> dict[str, str]:
    out = {}
    for part in uri.split("?", 1)[0].split(";")[1:]:
        name, _, value = part.partition("=")
        out[name.strip().lower()] = value.strip()
    return out


def dialog_conid(routes: str) -> Optional[int]:
    """The `gwcid` connection id of our Record-Route (now the request's Route
    headers); None when the dialog began without one."""
    for uri in route_uris(routes):
        value = _uri_params(uri).get(RR_CONID, "")
        if value.isdigit():
            return int(value)
    return None


def _is_ws(uri: str) -> bool:
    return _address(uri)[2] in ("ws", "wss")


# A WebSocket transport anywhere in a Route set: without one, no Route is a node's
# WebSocket side (what _address would find, case and spaces as it allows them).
_WS_HINT = re.compile(r"transport\s*=\s*wss?\b", re.IGNORECASE)


def from_phone_side(routes: str) -> bool:
    """The request entered the dialog's route on its WebSocket side (the top Route
    is a node's WebSocket address): it comes from the phone, even when it reached
    us over UDP from the node now holding the phone's connection. (Every in-dialog
    request asks: a Route set without a WebSocket transport is answered by one
    regular expression, else the top Route alone is read when it is a plain <URI>.)"""
    if not _WS_HINT.search(routes):
        return False
    top = routes.lstrip()
    end = top.find(">")
    if top.startswith("<") and end > 0 and '"' not in top[:end]:
        return _is_ws(top[1:end].strip())
    uris = route_uris(routes)
    return bool(uris) and _is_ws(uris[0])


def peer_hop(routes: str) -> Optional[str]:
    """For a phone's request whose dialog another node holds (its top Route is
    that node's WebSocket side): that node's SIP side, the next Route."""
    uris = route_uris(routes)
    if not uris or not _is_ws(uris[0]):
        return None
    return next((u for u in uris[1:] if not _is_ws(u)), None)


def _address(uri: str) -> tuple[str, str, str]:
    """(host, port, transport) of sip:host:port;transport=x, lower case."""
    body = uri.split(":", 1)[1] if ":" in uri else uri
    hostport, _, params = body.partition(";")
    hostport = hostport.split("@")[-1].lower()
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    transport = ""
    for p in params.split(";"):
        name, _, value = p.partition("=")
        if name.strip().lower() == "transport":
            transport = value.strip().lower()
    return host, port or "5060", transport or "udp"


def same_address(a: str, b: str) -> bool:
    return bool(a and b) and _address(a) == _address(b)


class Action(enum.Enum):
    KEEP = "keep"      # the dialog's own connection is the phone's current one
    MOVE = "move"      # the phone is on another connection of this node
    PEER = "peer"      # the phone is on another gateway node: hand the request over
    WAIT = "wait"      # the phone's connection is gone: wait for it to register again
    NOWHERE = "nowhere"  # no phone known and no route: nothing to deliver to


@dataclass(frozen=True)
class Plan:
    action: Action
    from_conid: int    # the connection the dialog was routed to (0: not known)
    to_conid: int      # the phone's current connection (on `dst`'s node)
    dst: str           # KEEP/MOVE: sip:ip:port;transport=ws; PEER: sip:<node>;transport=udp


def plan(binding: Optional[Binding], *, node: str, target: str, conid: Optional[int],
         alive: Callable[[int], bool], may_hand_over: bool = True) -> Plan:
    """What to do with an in-dialog request for a phone.

    binding: the phone's own binding (same_phone), or None when it has none
    (never registered since, expired, Redis down): the request then goes where
    the dialog points, as before. target: where the dialog points now (the
    alias' address). conid: the dialog's connection id (dialog_conid). alive:
    is this connection id open on this node. may_hand_over: False for a request
    another node handed to us, so that two nodes never pass it back and forth."""
    if binding is None:
        return Plan(Action.KEEP if target else Action.NOWHERE, conid or 0, conid or 0, target)
    here = binding.node == node
    if conid is not None:
        current = here and binding.conid == conid
        from_conid = conid
    else:
        current = here and same_address(binding.received, target)
        from_conid = binding.conid if current else 0
    if not here:
        action = Action.PEER if may_hand_over else Action.WAIT
        return Plan(action, from_conid, binding.conid, f"sip:{binding.node};transport=udp")
    if not alive(binding.conid):
        return Plan(Action.WAIT, from_conid, binding.conid, binding.received)
    if current:
        return Plan(Action.KEEP, from_conid, binding.conid, target)
    return Plan(Action.MOVE, from_conid, binding.conid, binding.received)


@dataclass(frozen=True)
class Waiter:
    """A suspended in-dialog request waiting for its phone (kept in an htable
    keyed by the transaction's index:label)."""

    contact: str       # the phone's Contact URI (what the request is for)
    conid: int         # the phone's binding when the request began to wait ...
    node: str          # ... (a new registration changes one of these)
    since: float
    until: float
    call_id: str = ""

    @classmethod
    def start(cls, contact: str, binding: Binding, wait: float, call_id: str = "",
              now: Optional[float] = None) -> "Waiter":
        now = time.time() if now is None else now
        return cls(contact, binding.conid, binding.node, now, now + wait, call_id)

    def waited_ms(self, now: float) -> int:
        return round((now - self.since) * 1000)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Waiter":
        data = json.loads(text)
        return cls(str(data["contact"]), int(data["conid"]), str(data["node"]),
                   float(data["since"]), float(data["until"]), str(data.get("call_id", "")))


def verdict(waiter: Waiter, binding: Optional[Binding], now: float) -> str:
    """'resume' once the phone registered again (another connection or node),
    'expire' when GW_RECONNECT_WAIT is over, else 'wait'."""
    if binding is not None and (binding.conid != waiter.conid or binding.node != waiter.node):
        return "resume"
    return "expire" if now >= waiter.until else "wait"


def due(entries: list[tuple[str, str]], find: Callable[[list[str]], list[Optional[Binding]]],
        now: float) -> list[tuple[str, Optional[tuple[int, int]], str, Waiter]]:
    """The waiting requests (htable key, Waiter JSON) to act on now: (key,
    (index, label), 'resume' | 'expire', waiter). `find` looks the phones up
    (kemi.store.BindingStore.find_phones). An unreadable entry expires at once:
    its transaction still waits for an answer."""
    waiters = []
    for key, raw in entries:
        try:
            waiters.append((key, Waiter.from_json(raw)))
        except (ValueError, KeyError, TypeError):
            waiters.append((key, Waiter("", 0, "", 0.0, 0.0)))
    out = []
    for (key, waiter), phone in zip(waiters, find([w.contact for _, w in waiters]) if waiters else []):
        what = verdict(waiter, phone, now)
        ids = transaction_id(key)
        if what != "wait" or ids is None:
            out.append((key, ids, "expire" if ids is None else what, waiter))
    return out


def transaction_id(key: str) -> Optional[tuple[int, int]]:
    """'index:label' (the waiters' htable key) -> (index, label)."""
    index, sep, label = key.partition(":")
    if not sep or not index.isdigit() or not label.isdigit():
        return None
    return int(index), int(label)
