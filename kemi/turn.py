"""TURN REST API credentials for the web phones (coturn ``use-auth-secret``).

coturn's "TURN REST API" scheme (draft-uberti-behave-turn-rest, coturn's
``--use-auth-secret`` / ``--static-auth-secret``): the gateway and coturn share
a secret, and the gateway hands each agent short-lived credentials:

    username = "<expiry unix timestamp>:<agent>"
    password = base64(HMAC-SHA1(secret, username))

coturn recomputes the password from the username and rejects the allocation
once the timestamp is in the past. No per-user state on either side.

Pure Python (stdlib only, no Kamailio import) so it is unit-testable and can
be used both from the KEMI app and from any HTTP endpoint that serves JsSIP's
``pcConfig.iceServers``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from typing import Iterable, Optional

# Agent ids become part of the TURN username, which coturn splits on ':' (its
# default rest-api-separator) and which ends up in logs: allow a conservative
# token only. '@' is allowed so "1001@tenant" style ids work.
AGENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~@+-]{0,63}")
URI_RE = re.compile(r"(stun|stuns|turn|turns):[^\s]+")

MAX_TTL = 7 * 24 * 3600  # credentials valid longer than a week defeat the point


def turn_credentials(secret: bytes, agent: str, ttl: int, now: float,
                     *, uris: Optional[Iterable[str]] = None) -> dict:
    """Return ``{"username", "password", "ttl", "uris"}`` for one agent.

    ``secret``: coturn's static-auth-secret, as bytes (never logged).
    ``agent``: the agent/user id, a safe token (letters, digits, ``._~@+-``,
    at most 64 characters, no ``:``).
    ``ttl``: lifetime in seconds (1 .. 7 days).
    ``now``: the current Unix time (``time.time()``); passed in for testability.
    ``uris``: TURN/STUN URIs to hand to the browser (``turn:host:3478?transport=udp``).

    Raises ValueError with a message naming the bad argument.
    """
    if not isinstance(secret, (bytes, bytearray)):
        raise ValueError("turn secret must be bytes (encode the configured string)")
    if len(secret) == 0:
        raise ValueError("turn secret must not be empty")
    if not isinstance(agent, str) or not AGENT_RE.fullmatch(agent):
        raise ValueError(
            f"agent {agent!r} is not a safe token: use 1-64 characters from "
            "letters, digits and ._~@+- (starting with a letter or digit), no ':'")
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ValueError(f"ttl must be an integer number of seconds, got {ttl!r}")
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds, got {ttl}")
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now) or now < 0:
        raise ValueError(f"now must be a non-negative Unix timestamp, got {now!r}")

    uri_list = []
    for uri in (uris or ()):
        if not isinstance(uri, str) or not URI_RE.fullmatch(uri):
            raise ValueError(f"TURN/STUN URI {uri!r} must start with stun:, stuns:, turn: or turns:")
        uri_list.append(uri)

    expiry = int(now) + ttl
    username = f"{expiry}:{agent}"
    digest = hmac.new(bytes(secret), username.encode("ascii"), hashlib.sha1).digest()
    password = base64.b64encode(digest).decode("ascii")
    return {"username": username, "password": password, "ttl": ttl, "uris": uri_list}


def ice_server(creds: dict) -> dict:
    """The credentials as one RTCPeerConnection ``iceServers`` entry (JsSIP pcConfig)."""
    return {"urls": list(creds["uris"]), "username": creds["username"],
            "credential": creds["password"]}


def x_turn(secret: bytes, user: str, expires: int, max_ttl: int, uris: Iterable[str], now: float) -> str:
    """The X-TURN header line for the 200 OK to an agent's REGISTER: one
    RTCIceServer (compact JSON), valid for the granted registration expiry plus
    a minute, at most max_ttl (GW_TURN_TTL). ValueError as turn_credentials."""
    creds = turn_credentials(secret, user, min(expires + 60, max_ttl), now, uris=uris)
    return "X-TURN: " + json.dumps(ice_server(creds), separators=(",", ":")) + "\r\n"
