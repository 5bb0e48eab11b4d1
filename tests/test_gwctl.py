"""gwctl (gw/ctl/) against the real daemons: registrations, calls and WebSocket
connections while calls are up, and `doctor` with each fault provoked for real:
Redis stopped, rtpengine stopped, Kamailio stopped, no PBX listening (and one
that never answers), rtpengine advertising loopback/private addresses while the
phones are declared remote, CN left in the flags, the media port range taken by
another program, and the range dropped by a firewall (nftables, in a network
namespace of our own)."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ARTIFACTS, wait_until
from gw import cnfilter, ctl, stack
from kemi import media
from kemi import settings as settings_mod
from support.netns import NetNs
from support.sipp import SippRun
from support.wsphone import AnswerPolicy, webrtc_sdp
from test_core_calls import finished, registered, sipp

GWCTL = Path(sys.executable).parent / "gwctl"   # the console script pyproject installs
LOGS = ARTIFACTS / "gwctl"
MEDIA_CHECKS = "rtpengine,media_address,comfort_noise,media_ports"


def gwctl(env: dict[str, str], *args: str, netns: NetNs | None = None,
          timeout: float = 30) -> tuple[int, str, str]:
    assert GWCTL.exists(), f"{GWCTL} missing: `pip install -e .` installs the gwctl console script"
    argv = [str(GWCTL), *args]
    if netns is not None:
        argv = netns.argv(argv)
    env = {k: v for k, v in env.items() if k != "GWCTL_PHONES"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def stack_env(s, **extra: str) -> dict[str, str]:
    return {**s.env, "GW_RUN_DIR": str(s.run_dir), **extra}


def doctor(env: dict[str, str], *args: str, netns: NetNs | None = None) -> tuple[int, dict]:
    rc, out, err = gwctl(env, "doctor", "--json", *args, netns=netns)
    try:
        report = json.loads(out)
    except ValueError:
        raise AssertionError(f"gwctl doctor printed no JSON (rc {rc}):\n{out}\n{err}") from None
    return rc, {c["name"]: c for c in report["checks"]}


def statuses(checks: dict) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items()}


def pbx_answering(gw) -> SippRun:
    """A PBX that answers OPTIONS (SIPp) on GW_PBX."""
    LOGS.mkdir(parents=True, exist_ok=True)
    wait_until(lambda: not port_taken(gw.pbx.port), 3, "GW_PBX port free (previous test's PBX gone)")
    return SippRun("pbx_options.xml", port=gw.pbx.port, calls=None, log_dir=LOGS)


def port_taken(port: int) -> bool:
    return not stack.udp_port_free(port)


def wait_listening(port: int, timeout: float = 5) -> None:
    """SIPp is up once its UDP port is taken."""
    wait_until(lambda: port_taken(port), timeout, f"SIPp listening on {port}")


def start_rtpengine(base: Path, interface: str, ports: tuple[int, int],
                    netns: NetNs | None = None, ng_port: int | None = None) -> tuple[stack.Daemon, dict]:
    """A userspace rtpengine as gw/stack.py starts it, with its own --interface;
    returns it and the GW_* settings that point at it."""
    base.mkdir(parents=True, exist_ok=True)
    ng_port = ng_port or stack.free_port()
    env = {"GW_RTPENGINE": f"udp:127.0.0.1:{ng_port}", "GW_MEDIA_IP": "127.0.0.1",
           "GW_MEDIA_PORTS": f"{ports[0]}-{ports[1]}"}
    cfg = settings_mod.load(env)
    argv = [a if not a.startswith("--interface=") else f"--interface={interface}"
            for a in stack.rtpengine_argv(cfg, cfg.rtpengines[0], ports=ports)]
    if netns is not None:
        argv = netns.argv(argv)
    d = stack.Daemon("rtpengine", argv, base / "rtpengine.log").start()
    ping = (lambda: _ns_ping(netns, cfg)) if netns else (lambda: stack.ng_ping(cfg.rtpengines[0]))
    try:
        stack.wait_for(ping, 10, f"rtpengine {interface}", d)
    except Exception:
        d.stop()
        raise
    return d, env


def _ns_ping(ns: NetNs, cfg) -> bool:
    with ns.entered():
        return stack.ng_ping(cfg.rtpengines[0])


# ------------------------------------------------------------------- doctor
def test_doctor_all_good_on_a_healthy_gateway(gw):
    env = stack_env(gw)

    def relay_errors() -> int:
        return gw.ng().statistics()["statistics"]["totalstatistics"]["relayedpacketerrors"]

    errors_before = relay_errors()
    with pbx_answering(gw):
        wait_listening(gw.pbx.port)
        rc, checks = doctor(env, "--phones", "local")
        rc_text, out, _ = gwctl(env, "doctor", "--phones", "local")
    assert rc == 0, json.dumps(checks, indent=1)
    assert statuses(checks) == {name: "ok" for name in ctl.CHECKS}
    assert "SIP/2.0 200" in checks["pbx"]["detail"]
    assert checks["media_address"]["data"]["advertised"] == ["127.0.0.1"]
    ports = checks["media_ports"]["data"]
    assert ports["stun_reply"] == "success" and ports["relayed"] == {"b->a": True, "a->b": True}
    assert all(gw.media_ports[0] <= p <= gw.media_ports[1] for p in ports["ports"])
    assert rc_text == 0 and out.strip().endswith("all good")
    # PT 13 sent through rtpengine died in the CN filter in front of it
    cn = checks["comfort_noise"]
    assert "dropped in front of it" in cn["detail"] and cn["data"]["gateway_cn_path"] == "filter", cn
    # doctor's sample sessions are gone again, and its probes added no relay error to
    # rtpengine's statistics (gateway_rtpengine_errors_total must not move on a doctor run)
    assert not [c for c in gw.ng().list_calls() if c.startswith(ctl.DOCTOR_PREFIX)]
    assert relay_errors() == errors_before


def test_doctor_loopback_media_while_phones_are_remote(gw):
    """The test rtpengine runs with --interface=127.0.0.1: fine for phones on this
    host, a fault for phones on the LAN or the internet (the default)."""
    env = stack_env(gw)
    with pbx_answering(gw):
        wait_listening(gw.pbx.port)
        rc, checks = doctor(env)                        # default: --phones internet
        rc_lan, checks_lan = doctor(env, "--phones", "lan")
        rc_text, out, _ = gwctl(env, "doctor")
    bad = checks["media_address"]
    assert rc == 1 and bad["status"] == "fail"
    assert "127.0.0.1 (loopback)" in bad["detail"] and "internet" in bad["detail"]
    assert "GW_MEDIA_IP" in bad["fix"] and "--phones local" in bad["fix"]
    others = {k: v for k, v in statuses(checks).items() if k != "media_address"}
    assert set(others.values()) == {"ok"}, others
    assert rc_lan == 1 and checks_lan["media_address"]["status"] == "fail"
    assert rc_text == 1 and "FAIL  media_address" in out and "fix: Give rtpengine an address" in out
    assert "1 check(s) failed" in out


def test_doctor_phones_setting_from_environment(gw):
    env = {**stack_env(gw), "GWCTL_PHONES": "local"}
    proc = subprocess.run([str(GWCTL), "doctor", "--json", "--only", "media_address"],
                          capture_output=True, text=True, env=env, timeout=30)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["phones"] == "local", proc.stdout


@pytest.mark.parametrize("advertised,phones,expected", [
    ("10.20.30.40", "lan", "ok"),
    ("10.20.30.40", "internet", "fail"),
    ("198.51.100.7", "internet", "ok"),
])
def test_doctor_advertised_address_rule(tmp_path, advertised, phones, expected):
    """rtpengine binds 127.0.0.1 and advertises another address (interface=IP!ADV,
    as behind 1:1 NAT): the rule judges the advertised one, and the port probes
    go to the bound one (nothing is ever sent to the advertised address)."""
    d, env = start_rtpengine(tmp_path, f"127.0.0.1!{advertised}", stack.free_port_range(40))
    try:
        rc, checks = doctor({**os.environ, **env}, "--phones", phones, "--only", MEDIA_CHECKS)
    finally:
        d.stop()
    addr = checks["media_address"]
    assert addr["status"] == expected, addr
    assert addr["data"]["advertised"] == [advertised]
    assert addr["data"]["bound"] == "127.0.0.1"
    kind = "private" if advertised.startswith("10.") else "public"
    assert f"{advertised} ({kind})" in addr["detail"]
    assert checks["media_ports"]["status"] == "ok", checks["media_ports"]
    assert rc == (0 if expected == "ok" else 1)


def test_doctor_redis_down(fresh_gw):
    fresh_gw.redis.stop()
    rc, checks = doctor(stack_env(fresh_gw), "--phones", "local")
    redis = checks["redis"]
    assert rc == 1 and redis["status"] == "fail"
    port = stack.redis_addr(fresh_gw.cfg.redis_url).port
    assert "does not answer" in redis["detail"] and f":{port}/" in redis["detail"]
    assert "Start Redis" in redis["fix"] and "GW_REDIS_URL" in redis["fix"]
    assert checks["rtpengine"]["status"] == "ok" and checks["kamailio"]["status"] == "ok"


def test_doctor_redis_password_wrong(fresh_gw):
    """A Redis with requirepass and a GW_REDIS_URL without the password."""
    fresh_gw.redis_client().config_set("requirepass", "s3cret")
    rc, checks = doctor(stack_env(fresh_gw), "--only", "redis")
    assert rc == 1 and checks["redis"]["status"] == "fail"
    assert "credentials" in checks["redis"]["detail"] and "password" in checks["redis"]["fix"]
    url = fresh_gw.cfg.redis_url.replace("redis://", "redis://:s3cret@")
    rc, checks = doctor(stack_env(fresh_gw, GW_REDIS_URL=url), "--only", "redis")
    assert rc == 0 and "s3cret" not in checks["redis"]["detail"] and ":***@" in checks["redis"]["detail"]


def test_doctor_rtpengine_down(fresh_gw):
    fresh_gw.rtpengine.stop()
    rc, checks = doctor(stack_env(fresh_gw), "--phones", "local")
    rtp = checks["rtpengine"]
    assert rc == 1 and rtp["status"] == "fail"
    assert rtp["target"] == f"udp:{fresh_gw.cfg.rtpengines[0]}"
    assert "ng ping" in rtp["detail"] and "Start rtpengine" in rtp["fix"] and "GW_RTPENGINE" in rtp["fix"]
    assert checks["media_address"]["status"] == "skip"
    assert checks["comfort_noise"]["status"] == "skip"
    assert checks["media_ports"]["status"] == "skip"
    assert checks["redis"]["status"] == "ok"


def test_doctor_kamailio_down(fresh_gw):
    fresh_gw.kamailio.stop()
    rc, checks = doctor(stack_env(fresh_gw), "--only", "kamailio,redis")
    assert rc == 1 and checks["kamailio"]["status"] == "fail"
    assert "does not answer SIP OPTIONS" in checks["kamailio"]["detail"]
    assert checks["redis"]["status"] == "ok"


def test_doctor_pbx_not_listening_or_silent(gw):
    env = stack_env(gw)
    wait_until(lambda: not port_taken(gw.pbx.port), 3, "GW_PBX port free")
    # nothing on GW_PBX: the kernel answers with ICMP port unreachable
    rc, checks = doctor(env, "--only", "pbx")
    assert rc == 1 and checks["pbx"]["status"] == "fail"
    assert f"GW_PBX={gw.pbx}" in checks["pbx"]["detail"] and "nothing listens" in checks["pbx"]["detail"]
    assert "GW_PBX" in checks["pbx"]["fix"] and "firewall" in checks["pbx"]["fix"]
    # a socket that swallows everything (a PBX that hangs, or a firewall that drops)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind((gw.pbx.host, gw.pbx.port))
        rc, checks = doctor(env, "--only", "pbx")
        got = hole.recv(4096).decode()
    assert rc == 1 and "no answer within 2s" in checks["pbx"]["detail"]
    assert got.startswith(f"OPTIONS sip:{gw.pbx} SIP/2.0")
    # and a PBX that answers
    with pbx_answering(gw):
        wait_listening(gw.pbx.port)
        rc, checks = doctor(env, "--only", "pbx")
    assert rc == 0 and checks["pbx"]["detail"] == "answers OPTIONS: SIP/2.0 200 OK"


def test_doctor_comfort_noise_toward_the_phone(gw, monkeypatch):
    """A gateway whose flags lost their CN handling (a regression in kemi/media.py, or
    an old kemi/ deployed): the same sample offers through the real rtpengine show
    CN reaching the phone."""
    env = stack_env(gw)
    cfg = settings_mod.load(env)
    kam = ctl.Kamailio(ctl.ctl_socket(None, env))
    healthy = ctl.doctor(cfg, kam, "local", only=["comfort_noise"])
    assert [c["status"] for c in healthy] == ["ok"], healthy
    real_flags = media.flags

    def flags_without_cn_handling(op, receiver, sender=None, cn=media.CnBlock.TRANSCODE):
        tokens = real_flags(op, receiver, sender, cn).tokens
        return media.Flags(tuple(t for t in tokens if not t.startswith("codec-")))

    monkeypatch.setattr(media, "flags", flags_without_cn_handling)
    [cn] = ctl.doctor(cfg, kam, "local", only=["comfort_noise"])
    assert cn["status"] == "fail", cn
    found = cn["data"]["found"]
    assert "inbound offer to the phone" in found and "outbound answer to the phone" in found
    assert any("CN/8000" in hit for hit in found["inbound offer to the phone"])
    assert "codec-consume-CN" in cn["fix"] and "rtpengine/FLAGS.md" in cn["fix"]
    assert not [c for c in gw.ng().list_calls() if c.startswith(ctl.DOCTOR_PREFIX)]


def test_doctor_comfort_noise_filter_gone_or_missing(fresh_gw):
    """The CN filter in front of rtpengine removed while the gateway relays calls
    plainly: doctor's PT 13 comes out of rtpengine, so CN would reach phones (fail,
    with the command that puts the filter back). A gateway on the transcoder path
    without a filter keeps CN away at a cost: a warning with the same fix."""
    env = stack_env(fresh_gw)
    low, high = fresh_gw.media_ports
    assert fresh_gw.cn.cn is media.CnBlock.FILTER, fresh_gw.cn.message
    cnfilter.remove(fresh_gw.media_ports)
    try:
        rc, checks = doctor(env, "--only", "comfort_noise")
    finally:
        cnfilter.install(fresh_gw.media_ports, f"pytest pid {os.getpid()}")
    cn = checks["comfort_noise"]
    assert rc == 1 and cn["status"] == "fail", cn
    assert "came out of rtpengine" in cn["detail"] and "reaches the phones" in cn["detail"]
    assert f"rtpengine/cn-filter.sh install {low} {high}" in cn["fix"] and "restart the gateway" in cn["fix"]
    assert cn["data"]["gateway_cn_path"] == "filter"
    rc, checks = doctor(env, "--only", "comfort_noise")
    assert rc == 0 and checks["comfort_noise"]["status"] == "ok", checks
    # A gateway on the transcoder path (GW_CN_FILTER=off at start), no filter: warn.
    kam = ctl.Kamailio(ctl.ctl_socket(None, env))
    kam.rpc("pv.shvSet", "gw_cn", "str", "transcode")
    cnfilter.remove(fresh_gw.media_ports)
    try:
        rc, checks = doctor(env, "--only", "comfort_noise")
    finally:
        cnfilter.install(fresh_gw.media_ports, f"pytest pid {os.getpid()}")
        kam.rpc("pv.shvSet", "gw_cn", "str", "filter")
    cn = checks["comfort_noise"]
    assert rc == 0 and cn["status"] == "warn", cn
    assert "transcoder" in cn["detail"] and "2.4x" in cn["detail"], cn
    assert f"cn-filter.sh install {low} {high}" in cn["fix"]
    assert not [c for c in fresh_gw.ng().list_calls() if c.startswith(ctl.DOCTOR_PREFIX)]


def test_doctor_media_ports_taken_by_another_program(tmp_path):
    """Another program (Asterisk's rtp.conf range, say) holds rtpengine's ports."""
    low, high = stack.free_port_range(12)
    squatters = []
    d, env = start_rtpengine(tmp_path, "127.0.0.1", (low, high))
    try:
        for port in range(low, high + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            squatters.append(s)
        rc, checks = doctor({**os.environ, **env}, "--phones", "local", "--only", MEDIA_CHECKS)
    finally:
        for s in squatters:
            s.close()
        d.stop()
    ports = checks["media_ports"]
    assert rc == 1 and ports["status"] == "fail", ports
    assert "Ran out of ports" in ports["detail"] and "sampled ports in use" in ports["detail"]
    assert "range of its own" in ports["fix"]
    assert checks["rtpengine"]["status"] == "ok"
    assert checks["media_address"]["status"] == "skip"


def test_doctor_media_ports_outside_gw_media_ports(tmp_path):
    """rtpengine's own range differs from GW_MEDIA_PORTS (what the firewall opens)."""
    low, high = stack.free_port_range(40)
    d, env = start_rtpengine(tmp_path, "127.0.0.1", (low, high))
    try:
        env["GW_MEDIA_PORTS"] = f"{low + 1000}-{high + 1000}"
        rc, checks = doctor({**os.environ, **env}, "--phones", "local", "--only", MEDIA_CHECKS)
    finally:
        d.stop()
    ports = checks["media_ports"]
    assert rc == 1 and ports["status"] == "fail"
    assert "outside GW_MEDIA_PORTS" in ports["detail"] and "port-min/port-max" in ports["fix"]


def test_doctor_media_ports_dropped_by_a_firewall(tmp_path):
    """rtpengine in a namespace of our own; an nftables rule drops UDP to its range."""
    ns = NetNs(f"gwctl{os.getpid() % 100000}").create()
    d = None
    try:
        d, env = start_rtpengine(tmp_path, "127.0.0.1", (30000, 30039), netns=ns, ng_port=2223)
        env = {**os.environ, **env}
        rc, checks = doctor(env, "--phones", "local", "--only", MEDIA_CHECKS, netns=ns)
        assert rc == 0, checks
        ns.run(["nft", "add table inet gwctl_test"])
        ns.run(["nft", "add chain inet gwctl_test input { type filter hook input priority 0 ; }"])
        ns.run(["nft", "add rule inet gwctl_test input udp dport 30000-30039 drop"])
        rc, checks = doctor(env, "--phones", "local", "--only", MEDIA_CHECKS, netns=ns)
    finally:
        if d is not None:
            d.stop()
        ns.delete()
    ports = checks["media_ports"]
    assert rc == 1 and ports["status"] == "fail", ports
    assert "no answer to an ICE check" in ports["detail"]
    assert "was not relayed (b->a, a->b lost)" in ports["detail"]
    assert "firewall" in ports["fix"] and "30000-30039" in ports["fix"]
    assert checks["rtpengine"]["status"] == "ok" and checks["media_address"]["status"] == "ok"


def test_doctor_bad_settings(gw):
    env = stack_env(gw, GW_MEDIA_PORTS="20000")
    rc, checks = doctor(env)
    assert rc == 1 and checks["settings"]["status"] == "fail"
    assert "GW_MEDIA_PORTS" in checks["settings"]["detail"]
    rc, _, err = gwctl(env, "registrations")
    assert rc == 2 and "GW_MEDIA_PORTS" in err


# ------------------------------------------------------ registrations, calls, ws
def test_registrations_calls_and_ws_while_calls_are_up(gw):
    env = stack_env(gw)

    def run(*args: str) -> dict:
        rc, out, err = gwctl(env, *args, "--json")
        assert rc == 0, f"gwctl {args}: {rc}\n{out}\n{err}"
        return json.loads(out)

    def both(*args: str) -> tuple:
        # Called while the calls are up: no assertion may leave them behind.
        return gwctl(env, *args, "--json"), gwctl(env, *args)

    async def go():
        async with registered(gw, "1301") as caller, \
                registered(gw, "1302", AnswerPolicy(mode="ring")) as callee:
            with sipp("pbx_uas.xml", gw, keys={"hangup": "phone"}) as uas:
                out_call = await caller.invite("sip:2000@pbx.test", webrtc_sdp())
                assert (await out_call.wait_final()).status == 200
                uac_port = stack.free_port()
                with SippRun("pbx_uac.xml", port=uac_port, remote=str(gw.sip), service="1302",
                             keys={"hangup": "pbx", "call_ms": 200}, log_dir=LOGS) as uac:
                    in_call = await callee.wait_incoming(10)
                    await in_call.wait_state("early", timeout=5)
                    raw = {cmd: await asyncio.to_thread(both, cmd)
                           for cmd in ("registrations", "calls", "ws")}
                    await in_call.answer()
                    await in_call.wait_state("terminated", timeout=10)
                    assert await finished(uac, 10) == 0, uac.errors()
                await out_call.bye()
                assert await finished(uas, 10) == 0, uas.errors()
        return raw, out_call.call_id, in_call.call_id

    raw, out_id, in_id = asyncio.run(go())
    seen = {}
    for cmd, ((rc, out, err), (rc_text, out_text, err_text)) in raw.items():
        assert rc == 0 and rc_text == 0, f"gwctl {cmd}: {rc}/{rc_text}\n{out}\n{err}\n{err_text}"
        seen[cmd], seen[f"{cmd}_text"] = json.loads(out), out_text

    regs = {r["user"]: r for r in seen["registrations"]["registrations"]}
    for user in ("1301", "1302"):
        r = regs[user]
        assert r["received"].startswith("sip:127.0.0.1:") and r["received"].endswith(";transport=ws")
        assert r["node"] == str(gw.sip) and r["user_agent"] == "JsSIP 3.10.0"
        assert 0 < r["expires_left"] <= 600 and r["ws"] == "open"
    assert "1301" in seen["registrations_text"] and "USER AGENT" in seen["registrations_text"]

    calls = {c["call_id"]: c for c in seen["calls"]["calls"]}
    out_c, in_c = calls[out_id], calls[in_id]
    assert (out_c["direction"], out_c["state"]) == ("outbound", "confirmed")
    assert out_c["from"] == "sip:1301@pbx.test" and out_c["to"] == "sip:2000@pbx.test"
    assert [leg["side"] for leg in out_c["media"]["legs"]] == ["phone", "pbx"]
    assert out_c["media"]["legs"][0]["protocol"] == "UDP/TLS/RTP/SAVPF"
    assert out_c["media"]["legs"][1]["protocol"] == "RTP/AVP"
    assert (in_c["direction"], in_c["state"]) == ("inbound", "early")
    assert in_c["media"] is not None and in_c["note"] == ""
    assert seen["calls"]["errors"] == []
    assert out_id in seen["calls_text"] and "confirmed" in seen["calls_text"]

    conns = seen["ws"]["connections"]
    by_user = {c["user"]: c for c in conns if c["user"]}
    assert {"1301", "1302"} <= set(by_user)
    assert by_user["1301"]["state"] == "OPEN" and by_user["1301"]["local"] == f"ws:{gw.cfg.ws_listen}"
    assert by_user["1301"]["id"] == regs["1301"]["conid"]
    assert "1302" in seen["ws_text"]

    # after hang-up: no call left, and the phones' connections are gone
    wait_until(lambda: not [c for c in run("calls")["calls"] if c["call_id"] in (out_id, in_id)],
               10, "calls gone from gwctl calls")
    wait_until(lambda: not {"1301", "1302"} & {c["user"] for c in run("ws")["connections"]},
               10, "connections gone")


def test_registration_whose_websocket_closed_shows_gone(gw):
    env = stack_env(gw)

    async def go():
        async with registered(gw, "1303") as phone:
            await phone.ws.close()
            await asyncio.sleep(0.3)
            rc, out, _ = await asyncio.to_thread(gwctl, env, "registrations", "--json")
            return rc, json.loads(out)

    rc, report = asyncio.run(go())
    regs = {r["user"]: r for r in report["registrations"]}
    assert rc == 0 and regs["1303"]["ws"] == "gone"


def test_calls_and_ws_without_kamailio_ctl_say_where_they_looked(gw, tmp_path):
    env = stack_env(gw, GW_RUN_DIR=str(tmp_path))
    rc, out, err = gwctl(env, "ws")
    assert rc == 1 and f"no Kamailio control socket at {tmp_path}/kamailio_ctl" in err
    assert "GW_RUN_DIR" in err
    rc, out, err = gwctl(env, "calls", "--json")
    report = json.loads(out)
    assert rc == 1 and any("control socket" in e for e in report["errors"])
    rc, out, err = gwctl(env, "--ctl", gw.ctl(), "ws", "--json")
    assert rc == 0 and "connections" in json.loads(out)


def test_module_entry_point_as_in_the_container(gw):
    """The image runs it as `python3 -m gw.ctl` (no pip install there)."""
    proc = subprocess.run([sys.executable, "-m", "gw.ctl", "doctor", "--json", "--only", "settings,redis"],
                          capture_output=True, text=True, env=stack_env(gw), cwd=ctl.ROOT, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c["status"] for c in json.loads(proc.stdout)["checks"]] == ["ok", "ok"]
