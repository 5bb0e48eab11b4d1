"""kemi/turn.py: TURN REST API credentials (coturn use-auth-secret scheme)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kemi.turn import MAX_TTL, ice_server, turn_credentials, x_turn  # noqa: E402


def test_username_is_expiry_colon_agent():
    c = turn_credentials(b"north", "agent1001", 3600, 1_700_000_000.9)
    assert c["username"] == "1700003600:agent1001"
    assert c["ttl"] == 3600
    assert c["uris"] == []


def test_known_vector():
    # Computed with coturn's documented shell recipe (see next test):
    #   echo -n "1700003600:agent1001" | openssl dgst -binary -sha1 -hmac north | openssl base64
    c = turn_credentials(b"north", "agent1001", 3600, 1_700_000_000)
    assert c["password"] == "qiw9DUeGW84n9DFR5WiosFvZROg="


def test_matches_coturn_documented_algorithm_via_openssl():
    """coturn's README.turnserver ("TURN REST API") gives this recipe:

        secret=...; username=$(( $(date +%s) + ttl )):user
        echo -n $username | openssl dgst -binary -sha1 -hmac $secret | openssl base64
    """
    openssl = shutil.which("openssl")
    assert openssl, "openssl CLI is needed for the cross-check (apt-get install openssl)"
    secret, agent = "s3cr3t-for-test", "1001@tenant-a"
    c = turn_credentials(secret.encode(), agent, 86400, 1_717_171_717.5)
    assert c["username"] == f"{1_717_171_717 + 86400}:{agent}"
    digest = subprocess.run([openssl, "dgst", "-binary", "-sha1", "-hmac", secret],
                            input=c["username"].encode(), capture_output=True, check=True).stdout
    expected = subprocess.run([openssl, "base64"], input=digest, capture_output=True,
                              check=True).stdout.decode().strip()
    assert c["password"] == expected


def test_matches_stdlib_hmac():
    c = turn_credentials(bytearray(b"k"), "a", 1, 0)
    want = base64.b64encode(hmac.new(b"k", b"1:a", hashlib.sha1).digest()).decode()
    assert c["password"] == want


def test_uris_and_ice_server_shape():
    uris = ["turn:turn.example.com:3478?transport=udp", "stun:turn.example.com:3478"]
    c = turn_credentials(b"x", "agent", 600, 100, uris=uris)
    assert c["uris"] == uris
    assert ice_server(c) == {"urls": uris, "username": "700:agent", "credential": c["password"]}


@pytest.mark.parametrize("agent", ["", ":x", "a:b", "a b", "a\nb", "../etc", "-lead", "é", "a" * 65,
                                   None, 1001])
def test_rejects_unsafe_agent(agent):
    with pytest.raises(ValueError, match="agent"):
        turn_credentials(b"x", agent, 60, 0)


@pytest.mark.parametrize("secret", [b"", "string-secret", None])
def test_rejects_bad_secret(secret):
    with pytest.raises(ValueError, match="secret"):
        turn_credentials(secret, "agent", 60, 0)


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL + 1, 1.5, "60", True, None])
def test_rejects_bad_ttl(ttl):
    with pytest.raises(ValueError, match="ttl"):
        turn_credentials(b"x", "agent", ttl, 0)


@pytest.mark.parametrize("now", [-1, float("nan"), float("inf"), "0", None, True])
def test_rejects_bad_now(now):
    with pytest.raises(ValueError, match="now"):
        turn_credentials(b"x", "agent", 60, now)


@pytest.mark.parametrize("uri", ["http://x", "turn:", "turn:a b", 5])
def test_rejects_bad_uri(uri):
    with pytest.raises(ValueError, match="URI"):
        turn_credentials(b"x", "agent", 60, 0, uris=[uri])


def test_max_ttl_and_allowed_agent_characters():
    c = turn_credentials(b"x", "A1._~@+-z", MAX_TTL, 0)
    assert c["username"] == f"{MAX_TTL}:A1._~@+-z"


def test_x_turn_header_lifetime_is_the_registration_plus_a_minute():
    line = x_turn(b"s3cret", "1001", 600, 3600, ["turn:turn.example.com:3478?transport=udp"], 1_000_000)
    assert line.startswith("X-TURN: ") and line.endswith("\r\n") and "\n" not in line[:-1]
    server = json.loads(line[len("X-TURN: "):])
    assert server["username"] == "1000660:1001" and server["urls"] == ["turn:turn.example.com:3478?transport=udp"]
    capped = json.loads(x_turn(b"s3cret", "1001", 7200, 3600, [], 1_000_000)[8:])
    assert capped["username"] == "1003600:1001"
