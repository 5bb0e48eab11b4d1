"""`make deploy-test`, part 2: deploy/compose.yaml brought up for real, checked in order.

The images are `make image`'s (gateway, rtpengine); redis, nginx, coturn and
prometheus are whatever exists under compose's names, else test stand-ins built
from Debian packages (tests/deploy_stack/standins). Asterisk is not started: the
PBX is the test PBX emulator (support/rtp_pbx.py) at GW_PBX. compose.yaml is used
as shipped, under the project name `gwdeploytest` (so a real deployment's
containers and volumes on the same host are never touched), with a .env this
test writes (random secrets, a test certificate, loopback addresses) and, only
on a host that cannot raise the open-files limit, an override lowering nofile.

Checks, in order: every container healthy; the gateway runs as non-root with a
read-only root filesystem and no capabilities; a phone registers over
wss://127.0.0.1:8443 and calls both ways with media; Prometheus scrapes the
gateway's /metrics; /metrics through nginx from outside MONITORING_CIDR is 403;
rtpengine killed restarts by itself and calls work again; `docker compose down`
leaves nothing running. Logs and figures: tests/_artifacts/deploy-stack/.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import yaml

from kemi.ng import NgClient
from kemi.settings import HostPort
from support import dockerstack as ds
from support import stun
from support.rtp_pbx import MediaPlan, RtpPbx

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "_artifacts" / "deploy-stack"
PROJECT = "gwdeploytest"
ORIGIN = "https://agents.deploytest.invalid"
# What compose.yaml and rtpengine/rtpengine.conf bind on the host (host networking).
FIXED_TCP = [8443, 8080, 6379, 2225, 9090, 3478]
FIXED_UDP = [2223, 2224, 3478]
NG = HostPort("127.0.0.1", 2223)
PORT_WAIT_S = 300
WSS_URL = "wss://127.0.0.1:8443"
FIGURES: dict[str, Any] = {}


def _certificate(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "fullchain.pem", d / "privkey.pem"
    ds.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert)], timeout=60)
    cert.chmod(0o644)
    return cert


def _env(workdir: Path, sip_port: int, pbx_port: int) -> dict[str, str]:
    """.env.example's names (so settings that later work adds are present), with
    test values: loopback only, random secrets, the test certificate."""
    env = {}
    for line in (ROOT / "deploy" / ".env.example").read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            env[name] = value
    env.update({
        "GW_MEDIA_IP": "127.0.0.1", "RTPENGINE_ADVERTISED_IP": "",
        "GW_SIP_LISTEN": f"127.0.0.1:{sip_port}", "GW_PBX": f"127.0.0.1:{pbx_port}", "GW_PBX_ALLOW": "",
        "GW_WS_ORIGINS": ORIGIN, "GW_LOG_LEVEL": "info",
        "REDIS_PASSWORD": os.urandom(16).hex(), "TURN_SECRET": os.urandom(16).hex(),
        "TURN_HOST": "127.0.0.1", "TURN_REALM": "deploytest.invalid", "TURN_EXTERNAL_IP": "127.0.0.1",
        "TLS_CERT_DIR": str(workdir / "certs"),
        # Loopback is outside it: /metrics through nginx must be refused here.
        "MONITORING_CIDR": "198.51.100.0/24",
    })
    return env


@dataclass
class Deployed:
    """The running stack and what the checks need to reach it."""

    compose: ds.ComposeStack
    cert: Path
    pbx_port: int
    services: list[str]
    started_at: float

    @property
    def env(self) -> dict[str, str]:
        return self.compose.env

    def inspect(self, service: str) -> dict[str, Any]:
        return self.compose.inspect(service)

    def save_logs(self, dest: Path) -> None:
        self.compose.save_logs(dest)

    def down(self):
        return self.compose.down()


def _services() -> list[str]:
    doc = yaml.safe_load(ds.COMPOSE_FILE.read_text())
    return [s for s in doc["services"] if s != "asterisk"]  # the test PBX stands in for Asterisk


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    FIGURES["docker"] = ds.docker_ready()
    for image in (ds.GATEWAY_IMAGE, ds.RTPENGINE_IMAGE):
        if ds.image_labels(image) is None:
            pytest.fail(f"{image} does not exist: `make deploy-test` builds it first (make image)")
    services = _services()
    FIGURES["standins"] = ds.ensure_standins(services)
    sip_port, pbx_port = ds.free_port(), ds.free_port()
    # compose.yaml fixes most loopback ports; on a shared box another test may
    # hold one for a while (e.g. an rtpengine reading Debian's default config).
    deadline = time.monotonic() + PORT_WAIT_S
    while busy := ds.busy_ports(FIXED_TCP + [sip_port], FIXED_UDP + [sip_port]):
        if time.monotonic() > deadline:
            pytest.fail(f"ports the compose stack binds on this host are still taken after {PORT_WAIT_S} s "
                        "(stop what holds them):\n" + "\n".join(busy))
        print("waiting for ports the stack needs:", "; ".join(busy), flush=True)
        time.sleep(5)
    workdir = tmp_path_factory.mktemp("deploy-stack")
    cert = _certificate(workdir / "certs")
    st = ds.ComposeStack(PROJECT, workdir, _env(workdir, sip_port, pbx_port))
    st.write_env()
    ceiling = ds.nofile_ceiling()
    if ceiling is not None:
        override = ds.nofile_override(st, ceiling)
        if override is not None:
            st.overrides.append(override)
            FIGURES["host_override"] = override.read_text()
    if st.project_containers():
        st.down()  # a run that was killed half-way
    started = time.monotonic()
    up = st.compose("up", "--detach", "--no-build", *services, timeout=600, check=False)
    FIGURES["compose_up_s"] = round(time.monotonic() - started, 1)
    try:
        if up.returncode != 0:
            st.save_logs(ARTIFACTS)
            pytest.fail(f"docker compose up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        yield Deployed(st, cert, pbx_port, services, started)
    finally:
        st.save_logs(ARTIFACTS)
        st.down()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "figures.json").write_text(json.dumps(FIGURES, indent=2, default=str) + "\n")


@pytest.fixture(scope="module")
def pbx(deployed):
    p = RtpPbx("127.0.0.1", deployed.pbx_port, MediaPlan(freq=ds.PBX_TONE))
    yield p
    p.close()


def _view(st) -> ds.GatewayView:
    host, _, port = st.env["GW_SIP_LISTEN"].rpartition(":")
    return ds.GatewayView(WSS_URL, HostPort(host, int(port)), NG, ds.phone_class(ORIGIN, st.cert))


def _binding_reader(st):
    r = redis_lib.Redis(host="127.0.0.1", port=6379, password=st.env["REDIS_PASSWORD"], decode_responses=True)
    return lambda dn: r.get(f"gw:reg:{dn}")


def _https(st, path: str) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(st.cert))
    c = http.client.HTTPSConnection("127.0.0.1", 8443, context=ctx, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def _logs_hint(st) -> str:
    st.save_logs(ARTIFACTS)
    return f"\n(container logs: {ARTIFACTS / 'compose-logs.txt'})"


# ------------------------------------------------------------------ 1
def test_every_container_healthy(deployed):
    """Every service healthy (its HEALTHCHECK) or, without one, running and
    answering its protocol: coturn a STUN Binding, Prometheus /-/ready."""
    st = deployed
    ready_at: dict[str, float] = {}

    def all_ready() -> bool:
        for svc in st.services:
            if svc in ready_at:
                continue
            info = st.inspect(svc)
            if info["State"]["Status"] != "running" and info["State"]["Status"] != "restarting":
                raise AssertionError(f"{svc} is {info['State']['Status']} (exit {info['State']['ExitCode']})"
                                     + _logs_hint(st))
            if ds.health(info) in ("healthy", "running"):
                ready_at[svc] = round(time.monotonic() - st.started_at, 1)
        return len(ready_at) == len(st.services)

    ds.wait_for(all_ready, 240, f"every container healthy (so far: {ready_at})", interval=1.0)
    FIGURES["healthy_after_s"] = ready_at
    for svc in st.services:
        assert st.inspect(svc)["RestartCount"] == 0, f"{svc} restarted while starting" + _logs_hint(st)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        def binding():
            packet, txid = stun.binding_request()
            return stun.transact(sock, ("127.0.0.1", 3478), packet, txid, timeout=0.5)
        resp = ds.wait_for(binding, 30, "coturn STUN Binding on 3478/udp")
        assert resp.mtype == stun.BINDING | stun.SUCCESS
    finally:
        sock.close()
    ds.wait_for(lambda: urllib.request.urlopen("http://127.0.0.1:9090/-/ready", timeout=3).status == 200,
                30, "Prometheus /-/ready")


# ------------------------------------------------------------------ 2
def test_gateway_non_root_read_only_no_capabilities(deployed):
    st = deployed
    info = st.inspect("gateway")
    host = info["HostConfig"]
    assert info["Config"]["User"] == "kamailio"
    assert host["ReadonlyRootfs"] is True
    assert [c.upper() for c in host["CapDrop"] or []] in (["ALL"], ["CAP_ALL"]), host["CapDrop"]
    assert not host["CapAdd"], host["CapAdd"]
    assert "no-new-privileges:true" in (host["SecurityOpt"] or [])
    cid = info["Id"]
    pids = ds.container_pids(cid)
    assert len(pids) >= 3, f"gateway processes: {pids}"  # gw.run + Kamailio's main and workers
    seen = {}
    for pid in pids:
        try:
            ident = ds.process_identity(pid)
        except FileNotFoundError:
            continue
        seen[pid] = ident
        assert set(ident["Uid"].split()) == {str(ds.GATEWAY_UID)}, ident
        assert set(ident["Gid"].split()) == {str(ds.GATEWAY_UID)}, ident
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(ident[cap], 16) == 0, (cap, ident)
        assert ident["NoNewPrivs"] == "1", ident
    FIGURES["gateway_processes"] = {pid: f"{i['Name']} uid={i['Uid'].split()[0]} CapEff={i['CapEff']}"
                                    for pid, i in seen.items()}
    r = ds.docker("exec", cid, "sh", "-c", "touch /opt/gateway/probe", check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, (r.returncode, r.stderr)
    r = ds.docker("exec", cid, "sh", "-c",
                  "touch /run/gateway/probe && rm /run/gateway/probe && ls /run/gateway", check=False)
    assert r.returncode == 0, r.stderr
    assert "metrics" in r.stdout.split() and "kamailio_ctl" in r.stdout.split(), r.stdout


# ------------------------------------------------------------------ 3
def _assert_calls(calls: list[dict]) -> None:
    problems = [p for c in calls for p in ds.media_problems(c)]
    for c in calls:
        if "error" not in c and not c.get("binding"):
            problems.append(f"{c['order']}: no gw:reg:{c['dn']} record in Redis during the call")
    assert not problems, "\n".join(problems) + "\n" + json.dumps(calls, indent=1, default=str)


def test_phone_registers_over_wss_and_calls_both_ways(deployed, pbx):
    st = deployed
    calls = ds.calls_both_ways(_view(st), pbx, ("4811", "4812"), binding=_binding_reader(st))
    FIGURES["calls"] = calls
    _assert_calls(calls)


# ------------------------------------------------------------------ 4
def _prometheus(path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:9090{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]


def test_prometheus_scrapes_gateway_metrics(deployed):
    """Prometheus (compose, deploy/prometheus.yml) has the gateway target up and
    holds the gateway's own series, including the calls of check 3."""
    since = time.time()

    def gateway_target():
        for t in _prometheus("/api/v1/targets")["activeTargets"]:
            if t["labels"].get("job") == "gateway":
                return t
        return None

    def scraped_after_calls():
        t = gateway_target()
        ok = t is not None and t["health"] == "up" and _scrape_time(t["lastScrape"]) > since
        return t if ok else None

    t = ds.wait_for(scraped_after_calls, 60, "a successful scrape of the gateway after the calls")
    FIGURES["prometheus_gateway_target"] = {k: t[k] for k in ("scrapeUrl", "health", "lastScrape",
                                                              "lastScrapeDuration")}
    up = _prometheus("/api/v1/query", query='up{job="gateway"}')["result"]
    assert up and up[0]["value"][1] == "1", up
    calls = _prometheus("/api/v1/query", query="sum(gateway_calls_total)")["result"]
    assert calls and float(calls[0]["value"][1]) >= 2, f"gateway_calls_total in Prometheus: {calls}"
    deps = _prometheus("/api/v1/query", query="gateway_up")["result"]
    pbx_dep = f"pbx {deployed.env['GW_PBX']}"
    assert {d["metric"]["dependency"]: d["value"][1] for d in deps} == {
        "redis": "1", "rtpengine": "1", pbx_dep: "1"}, deps
    FIGURES["prometheus_gateway_calls_total"] = calls[0]["value"][1]


def _scrape_time(text: str) -> float:
    """Prometheus' RFC 3339 UTC time (nanoseconds) as a Unix time."""
    head, _, rest = text.partition(".")
    frac = re.match(r"\d*", rest).group()
    base = datetime.strptime(head.rstrip("Z"), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


# ------------------------------------------------------------------ 5
def test_metrics_refused_outside_monitoring_cidr(deployed):
    st = deployed
    status, body = _https(st, "/metrics")
    assert status == 403, f"/metrics via nginx from 127.0.0.1 (MONITORING_CIDR=198.51.100.0/24): {status}"
    assert "gateway_" not in body
    status, _ = _https(st, "/health")
    assert status == 200, f"/health via nginx: {status}"


# ------------------------------------------------------------------ 6
def test_rtpengine_killed_restarts_and_calls_work_again(deployed, pbx):
    """rtpengine's process dies (SIGKILL from the host, as a crash would):
    `restart: unless-stopped` brings the container back, the healthcheck turns
    healthy, and calls carry media again."""
    st = deployed
    info = st.inspect("rtpengine")
    count0, pid = info["RestartCount"], info["State"]["Pid"]
    assert pid > 0
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def back() -> bool:
        i = st.inspect("rtpengine")
        return i["RestartCount"] > count0 and ds.health(i) == "healthy"

    ds.wait_for(back, 90, "rtpengine restarted and healthy again", interval=0.5)
    healed = time.monotonic() - killed
    assert NgClient(NG.host, NG.port, 1.0).ping(), "rtpengine ng ping after the restart"
    # The gateway's own /health (nginx may answer a short form outside MONITORING_CIDR).
    ds.wait_for(lambda: json.loads(urllib.request.urlopen("http://127.0.0.1:8080/health", timeout=3).read())
                .get("status") == "up", 30, "the gateway's /health to see rtpengine again")
    calls = ds.calls_both_ways(_view(st), pbx, ("4813", "4814"), binding=_binding_reader(st))
    FIGURES["rtpengine_restart"] = {"healthy_again_after_s": round(healed, 1), "calls": calls}
    _assert_calls(calls)


# ------------------------------------------------------------------ 7
def test_compose_down_leaves_nothing_running(deployed):
    st = deployed
    r = st.down()
    assert r.returncode == 0, r.stdout + r.stderr
    assert st.compose.project_containers() == [], "containers left after down"
    assert st.compose.project_volumes() == [], "volumes left after down --volumes"
    busy = ds.busy_ports(FIXED_TCP, FIXED_UDP)
    assert not busy, "ports still held after down:\n" + "\n".join(busy)
    left = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                          capture_output=True, text=True, timeout=60).stdout.split()
    assert left == []
