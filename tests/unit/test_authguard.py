"""kemi/authguard.py: the failure limits' key layout, counting and decisions,
against an in-memory stand-in for the few Redis commands it uses (the real
Redis is exercised through Kamailio in tests/test_auth_guard.py)."""
from __future__ import annotations

import fnmatch
import json

import pytest

from kemi import authguard
from kemi.authguard import Ban, Bans, Limits
from kemi.bindings import Binding, ContactSpec


class FakeRedis:
    """GET/SET (NX, EX)/MGET/INCR/TTL/DEL/SCAN with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.data: dict[str, bytes] = {}
        self.expiry: dict[str, float] = {}

    def _alive(self, key: str) -> bool:
        if key in self.expiry and self.expiry[key] <= self.now:
            self.data.pop(key, None)
            self.expiry.pop(key, None)
        return key in self.data

    def get(self, key):
        return self.data[key] if self._alive(key) else None

    def mget(self, keys):
        return [self.get(k) for k in keys]

    def set(self, key, value, ex=None, nx=False):
        if nx and self._alive(key):
            return None
        self.data[key] = str(value).encode()
        self.expiry.pop(key, None)
        if ex is not None:
            self.expiry[key] = self.now + ex
        return True

    def incr(self, key):
        n = int(self.get(key) or 0) + 1
        self.data[key] = str(n).encode()
        return n

    def ttl(self, key):
        if not self._alive(key):
            return -2
        return int(self.expiry[key] - self.now) if key in self.expiry else -1

    def delete(self, *keys):
        return sum(1 for k in keys if self._alive(k) and self.data.pop(k) is not None)

    def scan_iter(self, match="*", count=None):
        return [k.encode() for k in list(self.data) if self._alive(k) and fnmatch.fnmatchcase(k, match)]

    def pipeline(self, transaction=True):
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, r: FakeRedis) -> None:
        self.r, self.ops = r, []

    def __getattr__(self, name):
        def queue(*a, **kw):
            self.ops.append((name, a, kw))
            return self
        return queue

    def execute(self):
        out = [getattr(self.r, name)(*a, **kw) for name, a, kw in self.ops]
        self.ops = []
        return out


LIMITS = Limits(dn_limit=5, ip_limit=30, window=600, ban=3600)
ATTACKER = "203.0.113.7"


def binding(user="1001", src="198.51.100.4", contact="sip:abcd1234@x9y8.invalid;transport=ws",
            instance="<urn:uuid:1111>") -> Binding:
    return Binding(user, contact, f"sip:{src}:40000;transport=ws", "ws:127.0.0.1:8080", 3,
                   "127.0.0.1:5070", expires=600, instance=instance, src_ip=src)


def fail(r: FakeRedis, n: int, ip: str = ATTACKER, dn: str = "1001", limits: Limits = LIMITS):
    out = []
    for _ in range(n):
        out.append(authguard.record_failure(r, limits, ip, dn, now=r.now))
    return out


# ------------------------------------------------------------------ counting
def test_dn_ban_after_the_limit_imposed_once_with_ttls():
    r = FakeRedis()
    results = fail(r, 4)
    assert [f.dn_count for f in results] == [1, 2, 3, 4] and all(not f.new_bans for f in results)
    assert r.ttl(authguard.fail_key(ATTACKER, "1001")) == 600
    assert r.ttl(authguard.fail_ip_key(ATTACKER)) == 600
    fifth = fail(r, 1)[0]
    assert [(b.scope, b.src, b.user, b.failures) for b in fifth.new_bans] == [("dn", ATTACKER, "1001", 5)]
    assert r.ttl(authguard.ban_key(ATTACKER, "1001")) == 3600
    # A sixth failure (another node that raced) does not impose or log it again.
    assert fail(r, 1)[0].new_bans == []
    bans = Bans.parse(*r.mget(authguard.ban_keys(ATTACKER, "1001")))
    assert bans.dn is not None and bans.dn.failures == 5 and bans.ip is None


def test_window_counts_from_the_first_failure():
    r = FakeRedis()
    fail(r, 4)
    r.now += 601                     # the window is over: counting starts again
    assert fail(r, 1)[0].dn_count == 1
    assert r.get(authguard.ban_key(ATTACKER, "1001")) is None


def test_ban_expires():
    r = FakeRedis()
    fail(r, 5)
    r.now += 3601
    assert Bans.parse(*r.mget(authguard.ban_keys(ATTACKER, "1001"))) == Bans()


def test_ip_ban_across_dns():
    r = FakeRedis()
    new = []
    for i in range(30):
        new += authguard.record_failure(r, LIMITS, ATTACKER, f"14{i:02d}", now=r.now).new_bans
    assert [(b.scope, b.user, b.failures) for b in new] == [("ip", "", 30)]
    assert r.ttl(authguard.ban_ip_key(ATTACKER)) == 3600


def test_zero_limits_count_nothing():
    r = FakeRedis()
    off = Limits(dn_limit=0, ip_limit=0)
    assert fail(r, 50, limits=off)[-1].new_bans == [] and r.data == {}
    only_ip = Limits(dn_limit=0, ip_limit=3)
    got = fail(r, 3, limits=only_ip)
    assert [f.ip_count for f in got] == [1, 2, 3] and got[-1].new_bans[0].scope == "ip"
    assert authguard.fail_key(ATTACKER, "1001") not in r.data


# ----------------------------------------------------------------- decisions
def test_verdicts():
    dn_ban = Bans(dn=Ban("dn", ATTACKER, "1001", 5, 0.0))
    ip_ban = Bans(ip=Ban("ip", ATTACKER, "", 30, 0.0))
    real = binding(src=ATTACKER)
    elsewhere = binding(src="198.51.100.4")

    def v(method, src, b, bans, uri="", instance=""):
        params = {"+sip.instance": instance} if instance else {}
        return authguard.verdict(method, src, b, bans, ContactSpec(uri, params) if uri else None)
    assert v("REGISTER", ATTACKER, None, Bans()) is None
    # DN ban: the attacker (no binding, or a contact it cannot know) is stopped ...
    assert v("REGISTER", ATTACKER, None, dn_ban, "sip:guess@h.invalid") == "dn"
    assert v("REGISTER", ATTACKER, real, dn_ban, "sip:guess@h.invalid", "<urn:uuid:2222>") == "dn"
    assert v("INVITE", ATTACKER, real, dn_ban, "sip:guess@h.invalid;ob") == "dn"
    # ... the real phone behind the same address is known by its Contact or instance ...
    assert v("REGISTER", ATTACKER, real, dn_ban, "sip:ABCD1234@x9y8.invalid;transport=ws") is None
    assert v("REGISTER", ATTACKER, real, dn_ban, "sip:new@other.invalid", "<urn:uuid:1111>") is None
    assert v("INVITE", ATTACKER, real, dn_ban, "sip:abcd1234@x9y8.invalid;transport=ws;ob") is None
    # ... but only from the binding's own address.
    assert v("REGISTER", ATTACKER, elsewhere, dn_ban, "sip:abcd1234@x9y8.invalid") == "dn"
    # Address ban: REGISTER only, and not for DNs registered from that address.
    assert v("REGISTER", ATTACKER, None, ip_ban) == "ip"
    assert v("REGISTER", ATTACKER, elsewhere, ip_ban) == "ip"
    assert v("REGISTER", ATTACKER, real, ip_ban, "sip:any@thing.invalid") is None
    assert v("INVITE", ATTACKER, None, ip_ban) is None
    # Older bindings without src_ip: their received URI tells the address.
    old = binding(src=ATTACKER)
    old.src_ip = ""
    assert authguard.binding_source(old) == ATTACKER
    assert v("REGISTER", ATTACKER, old, ip_ban) is None


def test_registered_phone():
    real = binding(src=ATTACKER)
    rp = authguard.registered_phone
    assert rp(ATTACKER, real, ContactSpec("sip:abcd1234@x9y8.invalid;transport=ws;ob", {}))
    assert rp(ATTACKER, real, ContactSpec("sip:x@y.invalid", {"+sip.instance": "<urn:uuid:1111>"}))
    assert not rp(ATTACKER, real, ContactSpec("sip:x@y.invalid", {}))
    assert not rp("198.51.100.99", real, ContactSpec("sip:abcd1234@x9y8.invalid", {}))
    assert not rp(ATTACKER, None, ContactSpec("sip:abcd1234@x9y8.invalid", {}))
    assert not rp(ATTACKER, real, None)


def test_ipv6_keys_split_on_the_last_colon():
    r = FakeRedis()
    fail(r, 5, ip="2001:db8::7", dn="1001")
    rows = authguard.list_bans(r)
    assert [(b.scope, b.src, b.user) for b in rows] == [("dn", "2001:db8::7", "1001")]
    assert authguard.norm_ip("[2001:DB8:0::7]") == "2001:db8::7"
    with pytest.raises(ValueError):
        authguard.norm_ip("not-an-ip")


@pytest.mark.parametrize("status,cred,challenge,failure", [
    (401, True, 'Digest realm="x", nonce="n"', True),
    (407, True, 'Digest realm="x", nonce="n"', True),
    (401, False, 'Digest realm="x", nonce="n"', False),   # the first challenge: no guess yet
    (401, True, 'Digest realm="x", nonce="n", stale=true', False),
    (407, True, 'Digest realm="x", nonce="n", stale="TRUE"', False),
    (403, False, "", True),
    (403, True, "", True),
    (200, True, "", False),
    (404, True, "", False),
    (486, True, "", False),
])
def test_what_counts_as_a_failure(status, cred, challenge, failure):
    assert authguard.is_failure(status, cred, challenge) is failure


# --------------------------------------------------------------- credentials
GOOD = ('Digest algorithm=MD5, username="1001", realm="pbx.test", nonce="abc", '
        'uri="sip:pbx.test", response="0123456789abcdef0123456789abcdef", qop=auth, '
        'cnonce="xyz", nc=00000001')


@pytest.mark.parametrize("value,problem", [
    (GOOD, None),
    (GOOD.replace('response="0123456789abcdef0123456789abcdef"', 'response="' + "ab" * 32 + '"'), None),
    ('Digest username="1001"', "no realm"),
    (GOOD.replace('username="1001"', 'username=""'), "empty username"),
    (GOOD.replace('nonce="abc"', 'nonce=""'), "empty nonce"),
    (GOOD.replace(', uri="sip:pbx.test"', ""), "no uri"),
    (GOOD.replace("0123456789abcdef0123456789abcdef", "zz"), "response is not a hex digest"),
    (GOOD + ', username="1002"', "parameter username given twice"),
    ('Digest username="1001, realm="x"', "cannot parse"),
    ("Digest garbage", "cannot parse"),
    ("Digest", "no username"),
    ('Digest username="1001" realm="x"', "cannot parse"),
])
def test_digest_problems(value, problem):
    got = authguard.digest_problem(value)
    assert (got is None) if problem is None else (got is not None and problem in got), got


def test_only_digest_is_credentials():
    assert authguard.is_digest(GOOD) and authguard.is_digest("digest x=1") and authguard.is_digest("Digest")
    assert not authguard.is_digest("NoOneKnowsThisScheme opaque-data=here")   # RFC 4475 regaut01
    assert not authguard.is_digest("DigestX a=b") and not authguard.is_digest("Basic dXNlcg==")


# ------------------------------------------------------------ gwctl's helpers
def test_list_and_unban():
    r = FakeRedis()
    fail(r, 5, dn="1001")
    fail(r, 5, dn="1002")
    for i in range(20):
        authguard.record_failure(r, LIMITS, ATTACKER, f"15{i:02d}", now=r.now)
    fail(r, 5, ip="198.51.100.9", dn="1001")
    rows = authguard.list_bans(r)
    assert [(b.src, b.scope, b.user, b.failures) for b in rows] == [
        ("198.51.100.9", "dn", "1001", 5),
        (ATTACKER, "ip", "", 30), (ATTACKER, "dn", "1001", 5), (ATTACKER, "dn", "1002", 5)]
    assert all(0 < b.expires_left <= 3600 for b in rows)
    assert json.loads(r.get(authguard.ban_key(ATTACKER, "1001")))["user"] == "1001"

    assert authguard.unban(r, ATTACKER, "1002") == [authguard.ban_key(ATTACKER, "1002")]
    assert authguard.unban(r, ATTACKER, "1002") == []
    assert r.get(authguard.fail_key(ATTACKER, "1002")) is None       # counting starts again
    lifted = authguard.unban(r, ATTACKER)
    assert sorted(lifted) == sorted([authguard.ban_ip_key(ATTACKER), authguard.ban_key(ATTACKER, "1001")])
    assert [b.src for b in authguard.list_bans(r)] == ["198.51.100.9"]
    assert not any(k.startswith(authguard.FAIL) and ATTACKER in k for k in r.data)


def test_scanners_known_by_user_agent():
    assert authguard.is_scanner("friendly-scanner")
    assert authguard.is_scanner("SIPVicious 0.3")
    assert not authguard.is_scanner("JsSIP 3.10.0")
    assert not authguard.is_scanner("")
