"""`make run` (python -m gw.run) and the CN filter, end to end on free ports:

* as root it installs the nftables table for the rtpengine it starts (only that
  rtpengine's port range), says once that calls are plain relays, hands that to
  the KEMI app, and removes the table when it stops;
* without CAP_NET_ADMIN it says once that it falls back to rtpengine's
  transcoder, and a real WebRTC call whose PBX sends CN it never offered still
  gets 0 PT 13 at the phone, through a transcoding relay."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ARTIFACTS
from gw import cnfilter, stack
from kemi.ng import NgClient
from kemi.settings import HostPort
from support.media_calls import PBX_TONE, Scenario, run_scenario
from support.rtp_pbx import MediaPlan, RtpPbx
from support.rtpaudio import PT_CN
from support.webrtc_phone import LoopThread

ROOT = Path(__file__).resolve().parent.parent
OUT = ARTIFACTS / "cn_make_run"
NO_NET_ADMIN = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"]


@dataclass
class Gateway:
    """A `make run` in a subprocess, with its output collected line by line."""
    env: dict[str, str]
    proc: subprocess.Popen
    lines: list[str]

    @property
    def ws_url(self) -> str:
        return f"ws://{self.env['GW_WS_LISTEN']}"

    @property
    def sip(self) -> HostPort:
        host, port = self.env["GW_SIP_LISTEN"].split(":")
        return HostPort(host, int(port))

    @property
    def media_ports(self) -> tuple[int, int]:
        low, high = self.env["GW_MEDIA_PORTS"].split("-")
        return int(low), int(high)

    def ng(self) -> NgClient:
        return NgClient.from_spec(self.env["GW_RTPENGINE"], 1.0)

    def said(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)        # our own child, by pid
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def make_run(name: str, prefix: list[str] | None = None) -> Gateway:
    host = "127.0.0.1"
    low, high = stack.free_port_range(40, host)
    run_dir = OUT / name
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ,
           "GW_WS_LISTEN": f"{host}:{stack.free_port(host, kind=stack.socket.SOCK_STREAM)}",
           "GW_SIP_LISTEN": f"{host}:{stack.free_port(host)}",
           "GW_PBX": f"{host}:{stack.free_port(host)}",
           "GW_REDIS_URL": f"redis://{host}:{stack.free_port(host, kind=stack.socket.SOCK_STREAM)}/0",
           "GW_RTPENGINE": f"udp:{host}:{stack.free_port(host)}",
           "GW_MEDIA_IP": host, "GW_MEDIA_PORTS": f"{low}-{high}", "GW_RUN_DIR": str(run_dir)}
    env.pop("GW_CN_FILTER", None)
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "gw.run"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    gw = Gateway(env, proc, [])

    def read() -> None:
        with open(run_dir / "make-run.log", "w") as log:
            for line in proc.stdout:
                gw.lines.append(line.rstrip("\n"))
                log.write(line)
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 40
    while not gw.said("gateway: ready"):
        if proc.poll() is not None or time.monotonic() > deadline:
            gw.stop()
            time.sleep(0.2)
            raise AssertionError("make run did not get ready:\n" + "\n".join(gw.lines[-60:]))
        time.sleep(0.1)
    return gw


def tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def test_make_run_installs_the_filter_for_its_rtpengine_and_removes_it():
    gw = make_run("with-filter")
    name = cnfilter.table_name(gw.media_ports)
    try:
        said = gw.said("comfort noise:")
        assert len(said) == 1, gw.lines
        assert "PT 13 dropped in front of rtpengine" in said[0] and f"table inet {name}" in said[0]
        assert f"table inet {name}" in tables()
        ruleset = subprocess.run(["nft", "list", "table", "inet", name], capture_output=True, text=True).stdout
        low, high = gw.media_ports
        assert f"udp dport {low}-{high} " in ruleset and f"owner: make run pid {gw.proc.pid}" in ruleset
        kam = gw.said("event=media.comfort_noise")
        assert len(kam) == 1 and "cn=filter" in kam[0], gw.lines
    finally:
        rc = gw.stop()
    assert rc == 0, gw.lines[-30:]
    assert name not in tables(), "make run left its CN filter behind"


@pytest.mark.slow
def test_make_run_without_cap_net_admin_falls_back_to_the_transcoder_and_says_so_once():
    gw = make_run("no-net-admin", NO_NET_ADMIN)
    pbx = RtpPbx(gw.env["GW_PBX"].split(":")[0], int(gw.env["GW_PBX"].split(":")[1]), MediaPlan(freq=PBX_TONE))
    loop = LoopThread()
    try:
        said = gw.said("comfort noise:")
        assert len(said) == 1, gw.lines
        assert "could not install the nftables filter" in said[0] and "CAP_NET_ADMIN" in said[0], said
        assert "transcoder" in said[0], said
        assert cnfilter.table_name(gw.media_ports) not in tables()
        kam = gw.said("event=media.comfort_noise")
        assert len(kam) == 1 and "cn=transcode" in kam[0], gw.lines
        # The PBX sends CN in every silence, never having offered it.
        plan = MediaPlan(freq=PBX_TONE, burst_ms=1000, silence_ms=600, cn=True, cn_every=1, sdp_cn=False)
        sc = Scenario("pbx->phone, CN never in PBX SDP", "pbx->phone", "4651", plan, talk=5)
        loop.run(run_scenario(sc, gw, pbx), timeout=60)
        sc.check()
        assert sc.leg.ep.tx.by_pt.get(PT_CN, 0) >= 50
        assert sc.call.media.rx.by_pt.get(PT_CN, 0) == 0, sc.call.media.rx.pts()
        assert sc.call.media.rx.by_pt.get(0, 0) >= 150, sc.call.media.rx.pts()
        medias = [m for t in sc.notes["rtpengine_query"]["tags"].values() for m in t.get("medias", [])]
        assert any("transcoding" in m.get("flags", []) for m in medias), medias
    finally:
        loop.close()
        pbx.close()
        rc = gw.stop()
    assert rc == 0, gw.lines[-30:]
