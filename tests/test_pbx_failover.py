"""Issue 13, several PBXs: GW_PBX lists two PBX emulators at different
addresses (A on 127.0.0.1, B on 127.0.0.6), A first. Kamailio's dispatcher
probes both with OPTIONS; everything goes to the first one up, and a PBX that
is dark (reads and drops everything) or answers 5xx fails over to the next
within the same transaction. The agent is the WebSocket test phone."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Stack, _start_stack, _stop_stack, wait_until
from gw import stack
from support.fakepbx import FakePbx
from support.agentcalls import call_in
from support.agentcalls import call_out_timed as call_out
from support.wsphone import WsPhone
from test_ops_metrics import http_get

PROBE_S = 1          # GW_PBX_PROBE for these stacks: state changes show within seconds
ANSWER_WITHIN_S = 8  # the bound for the first call after a PBX goes dark


class TwoPbx:
    def __init__(self, gw: Stack, a: FakePbx, b: FakePbx) -> None:
        self.gw, self.a, self.b = gw, a, b

    @property
    def gw_addr(self) -> tuple[str, int]:
        return self.gw.sip.host, self.gw.sip.port

    def health(self) -> tuple[int, dict]:
        status, body, _ = http_get(self.gw, "/health")
        return status, json.loads(body)

    def state(self, pbx: FakePbx) -> str:
        return self.health()[1]["dependencies"][f"pbx {pbx.host}:{pbx.port}"]

    def gateway_up(self) -> dict[str, float]:
        _, body, _ = http_get(self.gw, "/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        return {s.labels["dependency"]: s.value for s in fams["gateway_up"].samples}

    def wait_state(self, pbx: FakePbx, state: str, timeout: float = 15) -> float:
        t0 = time.monotonic()
        wait_until(lambda: self.state(pbx) == state, timeout, f"PBX {pbx.host}:{pbx.port} {state}")
        return time.monotonic() - t0


@pytest.fixture
def two_pbx(tmp_path: Path) -> Iterator[TwoPbx]:
    a = FakePbx("127.0.0.1", 0)
    b = FakePbx("127.0.0.6", 0)
    gw = None
    try:
        gw = _start_stack(tmp_path / "stack", {"GW_PBX": f"{a.host}:{a.port},{b.host}:{b.port}",
                                               "GW_PBX_PROBE": str(PROBE_S)})
        yield TwoPbx(gw, a, b)
    finally:
        if gw is not None:
            _stop_stack(gw)
        a.close()
        b.close()


def invites(pbx: FakePbx) -> list[str]:
    return [m.call_id for m in pbx.requests("INVITE")]


def registers(pbx: FakePbx) -> int:
    return len(pbx.requests("REGISTER"))


def test_first_pbx_up_takes_everything_and_a_dark_one_fails_over(two_pbx):
    env = two_pbx
    a, b = env.a, env.b

    async def go():
        # Both answer the probes; everything goes to A, the first listed.
        env.wait_state(a, "up")
        env.wait_state(b, "up")
        assert env.health()[0] == 200
        phone = await WsPhone.connect(env.gw.ws_url, user="1301", domain="pbx.test")
        try:
            assert (await phone.register()).status == 200
            assert (registers(a), registers(b)) == (1, 0)
            status, _, cid = await call_out(phone)
            assert status == 200 and cid in invites(a) and cid not in invites(b)
            # Both PBXs may call the agent (each is a trusted source).
            assert await call_in(a, env.gw_addr, phone) == 200
            assert await call_in(b, env.gw_addr, phone) == 200

            # A goes dark. The very next call still rings through: A gets no
            # answer in time, the same transaction moves on to B.
            a.dark = True
            status, elapsed, cid = await call_out(phone)
            print(f"first call after A went dark: {status} through B in {elapsed:.2f}s")
            assert status == 200 and elapsed < ANSWER_WITHIN_S
            assert cid in invites(b) and a.dropped > 0
            assert "event=pbx.failover" in env.gw.kamailio_log()

            # A is back: the probes see it, and it takes new calls again.
            a.dark = False
            back = env.wait_state(a, "up")
            print(f"A answering again: marked up after {back:.1f}s")
            status, _, cid = await call_out(phone)
            assert status == 200 and cid in invites(a)

            # The same for a REGISTER that finds A dark before any probe did.
            a.dark = True
            regs_b = registers(b)
            t0 = time.monotonic()
            assert (await phone.register()).status == 200
            elapsed = time.monotonic() - t0
            print(f"first REGISTER after A went dark: 200 through B in {elapsed:.2f}s")
            assert registers(b) == regs_b + 1 and elapsed < ANSWER_WITHIN_S
            a.dark = False
            env.wait_state(a, "up")

            # A goes dark with no call in flight: the probes alone mark it down,
            # then REGISTER and calls go straight to B.
            a.dark = True
            down = env.wait_state(a, "down")
            print(f"A dark: the probe marked it down after {down:.1f}s")
            assert env.health()[0] == 200, "one PBX of two is enough to work"
            assert env.gateway_up()[f"pbx {a.host}:{a.port}"] == 0
            assert env.gateway_up()[f"pbx {b.host}:{b.port}"] == 1
            regs_b = registers(b)
            t0 = time.monotonic()
            assert (await phone.register()).status == 200
            reg_s = time.monotonic() - t0
            assert registers(b) == regs_b + 1
            status, elapsed, cid = await call_out(phone)
            print(f"A marked down: REGISTER via B in {reg_s:.2f}s, call via B answered in {elapsed:.2f}s")
            assert status == 200 and cid in invites(b) and reg_s < 1 and elapsed < 1
            # B calls the agent it now holds the registration of.
            assert await call_in(b, env.gw_addr, phone) == 200

            # A comes back and takes over new calls again.
            a.dark = False
            env.wait_state(a, "up")
            status, _, cid = await call_out(phone)
            assert status == 200 and cid in invites(a) and cid not in invites(b)

            # Both dark: /health says 503 and names them.
            a.dark = b.dark = True
            env.wait_state(a, "down")
            env.wait_state(b, "down")
            code, body = env.health()
            assert code == 503 and body["status"] == "down", body
        finally:
            await phone.close()

    asyncio.run(go())
    wait_until(lambda: env.gw.rtpengine_sessions() == 0, 5, "no rtpengine session left")


def test_pbx_answering_503_fails_over_in_the_same_transaction(tmp_path):
    a = FakePbx("127.0.0.1", 0, invite_code=503)
    b = FakePbx("127.0.0.6", 0)
    gw = _start_stack(tmp_path / "stack", {"GW_PBX": f"{a.host}:{a.port} {b.host}:{b.port}",
                                           "GW_PBX_PROBE": str(PROBE_S)})
    env = TwoPbx(gw, a, b)

    async def go():
        phone = await WsPhone.connect(gw.ws_url, user="1302", domain="pbx.test")
        try:
            assert (await phone.register()).status == 200
            for _ in range(2):
                env.wait_state(a, "up")    # A answers the probes: it is up, but refuses calls
                status, elapsed, cid = await call_out(phone)
                print(f"A answered 503: call answered through B in {elapsed:.2f}s")
                assert status == 200 and elapsed < ANSWER_WITHIN_S
                assert cid in invites(a) and cid in invites(b)
        finally:
            await phone.close()

    try:
        asyncio.run(go())
        assert "why=503" in gw.kamailio_log()
        wait_until(lambda: gw.rtpengine_sessions() == 0, 5, "no rtpengine session left")
    finally:
        _stop_stack(gw)
        a.close()
        b.close()


@pytest.mark.parametrize("value,words", [
    ("127.0.0.1:5060,,127.0.0.6:5060", "empty entry"),
    ("127.0.0.1:5060,127.0.0.1:5060", "listed twice"),
    ("127.0.0.1:5060,127.0.0.6:99999", "1-65535"),
])
def test_make_run_refuses_a_bad_pbx_list_naming_gw_pbx(tmp_path, value, words):
    env = dict(os.environ, GW_PBX=value, GW_RUN_DIR=str(tmp_path / "run"))
    r = subprocess.run(["make", "-s", "run"], cwd=stack.ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "configuration error: GW_PBX" in r.stderr and words in r.stderr, r.stderr
    assert not (tmp_path / "run").exists(), "nothing was started"


def doctor_pbx(env: TwoPbx) -> tuple[int, list[dict]]:
    """gwctl doctor --only pbx, as the engineer on call runs it next to the gateway."""
    gwctl = stack.ROOT / ".venv" / "bin" / "gwctl"
    proc = subprocess.run([str(gwctl), "doctor", "--json", "--only", "pbx"], capture_output=True, text=True,
                          env={**env.gw.env, "GW_RUN_DIR": str(env.gw.run_dir)}, timeout=60)
    return proc.returncode, json.loads(proc.stdout)["checks"]


def test_doctor_shows_each_pbx_and_the_gateways_view_of_it(two_pbx):
    env = two_pbx
    a, b = env.a, env.b
    env.wait_state(a, "up")
    env.wait_state(b, "up")
    rc, checks = doctor_pbx(env)
    assert rc == 0 and [c["target"] for c in checks] == [f"udp:{a.host}:{a.port}", f"udp:{b.host}:{b.port}"]
    assert all(c["status"] == "ok" and "the gateway's probes: up (A" in c["detail"] for c in checks), checks

    # A dark: a warning (calls go to B), with the fix line; B fine.
    a.dark = True
    env.wait_state(a, "down")
    rc, checks = doctor_pbx(env)
    print("\n".join(f"{c['status']} {c['target']} {c['detail']}" for c in checks))
    assert rc == 0, "one PBX of two down is a warning, not a failure"
    assert checks[0]["status"] == "warn" and f"GW_PBX={a.host}:{a.port} does not answer" in checks[0]["detail"]
    assert "the gateway's probes: down (IP)" in checks[0]["detail"]
    assert "other PBXs" in checks[0]["fix"] and checks[1]["status"] == "ok"

    # Both dark: both fail, and doctor exits 1.
    b.dark = True
    env.wait_state(b, "down")
    rc, checks = doctor_pbx(env)
    assert rc == 1 and [c["status"] for c in checks] == ["fail", "fail"]
    assert all("time out" in c["fix"] for c in checks)
