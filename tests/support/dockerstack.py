"""Docker and Compose for `make deploy-test` (tests/deploy_stack/): the CLI, the
test stand-ins for registry images, the compose stack with the .env the test
writes, a WebRTC phone that connects through nginx (WSS, with an Origin), and
the call-with-media check shared by the compose stack and the hand-run image.

Nothing here starts or stops a container it did not create: the stack has its
own compose project name, and the hand-run gateway its own container name."""
from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from gw import stack as gwstack
from kemi.ng import NgClient
from kemi.settings import HostPort
from support.media_calls import PBX_TONE, PHONE_TONE, Scenario, run_scenario
from support.rtp_pbx import MediaPlan, RtpPbx
from support.webrtc_phone import LoopThread, WebRtcPhone
from websockets.asyncio.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
STANDINS = ROOT / "tests" / "deploy_stack" / "standins"
STANDIN_LABEL = "webrtc-sip-gateway.standin"
GATEWAY_IMAGE = "webrtc-sip-gateway:latest"
RTPENGINE_IMAGE = "webrtc-sip-gateway-rtpengine:latest"
# The image's kamailio user (Dockerfile GW_UID/GW_GID).
GATEWAY_UID = 999
# Media checks, as in tests/test_media_webrtc.py.
MAX_MISSING_PCT = 1.0
FREQ_TOLERANCE = 5.0
MIN_PURITY = 0.9


class DockerError(AssertionError):
    pass


# ------------------------------------------------------------------ CLI
def run(argv: list[str], timeout: float = 300, check: bool = True,
        env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise DockerError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    # The classic builder: no buildx on Debian's docker.io, and BuildKit would
    # fetch its Dockerfile frontend from a registry.
    return run(["docker", *args], timeout=timeout, check=check, env={"DOCKER_BUILDKIT": "0"})


def docker_ready() -> str:
    r = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=30)
    if r.returncode != 0:
        raise DockerError(f"no Docker daemon answers ({r.stderr.strip()}): run `make image` first, "
                          "it installs and starts one (scripts/install-docker.sh)")
    c = run(["docker", "compose", "version", "--short"], check=False, timeout=30)
    if c.returncode != 0:
        raise DockerError("`docker compose` (v2) is missing: scripts/install-docker.sh installs it")
    return f"docker {r.stdout.strip()}, compose {c.stdout.strip()}"


def image_labels(image: str) -> Optional[dict[str, str]]:
    """The image's labels, or None when there is no such image."""
    r = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False, timeout=30)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip() or "null") or {}


def build(tag: str, context: Path) -> float:
    t0 = time.monotonic()
    docker("build", "--network", "host", "-q", "-t", tag, str(context), timeout=900)
    return time.monotonic() - t0


def compose_images() -> dict[str, str]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    return {name: svc["image"] for name, svc in doc["services"].items() if "image" in svc}


def ensure_standins(services: list[str]) -> dict[str, str]:
    """Registry images of `services` that are missing get a stand-in built from
    Debian packages (tests/deploy_stack/standins/<service>) under the same name.
    A stand-in built earlier is rebuilt (cached), a real image is left alone."""
    done = {}
    images = compose_images()
    for svc in services:
        image = images[svc]
        if image in (GATEWAY_IMAGE, RTPENGINE_IMAGE):
            continue
        labels = image_labels(image)
        if labels is not None and STANDIN_LABEL not in labels:
            done[image] = "present (not a stand-in)"
            continue
        context = STANDINS / svc
        if not (context / "Dockerfile").is_file():
            raise DockerError(f"{image} is missing and there is no stand-in for {svc} in {STANDINS}")
        done[image] = f"stand-in built in {build(image, context):.1f} s"
    return done


# ------------------------------------------------------------------ host limits
def _has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def nofile_ceiling() -> Optional[int]:
    """The highest `nofile` a container can get here, or None when unbounded:
    without CAP_SYS_RESOURCE (a sandboxed host) nobody may raise the hard limit
    the Docker daemon was started with, and runc fails to start the container."""
    if _has_cap_sys_resource():
        return None
    pid_file = Path("/var/run/docker.pid")
    try:
        pid = int(pid_file.read_text().strip())
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[4])
    except (OSError, ValueError, IndexError):
        pass
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


# ------------------------------------------------------------------ ports
def port_holders(port: int) -> str:
    r = run(["ss", "-Hlntup", f"( sport = :{port} )"], check=False, timeout=10)
    return r.stdout.strip() or "(ss shows no holder)"


def busy_ports(tcp: list[int], udp: list[int]) -> list[str]:
    """Ports the stack binds on the host that something else holds already."""
    busy = []
    for kind, ports in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
        for port in ports:
            with socket.socket(socket.AF_INET, kind) as s:
                # As a server binds: a TIME_WAIT left by a finished connection is no holder.
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
                    busy.append(f"{proto} {port}: {port_holders(port)}")
    return busy


# ------------------------------------------------------------------ compose stack
@dataclass
class ComposeStack:
    """deploy/compose.yaml as shipped, under a project name of the test's own,
    with the test's .env and, only where the host needs it, an override file."""

    project: str
    workdir: Path
    env: dict[str, str]
    overrides: list[Path] = field(default_factory=list)

    @property
    def env_file(self) -> Path:
        return self.workdir / "deploy.env"

    def write_env(self) -> None:
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        self.env_file.chmod(0o600)

    def cmd(self, *args: str) -> list[str]:
        argv = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE)]
        for o in self.overrides:
            argv += ["-f", str(o)]
        return [*argv, "--env-file", str(self.env_file), *args]

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return run(self.cmd(*args), timeout=timeout, check=check)

    def container(self, service: str, all_states: bool = False) -> str:
        args = ["ps", "-q"] + (["-a"] if all_states else []) + [service]
        cid = self.compose(*args, timeout=60).stdout.strip()
        if not cid:
            raise DockerError(f"no container for service {service}")
        return cid

    def inspect(self, service: str) -> dict[str, Any]:
        return json.loads(docker("inspect", self.container(service, all_states=True), timeout=60).stdout)[0]

    def project_containers(self) -> list[str]:
        r = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}", timeout=60)
        return r.stdout.split()

    def project_volumes(self) -> list[str]:
        r = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                   timeout=60)
        return r.stdout.split()

    def save_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        r = self.compose("logs", "--no-color", "--timestamps", timeout=120, check=False)
        (dest / "compose-logs.txt").write_text(r.stdout + r.stderr)

    def down(self) -> subprocess.CompletedProcess:
        return self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=180, check=False)


def nofile_override(stack: ComposeStack, ceiling: int) -> Optional[Path]:
    """An override lowering every `ulimits.nofile` above what this host allows
    (see nofile_ceiling); None when compose.yaml fits as it is."""
    doc = json.loads(stack.compose("config", "--format", "json", timeout=60).stdout)
    lowered = {}
    for name, svc in doc["services"].items():
        nofile = (svc.get("ulimits") or {}).get("nofile")
        if nofile is None:
            continue
        soft, hard = (nofile, nofile) if isinstance(nofile, int) else (nofile["soft"], nofile["hard"])
        if max(soft, hard) > ceiling:
            lowered[name] = {"ulimits": {"nofile": {"soft": min(soft, ceiling), "hard": min(hard, ceiling)}}}
    if not lowered:
        return None
    path = stack.workdir / "host-limits.override.yaml"
    path.write_text("# Written by the deploy test: this host cannot raise the open-files hard limit\n"
                    f"# above {ceiling} (no CAP_SYS_RESOURCE), so runc could not apply compose.yaml's.\n"
                    + yaml.safe_dump({"services": lowered}, sort_keys=True))
    return path


def health(info: dict[str, Any]) -> str:
    """'healthy'/'unhealthy'/'starting' for a container with a HEALTHCHECK, else its state."""
    state = info["State"]
    if state.get("Health"):
        return state["Health"]["Status"]
    return state["Status"]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (OSError, DockerError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def process_identity(pid: int) -> dict[str, str]:
    """Uid and capability sets of a host pid (a container's process seen from the host)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Name", "Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
            out[key] = value.strip()
    return out


def container_pids(container: str) -> list[int]:
    r = docker("top", container, "-eo", "pid", timeout=60)
    return [int(x) for x in r.stdout.split()[1:] if x.isdigit()]


# ------------------------------------------------------------------ phones and calls
def phone_class(origin: str, cafile: Optional[Path] = None) -> type[WebRtcPhone]:
    """The test WebRTC phone, sending an Origin header as a browser on the agents'
    page does, and with `cafile` connecting over TLS (wss://, verified against it)."""
    tls = {"ssl": ssl.create_default_context(cafile=str(cafile))} if cafile else {}

    class OriginPhone(WebRtcPhone):
        async def connect(self) -> "OriginPhone":
            self.ws = await ws_connect(self.ws_url, subprotocols=["sip"], local_addr=(self.host, 0),
                                       open_timeout=5, close_timeout=1, origin=origin, **tls)
            self._reader = asyncio.ensure_future(self._read())
            return self

    return OriginPhone


@dataclass
class GatewayView:
    """What support.media_calls needs to know about a running gateway."""

    ws_url: str
    sip: HostPort
    rtpengine: HostPort
    phone_class: type = WebRtcPhone

    @property
    def env(self) -> dict[str, str]:
        """The GW_* settings media_calls reads (which rtpengine holds a call)."""
        return {"GW_RTPENGINE": f"udp:{self.rtpengine}"}

    def ng(self) -> NgClient:
        # Patient: a shared 2-core box under load answers late, and this is the test side.
        return NgClient(self.rtpengine.host, self.rtpengine.port, 3.0)


def media_figures(sc: Scenario) -> dict[str, Any]:
    sc.check()
    c0, bye = sc.marks["connected"], sc.marks["bye"]
    return {"order": sc.order, "statuses": dict(sc.statuses), "call_id": sc.call.call_id,
            "phone_to_pbx": sc.up_flow(c0 + 1.0, bye - 0.3).as_dict(),
            "pbx_to_phone": sc.down_flow(c0 + 1.0, bye - 0.3).as_dict(),
            "pt13_at_phone": sc.call.media.rx.by_pt.get(13, 0),
            "rtpengine_had_call": sc.in_rtpengine}


def media_problems(figs: dict[str, Any]) -> list[str]:
    if "error" in figs:
        return [f"{figs['order']} call failed:\n{figs['error']}"]
    bad = []
    for direction, freq in (("phone_to_pbx", PHONE_TONE), ("pbx_to_phone", PBX_TONE)):
        f = figs[direction]
        if f["frames_sent"] < 100:
            bad.append(f"{direction}: only {f['frames_sent']} frames sent")
        if abs(f["freq_hz"] - freq) > FREQ_TOLERANCE or f["tone_purity"] < MIN_PURITY:
            bad.append(f"{direction}: heard {f['freq_hz']} Hz (purity {f['tone_purity']}), sent {freq} Hz")
        if f["missing_pct"] > MAX_MISSING_PCT:
            bad.append(f"{direction}: {f['missing_pct']} % of frames missing")
    if figs["pt13_at_phone"]:
        bad.append(f"{figs['pt13_at_phone']} CN (PT 13) packets reached the phone")
    for step, status in figs["statuses"].items():
        if status != 200:
            bad.append(f"{step} got {status}")
    return bad


def calls_both_ways(view: GatewayView, pbx: RtpPbx, dns: tuple[str, str], talk: float = 6.0,
                    binding: Optional[Callable[[str], Any]] = None) -> list[dict[str, Any]]:
    """A phone (registering through the gateway at the PBX emulator) calls the
    PBX, then the PBX calls a phone; each call carries a tone each way for
    `talk` seconds. `binding(dn)`, called while a call is up, reads the phone's
    registration record. Returns each call's figures (media_figures)."""
    loop = LoopThread()
    out = []

    def script(dn: str):
        async def during_call(sc: Scenario) -> None:
            if binding is not None:
                sc.notes["binding"] = await asyncio.to_thread(binding, dn)
            await asyncio.sleep(talk)
        return during_call

    try:
        for order, dn, hangup in (("phone->pbx", dns[0], "phone"), ("pbx->phone", dns[1], "pbx")):
            sc = Scenario(f"{order} via {view.ws_url}", order, dn, MediaPlan(freq=PBX_TONE), talk=talk,
                          hangup=hangup, script=script(dn))
            loop.run(run_scenario(sc, view, pbx), timeout=talk + 60)
            if sc.error:
                out.append({"order": order, "dn": dn, "error": sc.error})
            else:
                out.append({"dn": dn, **media_figures(sc), "binding": sc.notes.get("binding")})
    finally:
        loop.close()
    return out


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    return gwstack.free_port(kind=kind)


def tidy(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
