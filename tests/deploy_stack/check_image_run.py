"""`make deploy-test`, part 1: the gateway image started by hand behaves as `make run`.

One Redis and one rtpengine run on the host (free loopback ports, as the tests'
stacks do). Against them run, side by side, `make run`'s launcher
(`python -m gw.run` from this checkout) and the image as an operator would
start it:

    docker run --network host --read-only --cap-drop ALL \\
      --security-opt no-new-privileges:true \\
      --tmpfs /run/gateway:uid=999,gid=999,mode=0750 --tmpfs /tmp \\
      -e GW_SIP_LISTEN=... -e GW_WS_LISTEN=... (the usual GW_* settings) webrtc-sip-gateway

each with its own SIP/WebSocket ports and PBX emulator. The same checks run
against both: SIP OPTIONS, /health, the /metrics families, a WebSocket phone
registering through the gateway at the PBX emulator (its gw:reg record in
Redis), and a call each way with a tone each way. The two records must match
(addresses and ports aside), and the media must pass in both.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from gw import stack
from kemi import settings as settings_mod
from kemi.settings import HostPort
from support import dockerstack as ds
from support.rtp_pbx import MediaPlan, RtpPbx

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "_artifacts" / "deploy-stack"
ORIGIN = "https://agents.deploytest.invalid"
CONTAINER = f"gw-imagecheck-{os.getpid()}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Redis and rtpengine on the host, shared by both gateways."""
    base = tmp_path_factory.mktemp("image-run")
    redis_port = stack.free_port(kind=socket.SOCK_STREAM)
    ng_port = stack.free_port()
    low, high = stack.free_port_range(100)
    env = {"GW_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "GW_RTPENGINE": f"udp:127.0.0.1:{ng_port}",
           "GW_MEDIA_IP": "127.0.0.1", "GW_MEDIA_PORTS": f"{low}-{high}", "GW_WS_ORIGINS": ORIGIN}
    cfg = settings_mod.load(env)
    (base / "redis").mkdir()
    daemons = [stack.Daemon("redis-server", stack.redis_argv(HostPort("127.0.0.1", redis_port), base / "redis"),
                            base / "redis.log").start()]
    try:
        stack.wait_for(lambda: stack.redis_ping("127.0.0.1", redis_port), 10, "redis", daemons[0])
        daemons.append(stack.Daemon("rtpengine", stack.rtpengine_argv(cfg, cfg.rtpengines[0]),
                                    base / "rtpengine.log").start())
        stack.wait_for(lambda: stack.ng_ping(cfg.rtpengines[0]), 10, "rtpengine", daemons[1])
        yield {"env": env, "base": base, "redis_port": redis_port, "ng": cfg.rtpengines[0]}
    finally:
        for d in reversed(daemons):
            d.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for d in daemons:
            (ARTIFACTS / f"image-run-{d.name}.log").write_text(d.log_text())


def _gateway_env(shared) -> dict[str, str]:
    return {**shared["env"],
            "GW_SIP_LISTEN": f"127.0.0.1:{stack.free_port()}",
            "GW_WS_LISTEN": f"127.0.0.1:{stack.free_port(kind=socket.SOCK_STREAM)}",
            "GW_PBX": f"127.0.0.1:{stack.free_port()}"}


def _wait_options(env: dict[str, str], alive, what: str) -> None:
    host, _, port = env["GW_SIP_LISTEN"].rpartition(":")
    deadline = time.monotonic() + 30
    while not (stack.sip_options(host, int(port)) or "").startswith("SIP/2.0 200"):
        if not alive():
            pytest.fail(f"{what} exited before answering OPTIONS")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: no 200 to OPTIONS on {env['GW_SIP_LISTEN']} within 30 s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def make_run(shared):
    env = _gateway_env(shared)
    env["GW_RUN_DIR"] = str(shared["base"] / "make-run")
    # What `make run` runs: the venv's python, this checkout's gw.run.
    d = stack.Daemon("make-run", [sys.executable, "-m", "gw.run"], shared["base"] / "make-run.log",
                     env={**os.environ, **env, "PYTHONPATH": str(ROOT)}).start()
    try:
        _wait_options(env, lambda: not d.exited(), "make run (python -m gw.run)")
        yield env
    finally:
        d.stop(timeout=10)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "image-run-make-run.log").write_text(d.log_text())


@pytest.fixture(scope="module")
def by_hand(shared):
    if ds.image_labels(ds.GATEWAY_IMAGE) is None:
        pytest.fail(f"{ds.GATEWAY_IMAGE} does not exist: `make deploy-test` builds it first (make image)")
    env = _gateway_env(shared)
    argv = ["run", "--detach", "--name", CONTAINER, "--network", "host", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges:true",
            "--tmpfs", f"/run/gateway:uid={ds.GATEWAY_UID},gid={ds.GATEWAY_UID},mode=0750", "--tmpfs", "/tmp"]
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    ds.docker("rm", "-f", CONTAINER, check=False)
    ds.docker(*argv, ds.GATEWAY_IMAGE, timeout=60)

    def alive() -> bool:
        r = ds.docker("inspect", "-f", "{{.State.Running}}", CONTAINER, check=False, timeout=30)
        return r.stdout.strip() == "true"

    try:
        _wait_options(env, alive, f"the container {CONTAINER}")
        yield env
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        logs = ds.docker("logs", CONTAINER, check=False, timeout=60)
        (ARTIFACTS / "image-run-container.log").write_text(logs.stdout + logs.stderr)
        ds.docker("rm", "-f", CONTAINER, check=False, timeout=60)


def _http(env: dict[str, str], path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{env['GW_WS_LISTEN']}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _record(env: dict[str, str], shared, dns: tuple[str, str]) -> dict[str, Any]:
    """What a user of the gateway sees of it, with its own addresses taken out."""
    host, _, port = env["GW_SIP_LISTEN"].rpartition(":")
    pbx_host, _, pbx_port = env["GW_PBX"].rpartition(":")
    rec: dict[str, Any] = {"options": stack.sip_options(host, int(port), timeout=2)}
    status, body = _http(env, "/health")
    health = json.loads(body)
    # Each run has a PBX emulator of its own (its port differs): compare the kinds.
    deps = {("pbx" if k.startswith("pbx ") else k): v for k, v in health["dependencies"].items()}
    rec["health"] = (status, health["status"], deps)
    _, metrics = _http(env, "/metrics")
    rec["metric_families"] = sorted(set(re.findall(r"^# TYPE (\S+)", metrics, re.M)))
    r = redis_lib.Redis(host="127.0.0.1", port=shared["redis_port"], decode_responses=True)
    pbx = RtpPbx(pbx_host, int(pbx_port), MediaPlan(freq=ds.PBX_TONE))
    try:
        view = ds.GatewayView(f"ws://{env['GW_WS_LISTEN']}", HostPort(host, int(port)), shared["ng"],
                              ds.phone_class(ORIGIN))
        calls = ds.calls_both_ways(view, pbx, dns, binding=lambda dn: r.get(f"gw:reg:{dn}"))
    finally:
        pbx.close()
    rec["calls"] = calls
    rec["problems"] = [p for c in calls for p in ds.media_problems(c)]
    rec["call_outcomes"] = [(c["order"], c.get("statuses"), c.get("pt13_at_phone")) for c in calls]
    rec["binding_fields"] = [sorted(json.loads(c["binding"])) if c.get("binding") else None for c in calls]
    return rec


def test_image_by_hand_behaves_as_make_run(shared, make_run, by_hand):
    ran = _record(make_run, shared, ("4911", "4912"))
    hand = _record(by_hand, shared, ("4921", "4922"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "image-vs-make-run.json").write_text(
        json.dumps({"make_run": ran, "docker_run": hand}, indent=2, default=str) + "\n")
    assert not ran["problems"], "make run itself failed the checks:\n" + "\n".join(ran["problems"])
    assert not hand["problems"], "the image failed the checks:\n" + "\n".join(hand["problems"])
    assert ran["options"].startswith("SIP/2.0 200")
    for key in ("options", "health", "metric_families", "call_outcomes", "binding_fields"):
        assert hand[key] == ran[key], f"{key}: docker run {hand[key]!r} != make run {ran[key]!r}"

    # ... and the container ran as set: non-root, read-only, no capabilities.
    info = json.loads(ds.docker("inspect", CONTAINER, timeout=30).stdout)[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    for pid in ds.container_pids(CONTAINER):
        ident = ds.process_identity(pid)
        assert ident["Uid"].split()[0] == str(ds.GATEWAY_UID) and int(ident["CapEff"], 16) == 0, ident
