"""What the agent-side tests drive: the bridge (`gateway-agent`, as installed from
the wheel: tests/support/agent_package.py), Debian's headless chromium over the
Chrome DevTools Protocol, and SIPp as the PBX.

Every process here is started in its own session and stopped by its own
process group, so a test ends exactly what it started and nothing else.
"""
from __future__ import annotations

import base64
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[2]
SIPP_DIR = ROOT / "tests" / "sipp"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_below_ephemeral(kind: int, count: int, step: int, host: str) -> int:
    """`count` consecutive ports (the first a multiple of `step`) that bind right
    now without SO_REUSEADDR, below the kernel's ephemeral range: a port bind(0)
    hands out may still carry TIME_WAIT connections (a loaded machine has
    thousands), which a later plain bind (SIPp's twin socket) refuses, and an
    outgoing connection may take it meanwhile; neither happens down here."""
    for _ in range(500):
        low = random.randrange(20000, 32000 - count, step)
        socks = []
        try:
            for port in range(low, low + count):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((host, port))
            return low
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} free ports below the ephemeral range")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    return _free_below_ephemeral(socket.SOCK_STREAM, 1, 1, host)


def free_udp_pair(host: str = "127.0.0.1") -> int:
    """An even UDP port P with P..P+3 free (SIPp binds P and P+2 for media)."""
    return _free_below_ephemeral(socket.SOCK_DGRAM, 4, 2, host)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, ConnectionError, TimeoutError) as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def _stop_group(popen: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the process group we created (start_new_session), then SIGKILL."""
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            popen.wait(5)
    # Children (chromium's renderers) may outlive the leader: end what is left of our group.
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------ bridge
@dataclass
class Bridge:
    env: dict[str, str]
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    popen: Optional[subprocess.Popen] = None
    spki: str = ""
    ctx: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    @classmethod
    def start(cls, gateway_ws: str, origins: str, cert_dir: Path, log_path: Path,
              extra_env: Optional[dict[str, str]] = None,
              command: Sequence[str] = (sys.executable, "-m", "gateway_agent"),
              base_env: Optional[Mapping[str, str]] = None) -> "Bridge":
        """`command` is the connector to run (the installed wheel's gateway-agent;
        this tree's by default), `base_env` the environment it starts from."""
        port = free_tcp_port()
        env = dict(os.environ if base_env is None else base_env)
        env.update({"AGENT_GATEWAY_WS": gateway_ws, "AGENT_ORIGINS": origins,
                    "AGENT_LISTEN": f"127.0.0.1:{port}", "AGENT_CERT_DIR": str(cert_dir),
                    "PYTHONUNBUFFERED": "1"})
        env.update(extra_env or {})
        b = cls(env, log_path, port=port)
        log = open(log_path, "ab")
        b.popen = subprocess.Popen([*command, "--no-open"], cwd=log_path.parent, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        log.close()

        def ready() -> bool:
            if b.popen.poll() is not None:
                raise AssertionError(f"bridge exited {b.popen.returncode}:\n{b.log()}")
            return "agent: ready" in b.log()
        wait_for(ready, 20, "the bridge to start")
        m = re.search(r"SPKI sha256 (\S+)\)", b.log())
        assert m, b.log()
        b.spki = m.group(1)
        # Trust exactly the bridge's own certificate, as an agent's machine would.
        b.ctx = ssl.create_default_context(cafile=str(cert_dir / "bridge-cert.pem"))
        wait_for(lambda: b.get("/health")[0] == 200, 10, "bridge /health")
        return b

    @property
    def base(self) -> str:
        return f"https://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, method: str, path: str, body: Any = None, origin: Optional[str] = None,
                headers: Optional[dict[str, str]] = None, raw: Optional[bytes] = None,
                timeout: float = 15) -> tuple[int, Any, dict[str, str]]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        h = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        if origin:
            h["Origin"] = origin
        try:
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            text = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = text.decode(errors="replace")
        return resp.status, payload, hdrs

    def get(self, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("POST", path, body=body, **kw)

    def delete(self, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("DELETE", path, **kw)

    def stop(self) -> None:
        if self.popen is not None:
            _stop_group(self.popen)


# ------------------------------------------------------------------ browser
class CdpError(RuntimeError):
    pass


class Browser:
    """Debian's chromium, headless, with fake media devices, driven over CDP."""

    def __init__(self, url: str, spki: str, artifacts: Path) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="agent-chromium-"))
        self.artifacts = artifacts
        self.console: list[str] = []
        self.log_path = artifacts / "chromium.log"
        argv = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps",
            "--disable-extensions", "--disable-breakpad", "--disable-domain-reliability",
            "--disable-client-side-phishing-detection", "--metrics-recording-only", "--no-pings",
            "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
            "InterestFeedContentSuggestions,CertificateTransparencyComponentUpdater",
            f"--user-data-dir={self.profile}",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
            # Trust the bridge's self-signed certificate by its public key only.
            f"--ignore-certificate-errors-spki-list={spki}",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            "--window-size=480,860", "--hide-scrollbars", "--lang=en-GB",
            url,
        ]
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            port_file = self.profile / "DevToolsActivePort"
            wait_for(lambda: port_file.exists() and port_file.read_text().count("\n") >= 1, 30,
                     "chromium's DevTools port")
            port = int(port_file.read_text().split("\n")[0])

            def page_target() -> Optional[str]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = json.load(r)
                for t in targets:
                    if t.get("type") == "page" and t.get("url", "").startswith(url.split("?")[0]):
                        return t["webSocketDebuggerUrl"]
                return None
            ws_url = wait_for(page_target, 20, "the phone page target")
            # Entered like a context manager (websockets >= 17 warns otherwise); left in close().
            self.ws = ws_connect(ws_url, max_size=None, open_timeout=10).__enter__()
            self._id = 0
            self.call("Runtime.enable")
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": 480, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: Optional[dict] = None, timeout: float = 20) -> dict:
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError(f"{method}: no answer in {timeout}s")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        method = msg.get("method")
        p = msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.console.append(f"console.{p.get('type')}: {args}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console.append(f"exception: {d.get('exception', {}).get('description', d.get('text'))}")

    def eval(self, expression: str, timeout: float = 20) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CdpError(f"{expression}: {d.get('exception', {}).get('description', d.get('text'))}")
        return res.get("result", {}).get("value")

    def state(self) -> str:
        return self.eval("document.body.dataset.state")

    def wait_state(self, want: str, timeout: float = 20) -> None:
        try:
            wait_for(lambda: self.state() == want, timeout, f"the page to show {want!r}")
        except AssertionError as exc:
            status = self.eval("document.getElementById('status').innerText")
            events = self.eval("document.getElementById('log').innerText")
            raise AssertionError(f"{exc}; page shows {self.state()!r}; status {status!r}; "
                                 f"events {events!r}") from None

    def stats(self) -> dict:
        return self.eval("window.phone.stats('current')")

    def screenshot(self, name: str) -> Path:
        # Two animation frames: what the page shows now is painted.
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = self.artifacts / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            _stop_group(self.popen)
            shutil.rmtree(self.profile, ignore_errors=True)


# ------------------------------------------------------------------ PNG
def png_pixels(path: Path) -> tuple[int, int, Callable[[int, int], tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what chromium writes):
    (width, height, pixel(x, y) -> (r, g, b))."""
    import zlib
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, width = 8, b"", 0
    height = bpp = 0
    while pos < len(data):
        length, kind = struct.unpack("!I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack("!IIBBBBB", chunk)
            assert depth == 8 and color in (2, 6) and interlace == 0, "unsupported PNG"
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p_ = a + b - c
                pa, pb, pc = abs(p_ - a), abs(p_ - b), abs(p_ - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(line)
        prev = line

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        r = rows[y]
        return r[x * bpp], r[x * bpp + 1], r[x * bpp + 2]
    return width, height, pixel


# ------------------------------------------------------------------ media files
def _ulaw(sample: int) -> int:
    """G.711 mu-law encoding of one signed 16-bit sample."""
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, 32635) + 0x84
    exponent = max(0, min(7, sample.bit_length() - 8))
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def write_rtp_pcap(path: Path, seconds: float, seq0: int, ts0: int, ssrc: int,
                   freq: float = 440.0, amplitude: int = 8000) -> None:
    """A pcap of PCMU RTP (20 ms packets) carrying a sine tone, for SIPp's
    play_pcap_audio (which rewrites addresses and ports, keeps the RTP)."""
    n = int(seconds * 50)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    phase = 0
    for i in range(n):
        payload = bytes(_ulaw(int(amplitude * math.sin(2 * math.pi * freq * (phase + k) / 8000)))
                        for k in range(160))
        phase += 160
        rtp = struct.pack("!BBHII", 0x80, 0 | (0x80 if i == 0 else 0), (seq0 + i) & 0xFFFF,
                          (ts0 + i * 160) & 0xFFFFFFFF, ssrc) + payload
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        total = 20 + len(udp)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, i & 0xFFFF, 0, 64, 17, 0,
                         socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
        csum = sum(struct.unpack("!10H", ip))
        csum = (csum & 0xFFFF) + (csum >> 16)
        csum = (csum & 0xFFFF) + (csum >> 16)
        ip = ip[:10] + struct.pack("!H", ~csum & 0xFFFF) + ip[12:]
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        t = i * 0.020
        out.append(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def make_media(dir_: Path) -> None:
    """tone_a: the PBX talking; tone_b: talking again after a hold (same SSRC,
    sequence and timestamp jumped forward, as a real stream resumes); silence:
    one packet that stops whatever was playing (SIPp cancels a running play)."""
    ssrc = 0x5EED0001
    write_rtp_pcap(dir_ / "agent_tone_a.pcap", 60, 1000, 0, ssrc)
    write_rtp_pcap(dir_ / "agent_silence.pcap", 0.02, 8000, 8000 * 160, ssrc, amplitude=0)
    write_rtp_pcap(dir_ / "agent_tone_b.pcap", 60, 12000, 12000 * 160, ssrc, freq=660.0)


# ------------------------------------------------------------------ SIPp
class Sipp:
    """One SIPp run (-m 1). With twin=True the scenario takes commands from the
    test over SIPp's 3PCC twin socket (<recvCmd>): the test decides when the
    PBX answers, holds, retrieves or hangs up, instead of guessing with pauses."""

    def __init__(self, name: str, scenario: str, argv: list[str], workdir: Path,
                 twin: bool = False, call_id: Optional[str] = None) -> None:
        self.name = name
        self.workdir = workdir
        self.call_id = call_id or f"agent-{name}-{os.urandom(4).hex()}"
        self.msg_file = workdir / f"{name}_messages.log"
        self.err_file = workdir / f"{name}_errors.log"
        self.log_file = workdir / f"{name}_screen.log"
        for f in (self.msg_file, self.err_file, self.log_file):
            f.unlink(missing_ok=True)
        self.twin_port = free_tcp_port() if twin else None
        full = ["sipp", "-sf", str(SIPP_DIR / scenario), *argv, "-m", "1", "-nostdin",
                "-trace_msg", "-message_file", str(self.msg_file),
                "-trace_err", "-error_file", str(self.err_file),
                "-timeout", "90s", "-timeout_error", "-cid_str", self.call_id]
        if twin:
            full += ["-3pcc", f"127.0.0.1:{self.twin_port}"]
        log = open(self.log_file, "wb")
        self.popen = subprocess.Popen(full, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self._twin: Optional[socket.socket] = None

    def _connect_twin(self) -> socket.socket:
        if self._twin is None:
            def attempt() -> Optional[socket.socket]:
                if self.popen.poll() is not None:
                    raise AssertionError(f"sipp {self.name} exited {self.popen.returncode}: {self.report()}")
                try:
                    return socket.create_connection(("127.0.0.1", self.twin_port), timeout=1)
                except OSError:
                    return None
            self._twin = wait_for(attempt, 10, f"sipp {self.name} twin socket")
        return self._twin

    def command(self, cmd: str) -> None:
        sock = self._connect_twin()
        # SIPp ends a twin-socket command at an ESC character.
        sock.sendall(f"Call-ID: {self.call_id}\r\nCmd: {cmd}\r\n\x1b".encode())

    def wait(self, timeout: float = 30) -> int:
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"sipp {self.name} still running after {timeout}s: {self.report()}") from None
        finally:
            if self._twin is not None and self.popen.poll() is not None:
                self._twin.close()
                self._twin = None
        return rc

    def assert_ok(self, timeout: float = 30) -> None:
        rc = self.wait(timeout)
        assert rc == 0, f"sipp {self.name} exited {rc}: {self.report()}"

    def received(self, start: str) -> list[str]:
        """SIP messages SIPp received that start with `start`, from its -trace_msg file."""
        text = self.msg_file.read_text(errors="replace") if self.msg_file.exists() else ""
        text = text.replace("\r\n", "\n")
        blocks = re.split(r"\n(?=-{10,} )", text)
        out = []
        for b in blocks:
            head, _, body = b.partition("\n")
            if "message received" in body.split("\n", 1)[0]:
                msg = body.split("\n", 1)[1].lstrip("\n") if "\n" in body else ""
                if msg.startswith(start):
                    out.append(msg)
        return out

    def report(self) -> str:
        parts = []
        for f in (self.err_file, self.log_file):
            if f.exists():
                parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self._twin is not None:
            self._twin.close()
            self._twin = None
        _stop_group(self.popen)
