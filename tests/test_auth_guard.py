"""Issue 11, part 1: authentication failures counted and stopped at the gateway,
against the real daemons with the default limits (GW_AUTH_FAIL_LIMIT=5,
GW_AUTH_FAIL_IP_LIMIT=30, GW_AUTH_FAIL_WINDOW=600, GW_AUTH_BAN=3600).

The PBX is tests/support/fakepbx.py with Digest like Asterisk (REGISTER 401,
INVITE 407, the challenge again for a wrong password), so what reached it is
counted exactly: a "guess" is a request that reached it carrying credentials.
Attackers, agents behind their NAT and agents elsewhere each have their own
loopback address (127.0.0.x: all of 127/8 is loopback on Linux); every guess
is a fresh WebSocket, hence a fresh source port, as the issue's attacker did.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ARTIFACTS, _start_stack, _stop_stack, wait_until
from kemi import logfmt
from support.fakepbx import FakePbx
from support.wsphone import WsPhone, webrtc_sdp
from test_ops_metrics import Scrape

GWCTL = Path(sys.executable).parent / "gwctl"
DOMAIN = "pbx.test"
PASSWORD = "secret"
AGENTS = {f"{n}": PASSWORD for n in
          ("1101", "1102", "1103", "1201", "1302", "1303", "1304", "1400", "1449", "1501", "1502",
           "1911", "1912", "1913", "1914")}


@pytest.fixture(scope="module")
def guard():
    """A gateway of its own (default limits) and a Digest PBX on its GW_PBX."""
    base = ARTIFACTS / "auth_guard"
    shutil.rmtree(base, ignore_errors=True)     # no bans left from a previous run
    s = _start_stack(base)
    pbx = FakePbx(s.pbx.host, s.pbx.port, passwords=AGENTS)
    yield s, pbx
    pbx.close()
    try:
        assert s.rtpengine_sessions() == 0, "a call left a session in rtpengine"
    finally:
        _stop_stack(s)


# ------------------------------------------------------------------ helpers
async def phone(s, user: str, src: str, password: str | None = PASSWORD) -> WsPhone:
    return await WsPhone.connect(s.ws_url, user=user, domain=DOMAIN, password=password, source_ip=src)


async def registered(s, user: str, src: str) -> WsPhone:
    p = await phone(s, user, src)
    resp = await p.register()
    assert resp.status == 200, f"{user} from {src}: {resp.summary()}"
    return p


async def reconnect(s, old: WsPhone, src: str) -> WsPhone:
    """The same phone (Contact URI, +sip.instance, REGISTER Call-ID) on a new
    WebSocket, as JsSIP after a network blip."""
    new = await phone(s, old.user, src, old.password)
    new.via_host, new.contact_uri, new.instance_id = old.via_host, old.contact_uri, old.instance_id
    new.reg_call_id, new.reg_cseq = old.reg_call_id, old.reg_cseq
    await old.close()
    return new


async def attempt(s, user: str, src: str, password: str, call_ids: set[str]) -> int:
    """One REGISTER round on a fresh connection; its final status."""
    p = await phone(s, user, src, password)
    try:
        call_ids.add(p.reg_call_id)
        return (await p.register()).status
    finally:
        await p.close()


async def call_out(p: WsPhone) -> int:
    """The agent calls the PBX (407, then credentials) and hangs up; the final status."""
    call = await p.invite(f"sip:5000@{DOMAIN}", webrtc_sdp())
    status = call.response.status if call.response else 0
    if status == 200:
        assert (await call.bye()).status == 200
    return status


def guesses(pbx: FakePbx, call_ids: set[str], method: str = "REGISTER") -> int:
    return sum(1 for m in pbx.guesses(method) if m.call_id in call_ids)


def ban_lines(s, src: str) -> list[dict[str, str]]:
    out = []
    for line in s.kamailio_log().splitlines():
        i = line.find("event=auth.banned ")
        if i >= 0:
            fields = logfmt.parse(line[i:])
            if fields["src"] == src:
                out.append(fields)
    return out


def gwctl(s, *args: str) -> tuple[int, str, str]:
    env = {**s.env, "GW_RUN_DIR": str(s.run_dir)}
    proc = subprocess.run([str(GWCTL), *args], capture_output=True, text=True, env=env, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


# ------------------------------------------------------------------- tests
def test_guessing_one_dn_is_stopped_without_collateral(guard):
    """60 wrong passwords for one DN, each on a fresh connection from one address:
    5 reach the PBX, the other 55 get 403 from the gateway. Throughout, another
    DN registers from the attacker's address, an agent registered there
    re-registers (also over a new connection) and calls, and the attacked DN
    registers from a second address."""
    s, pbx = guard
    attacker, second = "127.0.0.21", "127.0.0.22"
    before = Scrape(s)

    async def go():
        neighbour = await registered(s, "1102", attacker)
        ids: set[str] = set()
        statuses = []
        for i in range(60):
            statuses.append(await attempt(s, "1101", attacker, "wrong", ids))
            if i % 15 == 14:
                assert (await neighbour.register()).status == 200, f"neighbour after guess {i + 1}"
                assert await attempt(s, "1103", attacker, PASSWORD, set()) == 200
                assert await attempt(s, "1101", second, PASSWORD, set()) == 200
        neighbour = await reconnect(s, neighbour, attacker)
        assert (await neighbour.register()).status == 200
        assert await call_out(neighbour) == 200
        # Any request of the attacker's for that DN is refused, calls too.
        intruder = await phone(s, "1101", attacker, "wrong")
        call = await intruder.invite(f"sip:5000@{DOMAIN}", webrtc_sdp())
        assert call.response.status == 403 and call.response.reason == "Too Many Failed Attempts"
        await intruder.close()
        await neighbour.close()
        return statuses, ids

    statuses, ids = asyncio.run(go())
    reached = guesses(pbx, ids)
    print(f"guessing: 60 wrong passwords for 1101 from {attacker}: {reached} reached the PBX, "
          f"{statuses.count(403)} refused by the gateway")
    assert reached <= 10 and reached == 5
    assert statuses == [401] * 5 + [403] * 55
    # One log line for the one ban, with the figures.
    lines = ban_lines(s, attacker)
    assert len(lines) == 1 and lines[0]["user"] == "1101" and lines[0]["failures"] == "5", lines
    assert lines[0]["scope"] == "dn"
    after = Scrape(s)
    assert after.value("gateway_auth_failures_total") - before.value("gateway_auth_failures_total") == 5
    blocked = {k: after.value("gateway_auth_blocked_total", scope=k) -
               before.value("gateway_auth_blocked_total", scope=k) for k in ("dn", "ip")}
    assert blocked == {"dn": 56, "ip": 0}, blocked       # 55 REGISTERs and the INVITE
    # In Redis, with TTLs: the ban and the counters that led to it.
    r = s.redis_client()
    assert 3500 < r.ttl(f"gw:auth:ban:{attacker}:1101") <= 3600
    assert 0 < r.ttl(f"gw:auth:fail:{attacker}:1101") <= 600
    assert r.get(f"gw:auth:failip:{attacker}") == "5"     # refused requests are not failures
    assert r.get(f"gw:auth:ban:{second}:1101") is None


def test_real_phone_behind_the_attackers_nat_keeps_working(guard):
    """The attacked agent sits behind the attacker's NAT address. Its (address, DN)
    is banned, yet the phone re-registers, over its connection and over a new one,
    and calls: a live binding from that address with the same Contact URI and
    +sip.instance, which the attacker cannot know, lets it through."""
    s, pbx = guard
    nat = "127.0.0.41"

    async def go():
        real = await registered(s, "1201", nat)
        ids: set[str] = set()
        statuses = [await attempt(s, "1201", nat, "wrong", ids) for _ in range(8)]
        assert (await real.register()).status == 200
        assert await call_out(real) == 200
        real = await reconnect(s, real, nat)
        assert (await real.register()).status == 200
        assert await call_out(real) == 200
        # Another browser for that DN behind that address: it cannot be told
        # from the attacker (its Contact is new), so it waits for the ban to end.
        assert await attempt(s, "1201", nat, PASSWORD, set()) == 403
        await real.close()
        return statuses, ids

    statuses, ids = asyncio.run(go())
    assert statuses == [401] * 5 + [403] * 3 and guesses(pbx, ids) == 5


def test_guessing_over_invite_is_counted_and_stopped(guard):
    """INVITE with a wrong password (the PBX's 407 to a request with credentials)
    counts like REGISTER; the DN is the From user."""
    s, pbx = guard
    attacker = "127.0.0.51"

    async def go():
        statuses, ids = [], set()
        for _ in range(7):
            p = await phone(s, "1501", attacker, "wrong")
            call = await p.invite(f"sip:5000@{DOMAIN}", webrtc_sdp())
            ids.add(call.call_id)
            statuses.append(call.response.status)
            await p.close()
        other = await registered(s, "1502", attacker)
        assert await call_out(other) == 200
        await other.close()
        return statuses, ids

    statuses, ids = asyncio.run(go())
    assert statuses == [407] * 5 + [403] * 2
    assert guesses(pbx, ids, "INVITE") == 5
    lines = ban_lines(s, attacker)
    assert [(f["user"], f["failures"]) for f in lines] == [("1501", "5")]


def test_pbx_refusing_agents_calls_is_no_guessing(guard):
    """The PBX answers 403 to calls it forbids (after a correct password): from the
    agents' registered phones that is no password guess, so a busy contact centre
    behind one address never bans itself."""
    s, pbx = guard
    office = "127.0.0.91"
    pbx.invite_code = 403

    async def go():
        agents = [await registered(s, dn, office) for dn in ("1911", "1912", "1913")]
        statuses = [await call_out(agents[i % 3]) for i in range(36)]
        for a in agents:
            await a.close()
        return statuses

    try:
        statuses = asyncio.run(go())
    finally:
        pbx.invite_code = 200
    assert statuses == [403] * 36
    r = s.redis_client()
    assert r.get(f"gw:auth:failip:{office}") is None and ban_lines(s, office) == []
    assert asyncio.run(attempt(s, "1914", office, PASSWORD, set())) == 200


def test_credential_stuffing_from_one_address(guard):
    """50 DNs x 2 wrong passwords from one address: after 30 failures the address
    may REGISTER only DNs it holds a live binding for; 30 guesses reach the PBX.
    Agents registered from there keep re-registering and calling, the attacked
    DNs register from elsewhere. `gwctl bans` shows the ban, `gwctl unban` lifts it."""
    s, pbx = guard
    attacker, second = "127.0.0.31", "127.0.0.32"

    async def go():
        office = await registered(s, "1302", attacker)
        ids: set[str] = set()
        statuses = []
        late = None
        for n in range(50):
            for _ in range(2):
                statuses.append(await attempt(s, f"14{n:02d}", attacker, "wrong", ids))
            if n == 5:
                # a colleague logs in from the same address while the attack runs
                late = await registered(s, "1303", attacker)
            if n % 10 == 9:
                assert (await office.register()).status == 200
                assert await attempt(s, "1449", second, PASSWORD, set()) == 200
        assert (await late.register()).status == 200
        office = await reconnect(s, office, attacker)
        assert (await office.register()).status == 200
        assert await call_out(office) == 200
        assert await attempt(s, "1400", second, PASSWORD, set()) == 200
        # The price of the address ban: a DN with no binding from that address
        # cannot log in there until the ban ends or is lifted.
        assert await attempt(s, "1304", attacker, PASSWORD, set()) == 403
        await office.close()
        await late.close()
        return statuses, ids

    statuses, ids = asyncio.run(go())
    reached = guesses(pbx, ids)
    print(f"stuffing: 50 DNs x 2 wrong passwords from {attacker}: {reached} reached the PBX, "
          f"{statuses.count(403)} refused by the gateway")
    assert reached <= 40 and reached == 30
    assert statuses == [401] * 30 + [403] * 70
    lines = ban_lines(s, attacker)
    assert [(f["scope"], f["user"], f["failures"]) for f in lines] == [("ip", "*", "30")], lines

    # gwctl: the ban is listed, then lifted, and the colleague logs in.
    rc, out, err = gwctl(s, "bans", "--json")
    assert rc == 0, err
    mine = [b for b in json.loads(out)["bans"] if b["src"] == attacker]
    assert [(b["scope"], b["user"], b["failures"]) for b in mine] == [("ip", "", 30)]
    assert 3500 < mine[0]["expires_left"] <= 3600
    rc, out, _ = gwctl(s, "bans")
    assert rc == 0 and any(line.split()[:3] == [attacker, "*", "ip"] for line in out.splitlines()), out
    assert gwctl(s, "unban", attacker)[0] == 0
    assert gwctl(s, "unban", attacker)[0] == 1          # nothing left to lift
    rc, _, err = gwctl(s, "unban", "not-an-address")
    assert rc == 2 and "not an IP address" in err
    assert asyncio.run(attempt(s, "1304", attacker, PASSWORD, set())) == 200


def test_unban_one_dn(guard):
    s, pbx = guard
    attacker = "127.0.0.61"
    for _ in range(5):
        assert asyncio.run(attempt(s, "1101", attacker, "wrong", set())) == 401
    assert asyncio.run(attempt(s, "1101", attacker, PASSWORD, set())) == 403
    rc, out, err = gwctl(s, "unban", attacker, "1101")
    assert rc == 0 and "lifted 1 ban" in out, (out, err)
    assert asyncio.run(attempt(s, "1101", attacker, PASSWORD, set())) == 200


# ----------------------------------------------------------------- bad input
def test_bad_input_gets_a_clear_refusal(guard):
    """Malformed Digest credentials, an empty DN and one over 64 characters:
    400 with the reason, one log line each, nothing reaches the PBX, and the
    gateway goes on. Credentials in an unknown scheme count as none (RFC 4475
    regaut01): relayed, and the PBX's 401 is no failure."""
    s, pbx = guard
    src = "127.0.0.71"
    seen_before = len(pbx.requests())
    good = ('Digest username="1601", realm="pbx.test", nonce="abc", uri="sip:pbx.test", '
            'response="0123456789abcdef0123456789abcdef", algorithm=MD5')
    long_dn = "9" * 65

    async def send(p: WsPhone, method: str, user_hdr: str, extra: list[tuple[str, str]]):
        uri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:5000@{DOMAIN}"
        aor = f"<sip:{user_hdr}@{DOMAIN}>" if user_hdr else f"<sip:{DOMAIN}>"
        to = aor if method == "REGISTER" else f"<{uri}>"
        req = p._new_request(method, uri, call_id=f"bad-{method}-{len(extra)}-{user_hdr[:5]}-{id(extra)}",
                             cseq=1, from_=f"{aor};tag=t1", to=to,
                             extra=[("Contact", p.contact()), *extra])
        await p.send(req)
        return await p.next_message(lambda m: m.is_response and m.call_id == req.call_id
                                    and (m.status or 0) >= 200)

    cases = [
        ("REGISTER", "1601", [("Authorization", good.replace('nonce="abc"', 'nonce=""'))],
         "Malformed Authorization", "empty nonce"),
        ("REGISTER", "1601", [("Authorization", 'Digest username="1601, realm="pbx.test"')],
         "Malformed Authorization", "cannot parse"),
        ("INVITE", "1601", [("Proxy-Authorization", good.replace("0123456789abcdef" * 2, "nothex"))],
         "Malformed Proxy-Authorization", "hex digest"),
        ("REGISTER", "", [], "Bad To user (empty)", "empty"),
        ("REGISTER", long_dn, [], "Bad To user (over 64 characters)", "over 64 characters"),
        ("INVITE", "", [], "Bad From user (empty)", "empty"),
        ("INVITE", long_dn, [], "Bad From user (over 64 characters)", "over 64 characters"),
    ]

    async def go():
        p = await phone(s, "1601", src, None)
        got = []
        for method, user, extra, _, _ in cases:
            resp = await send(p, method, user, extra)
            got.append((resp.status, resp.reason))
        # Unknown scheme: the PBX sees it and challenges; not counted as a failure.
        other = await send(p, "REGISTER", "1601", [("Authorization", "NoOneKnowsThisScheme opaque-data=here")])
        await p.close()
        return got, other

    got, other = asyncio.run(go())
    assert got == [(400, reason) for _, _, _, reason, _ in cases]
    assert other.status == 401
    assert len(pbx.requests()) == seen_before + 1, "a refused request reached the PBX"
    log = s.kamailio_log()
    for method, _, _, _, why in cases:
        assert any(f"method={method}" in line and "outcome=400" in line and why in line
                   for line in log.splitlines()
                   if "event=auth.bad_credentials" in line or "event=auth.bad_user" in line), why
    assert s.redis_client().get(f"gw:auth:failip:{src}") is None
    assert not s.kamailio.exited()
    wait_until(lambda: asyncio.run(attempt(s, "1102", src, PASSWORD, set())) == 200, 5,
               "an agent registering after the bad input")
