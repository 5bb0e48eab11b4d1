"""The shipped deployment files, each checked with the real program that reads it.

* nginx:      deploy/nginx/gateway.conf rendered like the nginx image does, `nginx -t`,
              then a live nginx: WSS upgrade tunnelled to a fake gateway, /metrics denied.
* rtpengine:  rtpengine.conf started as shipped (interface/ports/table=-1 overridden on the
              command line, loopback, free ports): ng ping -> pong, /metrics, /ping.
* coturn:     turnserver.conf with a test secret on the command line: STUN Binding, and
              TURN Allocate with kemi/turn.py credentials (REST API secret) accepted.
* compose:    compose-spec JSON schema (check-jsonschema) + cross-file consistency.
* Dockerfile: hadolint + instruction checks; the HEALTHCHECK script against an HTTP server.
* Prometheus: promtool check config; Grafana dashboard PromQL via promtool check rules.
* Asterisk:   no Asterisk on Debian 12: the settings the gateway relies on, parsed.

Daemons run on free loopback ports, are awaited by protocol, and only the pids
started here are stopped. Their logs are kept in tests/_artifacts/deploy/ and
quoted in every failure message. Missing programs fail (they are installed by
scripts/install-deps.sh), they are not skipped.
"""
from __future__ import annotations

import configparser
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from gw import stack  # noqa: E402
from kemi import settings as settings_mod  # noqa: E402
from kemi.ng import NgClient, NgError  # noqa: E402
from kemi.turn import turn_credentials  # noqa: E402
from support import stun  # noqa: E402

DEPLOY = ROOT / "deploy"
ARTIFACTS = ROOT / "tests" / "_artifacts" / "deploy"
VENV_BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- helpers

def need(program: str) -> str:
    """Path of a program the project installs; a missing one is a failure, not a skip."""
    path = shutil.which(program) or (str(VENV_BIN / program) if (VENV_BIN / program).exists() else None)
    if not path:
        pytest.fail(f"{program} is not installed: run scripts/install-deps.sh (see the test's docstring)")
    return path


class Proc:
    """A daemon started by this test module; its output goes to a log file."""

    def __init__(self, name: str, argv: list[str], tmp: Path):
        self.name = name
        self.argv = argv
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, limit: int = 6000) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-limit:]

    def describe(self) -> str:
        state = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return (f"\n--- {self.name} ({state}): {' '.join(self.argv)}\n--- log {self.log_path}:\n"
                f"{self.log()}\n--- end of {self.name} log")

    def stop(self) -> None:
        # Only this pid (and nginx's master takes its workers down with it).
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.log_path, ARTIFACTS / self.log_path.name)


def wait_for(check: Callable[[], object], proc: Proc, what: str, timeout: float = 10.0,
             errors: tuple[type[BaseException], ...] = (OSError, ValueError)):
    """Poll `check` (a protocol probe) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while time.monotonic() < deadline:
        if not proc.alive():
            pytest.fail(f"{proc.name} exited before {what}{proc.describe()}")
        try:
            result = check()
            if result:
                return result
        except errors as exc:  # not listening yet / no answer yet
            last_exc = exc
        time.sleep(0.05)
    pytest.fail(f"{what}: no answer within {timeout}s (last error: {last_exc!r}){proc.describe()}")


@pytest.fixture
def procs(tmp_path):
    started: list[Proc] = []

    def start(name: str, argv: list[str]) -> Proc:
        p = Proc(name, argv, tmp_path)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.stop()


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, sep, v = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            out[k.strip()] = v.strip()
    return out


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-spec interpolation: ${V}, ${V:-d}, ${V-d}, ${V:?e}, ${V:+r}, $$."""
    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        val = env.get(name)
        if op in (":-", "-"):
            return val if (val if op == ":-" else val is not None) else arg
        if op in (":?", "?"):
            if not val:
                raise ValueError(f"{name}: {arg}")
            return val
        if op in (":+", "+"):
            return arg if (val if op == ":+" else val is not None) else ""
        return val or ""
    return _VAR.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def compose_vars(text: str) -> set[str]:
    return {m.group(1) for m in _VAR.finditer(text)}


# --------------------------------------------------------------------------- nginx

NGINX_PLACEHOLDERS = {"GW_TLS_CERT", "GW_TLS_KEY", "GW_WS_UPSTREAM", "GW_MONITORING_CIDR",
                      "GW_WS_MAX_PER_IP"}


def render_nginx_template(values: dict[str, str]) -> str:
    """What the nginx image's 20-envsubst-on-templates.sh does with NGINX_ENVSUBST_FILTER=^GW_:
    ${GW_...} replaced, nginx's own $variables untouched."""
    text = (DEPLOY / "nginx" / "gateway.conf").read_text()
    found = set(re.findall(r"\$\{(GW_[A-Z_]+)\}", text))
    assert found == NGINX_PLACEHOLDERS, f"gateway.conf placeholders {found} != documented {NGINX_PLACEHOLDERS}"
    # compose's default (deploy/compose.yaml), unless the test sets its own
    values = {"GW_WS_MAX_PER_IP": "1000", **values}
    for k, v in values.items():
        text = text.replace("${" + k + "}", v)
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("${" in line for line in code), "unrendered placeholder"
    return text


def loopback_site(tmp: Path, values: dict[str, str]) -> tuple[Path, int]:
    """The shipped site rendered with `values`, listening on a free loopback port
    only (the template's 8443 on every address is for production)."""
    port = stack.free_port(kind=socket.SOCK_STREAM)
    text = render_nginx_template(values)
    text = text.replace("    listen 8443 ssl;", f"    listen 127.0.0.1:{port} ssl;")
    text = text.replace("    listen [::]:8443 ssl;", "")
    site = tmp / "gateway.conf"
    site.write_text(text)
    return site, port


def tls_handshake(port: int, ctx: ssl.SSLContext) -> bool:
    """nginx's readiness, by protocol: a TLS handshake with the test certificate."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        with ctx.wrap_socket(s, server_hostname="localhost"):
            return True


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "fullchain.pem", tmp / "privkey.pem"
    r = run([need("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)])
    assert r.returncode == 0, r.stderr
    return cert, key


def nginx_main_conf(tmp: Path, include: Path) -> Path:
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {include};
}}
""")
    return conf


class FakeGateway:
    """Stands in for the gateway's ws/HTTP listener: /health, /metrics, WebSocket upgrade
    (then echoes bytes). Records every request's path and headers."""

    def __init__(self):
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self):
        self._stop = True
        self.sock.close()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket):
        buf = b""
        with conn:
            conn.settimeout(10)
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    path = lines[0].split(" ")[1]
                    headers = {}
                    for line in lines[1:]:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                    self.requests.append((path, headers))
                    if headers.get("upgrade", "").lower() == "websocket":
                        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n"
                                     b"Sec-WebSocket-Protocol: sip\r\n\r\n")
                        if buf:
                            conn.sendall(buf)
                        while True:  # tunnel: echo
                            data = conn.recv(4096)
                            if not data:
                                return
                            conn.sendall(data)
                    body = b"ok\n" if path == "/health" else b"gateway_up{dependency=\"redis\"} 1\n"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                return


def test_nginx_config_syntax(tmp_path):
    nginx = need("nginx")
    cert, key = make_cert(tmp_path)
    site = tmp_path / "gateway.conf"
    site.write_text(render_nginx_template({
        "GW_TLS_CERT": str(cert), "GW_TLS_KEY": str(key),
        "GW_WS_UPSTREAM": "127.0.0.1:8080", "GW_MONITORING_CIDR": "10.0.0.0/8",
        "GW_WS_MAX_PER_IP": "1000"}))
    conf = nginx_main_conf(tmp_path, site)
    r = run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")])
    assert r.returncode == 0, f"nginx -t failed:\n{r.stderr}\n--- rendered gateway.conf:\n{site.read_text()}"
    assert "test is successful" in r.stderr


def test_nginx_wss_proxy_live(tmp_path, procs):
    """nginx with the shipped server block: WSS upgrade reaches the gateway with the
    Upgrade/Connection/X-Forwarded-For headers and tunnels bytes; /health is proxied;
    /metrics is refused from outside the monitoring network."""
    nginx = need("nginx")
    cert, key = make_cert(tmp_path)
    upstream = FakeGateway()
    values = {"GW_TLS_CERT": str(cert), "GW_TLS_KEY": str(key),
              "GW_WS_UPSTREAM": f"127.0.0.1:{upstream.port}",
              "GW_MONITORING_CIDR": "192.0.2.0/24",  # loopback is NOT a monitoring network here
              "GW_WS_MAX_PER_IP": "1000"}
    listens = re.findall(r"^\s*listen .*;$", render_nginx_template(values), re.M)
    assert listens == ["    listen 8443 ssl;", "    listen [::]:8443 ssl;"], listens
    site, port = loopback_site(tmp_path, values)
    text = site.read_text()
    conf = nginx_main_conf(tmp_path, site)
    proc = procs("nginx", [nginx, "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")])
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        wait_for(lambda: tls_handshake(port, ctx), proc, f"nginx TLS handshake on 127.0.0.1:{port}")

        def get(path: str) -> tuple[int, str]:
            c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
            c._context.check_hostname = False  # connecting by IP; the chain is still verified
            c.request("GET", path, headers={"Host": "localhost"})
            r = c.getresponse()
            body = r.read().decode()
            c.close()
            return r.status, body

        status, body = get("/health")
        assert (status, body) == (200, "ok\n"), proc.describe()
        assert upstream.requests[-1][0] == "/health"
        assert upstream.requests[-1][1].get("x-forwarded-for") == "127.0.0.1"

        seen = len(upstream.requests)
        status, _ = get("/metrics")
        assert status == 403, f"/metrics must be denied outside GW_MONITORING_CIDR, got {status}"
        assert len(upstream.requests) == seen, "denied /metrics must not reach the gateway"

        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        ws = ctx.wrap_socket(raw, server_hostname="localhost")
        ws.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Protocol: sip\r\nOrigin: https://agents.example.com\r\n\r\n")
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = ws.recv(4096)
            assert chunk, f"connection closed during upgrade: {resp!r}{proc.describe()}"
            resp += chunk
        assert resp.startswith(b"HTTP/1.1 101"), resp
        path, headers = upstream.requests[-1]
        assert headers.get("upgrade") == "websocket"
        assert headers.get("connection", "").lower() == "upgrade"
        assert headers.get("x-forwarded-for") == "127.0.0.1"
        assert headers.get("x-forwarded-proto") == "https"
        assert headers.get("sec-websocket-protocol") == "sip"
        payload = b"\x81\x05hello"  # an opaque frame: nginx must tunnel bytes both ways
        ws.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = ws.recv(4096)
            assert chunk, "tunnel closed"
            echoed += chunk
        assert echoed == payload
        ws.close()
    finally:
        upstream.close()

    # Long-lived WebSockets: the proxy must not cut an idle registered phone quickly.
    m = re.search(r"proxy_read_timeout\s+(\d+)s;", text)
    assert m and int(m.group(1)) >= 900, "proxy_read_timeout must outlast a REGISTER interval"


# --------------------------------------------------------------------------- rtpengine

def rtpengine_conf() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None)
    cp.read(ROOT / "rtpengine" / "rtpengine.conf")
    return cp


def test_rtpengine_conf_options_exist_in_this_rtpengine():
    """rtpengine silently ignores unknown keys: check every key against `rtpengine --help`."""
    r = run([need("rtpengine"), "--help"])
    known = set(re.findall(r"--([a-z0-9-]+)", r.stdout + r.stderr))
    assert "listen-ng" in known, r.stdout
    cp = rtpengine_conf()
    assert cp.sections() == ["rtpengine"]
    unknown = [k for k in cp["rtpengine"] if k not in known]
    assert not unknown, f"options this rtpengine does not know: {unknown}"
    sec = cp["rtpengine"]
    assert sec["table"] == "0", "production: kernel table 0 (userspace fallback when module absent)"
    gw = settings_mod.load({})
    assert sec["listen-ng"] == str(gw.rtpengines[0]), "listen-ng must match GW_RTPENGINE's default"
    assert (int(sec["port-min"]), int(sec["port-max"])) == gw.media_ports, "port range != GW_MEDIA_PORTS"
    for k in ("delete-delay", "timeout", "silent-timeout", "listen-http"):
        assert k in sec, k


def test_rtpengine_starts_from_shipped_conf_and_answers_ping(tmp_path, procs):
    rtpengine = need("rtpengine")
    ng_port = stack.free_port()
    cli_port = stack.free_port()
    http_port = stack.free_port(kind=socket.SOCK_STREAM)
    lo, hi = stack.free_port_range(20)
    proc = procs("rtpengine", [
        rtpengine, f"--config-file={ROOT / 'rtpengine' / 'rtpengine.conf'}",
        "--table=-1", "--interface=127.0.0.1",
        f"--listen-ng=127.0.0.1:{ng_port}", f"--listen-cli=127.0.0.1:{cli_port}",
        f"--listen-http=127.0.0.1:{http_port}", f"--port-min={lo}", f"--port-max={hi}",
        "--foreground", "--log-stderr", "--log-level=6", f"--pidfile={tmp_path / 'rtpengine.pid'}"])
    ng = NgClient("127.0.0.1", ng_port, timeout=0.3)
    reply = wait_for(lambda: ng.request({"command": "ping"}), proc, f"rtpengine ng ping on {ng_port}",
                     errors=(OSError, ValueError, NgError))
    assert reply.get("result") == "pong", f"{reply}{proc.describe()}"

    # The HTTP listener Prometheus scrapes (deploy/prometheus.yml job rtpengine).
    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=3)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    assert r.status == 200 and "rtpengine_sessions" in text, f"{r.status} {text[:300]}{proc.describe()}"
    c.request("GET", "/ping")  # the rtpengine image's HEALTHCHECK
    r = c.getresponse()
    assert (r.status, r.read().strip()) == (200, b"pong")
    c.close()
    # the command-line overrides won over the file (no kernel, loopback interface)
    assert "KERNEL TABLE" not in proc.log(), proc.describe()


# --------------------------------------------------------------------------- coturn

def test_coturn_conf_has_no_secret_and_uses_rest_api():
    text = (DEPLOY / "coturn" / "turnserver.conf").read_text()
    opts = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    names = {o.split("=", 1)[0] for o in opts}
    assert "static-auth-secret" not in names, "the TURN secret must come from the command line/env"
    assert {"use-auth-secret", "realm", "no-tcp-relay", "min-port", "max-port", "fingerprint"} <= names
    assert "listening-port=3478" in opts
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "--static-auth-secret=${TURN_SECRET" in compose


def test_coturn_answers_stun_and_accepts_rest_credentials(tmp_path, procs):
    turnserver = need("turnserver")
    port = stack.free_port()
    lo, hi = stack.free_port_range(20)
    secret = "test-only-secret-" + os.urandom(4).hex()
    proc = procs("turnserver", [
        turnserver, "-c", str(DEPLOY / "coturn" / "turnserver.conf"),
        f"--static-auth-secret={secret}", f"--listening-port={port}",
        "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
        f"--min-port={lo}", f"--max-port={hi}",
        f"--pidfile={tmp_path / 'turnserver.pid'}", "--log-file=stdout"])
    server = ("127.0.0.1", port)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        def binding():
            packet, txid = stun.binding_request()
            assert len(packet) == 20 and packet[4:8] == struct.pack("!I", 0x2112A442)
            return stun.transact(sock, server, packet, txid, timeout=0.3)

        resp = wait_for(binding, proc, f"STUN Binding on udp {port}")
        assert resp.mtype == stun.BINDING | stun.SUCCESS, f"{resp}{proc.describe()}"
        assert resp.xor_address(stun.XOR_MAPPED_ADDRESS) == sock.getsockname()
        assert resp.has(stun.FINGERPRINT), "fingerprint is configured"
        assert not resp.has(stun.SOFTWARE), "no-software-attribute is configured"
    finally:
        sock.close()

    # TURN REST API: credentials from kemi/turn.py are accepted ...
    creds = turn_credentials(secret.encode(), "agent1001", 600, time.time())
    turn = stun.TurnClient(server, creds["username"], creds["password"])
    try:
        resp = turn.allocate()
        assert turn.realm == "gateway.example.invalid", "realm from turnserver.conf"
        assert resp.mtype == stun.ALLOCATE | stun.SUCCESS, f"Allocate refused: {resp.error()}{proc.describe()}"
        relay_ip, relay_port = resp.xor_address(stun.XOR_RELAYED_ADDRESS)
        assert relay_ip == "127.0.0.1" and lo <= relay_port <= hi
        # ... and the relay refuses private/loopback peers (denied-peer-ip).
        for peer in ("10.1.2.3", "192.168.1.1", "127.0.0.1"):
            r = turn.create_permission(peer)
            assert r.error() and r.error()[0] == 403, f"peer {peer}: {r.mtype:#x} {r.error()}"
        r = turn.release()
        assert r.mtype == stun.REFRESH | stun.SUCCESS, r.error()
    finally:
        turn.close()

    # wrong secret, expired credentials: refused
    for label, c in [
        ("wrong secret", turn_credentials(b"not-the-secret", "agent1001", 600, time.time())),
        ("expired", turn_credentials(secret.encode(), "agent1001", 60, time.time() - 3600)),
    ]:
        bad = stun.TurnClient(server, c["username"], c["password"])
        try:
            r = bad.allocate()
            assert r.error() and r.error()[0] == 401, f"{label}: {r.mtype:#x} {r.error()}"
        finally:
            bad.close()


# --------------------------------------------------------------------------- compose

REQUIRED_SERVICES = {"gateway", "rtpengine", "redis", "asterisk", "nginx", "coturn", "prometheus"}


def test_compose_matches_compose_spec_schema():
    exe = need("check-jsonschema")
    r = run([exe, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")])
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_structure_and_env():
    text = (DEPLOY / "compose.yaml").read_text()
    doc = load_compose()
    services = doc["services"]
    assert REQUIRED_SERVICES <= set(services), set(services)

    # every ${VAR} is documented in .env.example, whose secrets are placeholders
    example = env_example()
    undocumented = compose_vars(text) - set(example)
    assert not undocumented, f"compose uses variables missing from .env.example: {sorted(undocumented)}"
    for k in ("REDIS_PASSWORD", "TURN_SECRET"):
        assert example[k].startswith("CHANGE_ME"), f"{k} in .env.example must be a CHANGE_ME placeholder"
    assert not (DEPLOY / ".env").exists() or ".env" in (DEPLOY / ".gitignore").read_text()
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()

    # no secret literals: secret-bearing options are interpolated
    for needle in ("--requirepass", "--static-auth-secret", "GW_TURN_SECRET", "REDISCLI_AUTH"):
        for line in text.splitlines():
            if needle in line and not line.strip().startswith("#"):
                assert "${" in line or line.strip().endswith(needle), f"literal secret? {line.strip()}"
    assert "redis://:${REDIS_PASSWORD" in text

    for name, svc in services.items():
        if svc.get("network_mode") == "host":
            assert "ports" not in svc, f"{name}: ports are meaningless with network_mode: host"
        build = svc.get("build")
        if build:
            ctx = (DEPLOY / build["context"]).resolve()
            assert (ctx / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile in {ctx}"
        for vol in svc.get("volumes", []):
            src = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if src.startswith("."):
                path = (DEPLOY / src).resolve()
                if path.name == "pjsip_agents.conf":
                    assert (path.parent / "pjsip_agents.conf.sample").is_file()
                    assert vol["bind"]["create_host_path"] is False
                    continue
                assert path.exists(), f"{name}: bind source {src} does not exist"
    assert services["rtpengine"]["network_mode"] == "host", "media wants host networking"
    cmd = services["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert services["redis"]["image"].startswith("redis:7")

    # The gateway's environment, rendered with the example values, passes the
    # gateway's own settings validation.
    rendered = yaml.safe_load(interpolate(text, example))
    gw_env = {k: "" if v is None else str(v) for k, v in rendered["services"]["gateway"]["environment"].items()}
    cfg = settings_mod.load(gw_env)
    assert str(cfg.ws_listen) == rendered["services"]["nginx"]["environment"]["GW_WS_UPSTREAM"]
    assert cfg.redis_url.startswith("redis://:CHANGE_ME")
    rtp_cmd = rendered["services"]["rtpengine"]["command"]
    assert rtp_cmd == [f"--interface={example['GW_MEDIA_IP']}"]
    natted = yaml.safe_load(interpolate(text, {**example, "RTPENGINE_ADVERTISED_IP": "203.0.113.9"}))
    assert natted["services"]["rtpengine"]["command"] == [f"--interface={example['GW_MEDIA_IP']}!203.0.113.9"]
    with pytest.raises(ValueError, match="TURN_SECRET"):
        interpolate(text, {k: v for k, v in example.items() if k != "TURN_SECRET"})


def test_compose_secure_defaults():
    """Issue 11: no WebSocket from any web page in production (compose refuses to
    start without GW_WS_ORIGINS), and the gateway learns the phones' addresses
    from nginx (GW_WS_PROXIES = nginx's address toward it)."""
    text = (DEPLOY / "compose.yaml").read_text()
    example = env_example()
    with pytest.raises(ValueError, match="GW_WS_ORIGINS"):
        interpolate(text, {k: v for k, v in example.items() if k != "GW_WS_ORIGINS"})
    with pytest.raises(ValueError, match="GW_WS_ORIGINS"):
        interpolate(text, {**example, "GW_WS_ORIGINS": ""})
    gw_env = yaml.safe_load(interpolate(text, example))["services"]["gateway"]["environment"]
    cfg = settings_mod.load({k: "" if v is None else str(v) for k, v in gw_env.items()})
    assert cfg.ws_origins == (example["GW_WS_ORIGINS"],)
    upstream = yaml.safe_load(interpolate(text, example))["services"]["nginx"]["environment"]["GW_WS_UPSTREAM"]
    assert cfg.ws_proxies == (upstream.rpartition(":")[0],), "nginx reaches the gateway from its upstream address"


def test_compose_runtime_details_found_by_the_deploy_test():
    """What `make deploy-test` found running the stack for real (tests/deploy_stack)."""
    services = load_compose()["services"]
    # Docker makes a tmpfs root's; the gateway runs as the image's kamailio user.
    args = dict(re.findall(r"^ARG (GW_UID|GW_GID)=(\d+)$", (ROOT / "Dockerfile").read_text(), re.M))
    run_dir = [t for t in services["gateway"]["tmpfs"] if t.split(":")[0] == "/run/gateway"]
    assert run_dir, services["gateway"]["tmpfs"]
    opts = dict(o.split("=", 1) for o in run_dir[0].split(":", 1)[1].split(","))
    assert (opts["uid"], opts["gid"]) == (args["GW_UID"], args["GW_GID"]), (opts, args)
    assert int(opts["mode"], 8) & 0o700 == 0o700
    # Docker's first health probe comes one interval after the start.
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        if hc:
            value = int(re.fullmatch(r"(\d+)s", hc["interval"]).group(1))
            assert value <= 30, f"{name}: healthcheck interval {value}s keeps it 'starting' that long"
    # turnserver ignores SIGTERM as PID 1.
    assert services["coturn"].get("init") is True


# --------------------------------------------------------------------------- Dockerfiles

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


DOCKERFILES = ["Dockerfile", "deploy/rtpengine/Dockerfile",
               *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "deploy_stack" / "standins").glob("*/Dockerfile"))]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_pass_hadolint(dockerfile):
    exe = need("hadolint")
    r = run([exe, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / dockerfile)])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_build_with_the_classic_builder(dockerfile):
    """make image uses the classic builder (Debian's docker.io has no buildx, and
    BuildKit fetches a `# syntax=` frontend from a registry): no BuildKit-only syntax."""
    text = (ROOT / dockerfile).read_text()
    assert not re.match(r"#\s*syntax\s*=", text, re.I), "a # syntax= frontend needs a registry"
    for word, arg in dockerfile_instructions(ROOT / dockerfile):
        if word in ("COPY", "ADD"):
            flags = re.findall(r"--([a-z-]+)", arg.split(" /")[0])
            assert set(flags) <= {"from", "chown"}, f"{word} {arg}: --{flags} needs BuildKit"
        if word == "RUN":
            assert not arg.startswith("--"), f"RUN {arg[:40]}: RUN flags need BuildKit"
            assert "<<" not in arg, "heredocs need BuildKit"


def dockerignored(path: str) -> bool:
    """Whether the classic builder leaves `path` out of the context (.dockerignore:
    the last pattern matching the path or one of its parents wins)."""
    import fnmatch
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pattern[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_big():
    for word, arg in dockerfile_instructions(ROOT / "Dockerfile"):
        if word == "COPY" and not arg.startswith("--from"):
            for src in [a for a in arg.split() if not a.startswith("--")][:-1]:
                src = src.rstrip("/")
                assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
                if (ROOT / src).is_dir():
                    for f in (ROOT / src).rglob("*.py"):
                        rel = str(f.relative_to(ROOT))
                        assert "__pycache__" in rel or not dockerignored(rel), rel
    for path in (".venv/lib/x.py", ".git/HEAD", "agent/node_modules/x.js", "tests/conftest.py",
                 "kemi/__pycache__/app.cpython-311.pyc", "deploy/.env", "deploy/certs/privkey.pem"):
        assert dockerignored(path), f"{path} would be sent to the build"
    assert not dockerignored("deploy/wheelhouse/bencode_py-4.1.0-py3-none-any.whl")


def test_gateway_dockerfile_instructions():
    ins = dockerfile_instructions(ROOT / "Dockerfile")
    froms = [a for i, a in ins if i == "FROM"]
    assert froms[-1] == "debian:12-slim", froms
    final = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM"):]
    runs = " ".join(a for i, a in final if i == "RUN")
    for pkg in ("kamailio", "kamailio-python3-modules", "kamailio-websocket-modules", "kamailio-tls-modules",
                "kamailio-redis-modules", "kamailio-extra-modules", "kamailio-utils-modules",
                "python3-redis", "python3-prometheus-client"):
        assert re.search(rf"(?<![\w-]){re.escape(pkg)}(?![\w-])", runs), f"{pkg} not installed"
    copies = [a for i, a in final if i == "COPY"]
    for src in ("kamailio.cfg", "kemi/", "gw/"):
        assert any(c.split()[0] == src for c in copies), f"COPY {src} missing"
    for c in copies:
        parts = [p for p in c.split() if not p.startswith("--")]
        if not c.startswith("--from"):
            for src in parts[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} does not exist"
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] == "kamailio", "must run as the non-root kamailio user"
    expose = " ".join(a for i, a in final if i == "EXPOSE").split()
    assert {"8080/tcp", "5070/udp", "5070/tcp"} <= set(expose)
    hc = [a for i, a in final if i == "HEALTHCHECK"]
    assert hc and "gateway-healthcheck" in hc[0]
    assert [a for i, a in final if i == "CMD"][-1] == '["python3", "-m", "gw.run"]'
    env = " ".join(a for i, a in final if i == "ENV")
    for name in ("GW_WS_LISTEN", "GW_SIP_LISTEN", "GW_PBX", "GW_REDIS_URL", "GW_RTPENGINE",
                 "GW_MEDIA_IP", "GW_MEDIA_PORTS"):
        m = re.search(rf"{name}=(\S+)", env)
        assert m and m.group(1) == settings_mod.DEFAULTS[name], f"ENV {name} != product default"


def test_healthcheck_script_against_http_server():
    import http.server

    status = {"code": 200}

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code = status["code"] if self.path == "/health" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok" if code == 200 else b"redis down")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    script = [sys.executable, str(DEPLOY / "gateway-healthcheck.py")]
    try:
        port = srv.server_address[1]
        for listen in (f"127.0.0.1:{port}", f"0.0.0.0:{port}"):
            r = run(script, env={**os.environ, "GW_WS_LISTEN": listen})
            assert r.returncode == 0, r.stdout + r.stderr
        status["code"] = 503
        r = run(script, env={**os.environ, "GW_WS_LISTEN": f"127.0.0.1:{port}"})
        assert r.returncode == 1 and "503" in r.stdout
    finally:
        srv.shutdown()
        srv.server_close()
    r = run(script, env={**os.environ, "GW_WS_LISTEN": f"127.0.0.1:{stack.free_port(kind=socket.SOCK_STREAM)}"})
    assert r.returncode == 1 and "unhealthy" in r.stdout
    r = run(script, env={**os.environ, "GW_WS_LISTEN": "nonsense"})
    assert r.returncode == 1


# --------------------------------------------------------------------------- Prometheus / Grafana

GATEWAY_METRICS = {
    "gateway_sip_requests_total", "gateway_sip_replies_total", "gateway_calls_active", "gateway_calls_total",
    "gateway_call_setup_seconds", "gateway_registrations_active", "gateway_register_failures_total",
    "gateway_rtpengine_sessions", "gateway_rtpengine_packets_total", "gateway_rtpengine_errors_total",
    "gateway_redis_errors_total", "gateway_up",
    "gateway_connections", "gateway_connections_limit", "gateway_shm_used_ratio",
    "gateway_connections_refused_total",
    "gateway_call_mos", "gateway_call_packet_loss_ratio", "gateway_call_jitter_seconds",
}
HISTOGRAMS = {"gateway_call_setup_seconds", "gateway_call_mos", "gateway_call_packet_loss_ratio",
              "gateway_call_jitter_seconds"}


def test_prometheus_config_promtool():
    r = run([need("promtool"), "check", "config", str(DEPLOY / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    gw = settings_mod.load({})
    assert jobs["gateway"]["static_configs"][0]["targets"] == [str(gw.ws_listen)]
    assert jobs["gateway"].get("metrics_path", "/metrics") == "/metrics"
    http_listen = rtpengine_conf()["rtpengine"]["listen-http"]
    assert jobs["rtpengine"]["static_configs"][0]["targets"] == [http_listen]


def test_call_quality_alert_fires_on_the_share_of_calls_under_mos_3_5(tmp_path):
    """deploy/prometheus-alerts.yml, loaded by prometheus.yml, passes promtool,
    and promtool's rule unit test shows what it does: 30 calls in 15 min of
    which 6 ended at MOS 3.5 or less (20 %) fire it; 2 of 30 do not, nor does
    a quiet hour with 3 bad calls of 5."""
    rules = DEPLOY / "prometheus-alerts.yml"
    assert "prometheus-alerts.yml" in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["rule_files"]
    r = run([need("promtool"), "check", "rules", str(rules)])
    assert r.returncode == 0, r.stdout + r.stderr

    def series(bad_per_min: int, all_per_min: int) -> list[dict]:
        # cumulative histogram counters scraped every minute for 30 minutes
        return [{"series": 'gateway_call_mos_bucket{le="3.5"}', "values": f"0+{bad_per_min}x30"},
                {"series": "gateway_call_mos_count", "values": f"0+{all_per_min}x30"}]

    rule = yaml.safe_load(rules.read_text())["groups"][0]["rules"][0]
    annotations = {"summary": "20% of calls ended with a MOS of 3.5 or less (15 min)",
                   "description": rule["annotations"]["description"]}

    def case(values: list[dict], fired: bool) -> dict:
        alerts = [{"exp_labels": {"severity": "warning"}, "exp_annotations": annotations}] if fired else []
        return {"interval": "1m", "input_series": values,
                "alert_rule_test": [{"eval_time": "25m", "alertname": "GatewayCallQualityLow",
                                     "exp_alerts": alerts}]}
    # per minute: 2 calls, 0.4 bad (20 %) / 0.067 bad (3 %); the quiet case: 1 call in 3 minutes
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        case(series(0.4, 2), True), case(series(0.0667, 2), False), case(series(0.2, 0.33), False)]}
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests))
    r = run([need("promtool"), "test", "rules", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_dashboard_uses_gateway_metrics_and_valid_promql(tmp_path):
    dash = json.loads((DEPLOY / "grafana" / "gateway-dashboard.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = [(p["title"], t["expr"]) for p in panels for t in p["targets"]]
    used = set()
    for title, expr in exprs:
        for name in re.findall(r"\b(gateway_[a-z_]+)", expr):
            stripped = re.sub(r"_(bucket|sum|count)$", "", name)
            base = stripped if stripped in HISTOGRAMS else name
            assert base in GATEWAY_METRICS, f"{title}: unknown metric {name}"
            used.add(base)
    assert used == GATEWAY_METRICS, f"metrics without a panel: {GATEWAY_METRICS - used}"
    titles = " | ".join(p["title"].lower() for p in panels)
    for word in ("calls active", "call rate", "setup", "registrations", "register failures",
                 "replies by class", "rtpengine sessions", "rtpengine packets", "rtpengine errors", "up",
                 "mos", "packet loss per leg", "jitter per leg"):
        assert word in titles, f"no panel for {word!r}"
    setup = " ".join(e for t, e in exprs if "gateway_call_setup_seconds" in e)
    assert "histogram_quantile(0.5," in setup and "histogram_quantile(0.95," in setup

    # Every expression parses as PromQL (Grafana's $__rate_interval -> 5m).
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{n}", "expr": e.replace("$__rate_interval", "5m")}
        for n, (_, e) in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = run([need("promtool"), "check", "rules", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- Asterisk

def asterisk_sections(path: Path) -> dict[str, dict[str, str]]:
    """Asterisk config with templates: [name](!) defines, [name](tpl) inherits.
    Sections of the same name (endpoint/aor/identify) are keyed name#type."""
    templates: dict[str, dict[str, str]] = {}
    out: dict[str, dict[str, str]] = {}
    cur: Optional[dict[str, str]] = None
    pending: Optional[tuple[str, bool]] = None

    def flush():
        if pending and cur is not None:
            name, is_tpl = pending
            if is_tpl:
                templates[name] = cur
            else:
                out[f"{name}#{cur.get('type', '?')}"] = cur

    for raw in path.read_text().splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[([^\]]+)\](?:\(([^)]*)\))?", line)
        if m:
            flush()
            opts = [o.strip() for o in (m.group(2) or "").split(",") if o.strip()]
            cur = {}
            for o in opts:
                if o != "!":
                    assert o in templates, f"{path.name}: [{m.group(1)}] uses unknown template {o}"
                    cur.update(templates[o])
            pending = (m.group(1), "!" in opts)
            continue
        k, sep, v = line.partition("=")
        assert sep and cur is not None, f"{path.name}: bad line {raw!r}"
        cur[k.strip().rstrip(">").strip()] = v.strip()
    flush()
    return out


def test_asterisk_config_for_agents_behind_gateway():
    ast = ROOT / "asterisk"
    pjsip = asterisk_sections(ast / "pjsip.conf")
    text = (ast / "pjsip.conf").read_text()
    assert "#tryinclude pjsip_agents.conf" in text
    transport = pjsip["transport-udp#transport"]
    assert transport["protocol"] == "udp" and transport["bind"].endswith(":5060")
    assert pjsip["global#global"]["endpoint_identifier_order"].startswith("username")
    assert pjsip["gateway#identify"]["endpoint"] == "gateway"

    # the sample agents, with the templates from pjsip.conf
    sample = (ast / "pjsip.conf").read_text().split("#tryinclude")[0] + (ast / "pjsip_agents.conf.sample").read_text()
    combined = ast / "combined.tmp"
    try:
        Path(combined).write_text(sample)
        agents = asterisk_sections(combined)
    finally:
        combined.unlink()
    endpoint, aor, auth = agents["1001#endpoint"], agents["1001#aor"], agents["1001-auth#auth"]
    expected = {"media_encryption": "no", "ice_support": "no", "use_avpf": "no", "direct_media": "no",
                "rtp_symmetric": "yes", "force_rport": "yes", "rewrite_contact": "no", "webrtc": "no"}
    assert {k: endpoint.get(k) for k in expected} == expected
    assert aor["support_path"] == "yes"
    assert endpoint["auth"] == "1001-auth" and endpoint["aors"] == "1001"
    for name, sec in agents.items():
        if sec.get("type") == "auth":
            assert sec["password"].startswith("CHANGE_ME"), f"{name}: sample passwords must be placeholders"
    assert "pjsip_agents.conf" in (ast / ".gitignore").read_text().split()

    ext = (ast / "extensions.conf").read_text()
    assert "Dial(PJSIP/${EXTEN}" in ext
    rtp = configparser.ConfigParser(inline_comment_prefixes=(";",), comment_prefixes=(";",))
    rtp.read(ast / "rtp.conf")
    a_lo, a_hi = int(rtp["general"]["rtpstart"]), int(rtp["general"]["rtpend"])
    r_lo, r_hi = settings_mod.load({}).media_ports
    turn = dict(line.split("=", 1) for line in (DEPLOY / "coturn" / "turnserver.conf").read_text().splitlines()
                if line.startswith(("min-port=", "max-port=")))
    t_lo, t_hi = int(turn["min-port"]), int(turn["max-port"])
    for (lo1, hi1), (lo2, hi2) in [((a_lo, a_hi), (r_lo, r_hi)), ((a_lo, a_hi), (t_lo, t_hi)),
                                   ((r_lo, r_hi), (t_lo, t_hi))]:
        assert hi1 < lo2 or hi2 < lo1, "Asterisk/rtpengine/coturn port ranges overlap on the shared host"
    assert rtp["general"]["icesupport"] == "no"


def test_flags_doc_stub():
    text = (ROOT / "rtpengine" / "FLAGS.md").read_text()
    assert "## Flags the gateway sends" in text
    assert "RECEIVES the SDP" in text


def test_no_private_keys_or_secrets_committed():
    files = [ROOT / "Dockerfile", *DEPLOY.rglob("*"), *(ROOT / "asterisk").rglob("*"), *(ROOT / "rtpengine").rglob("*")]
    for f in files:
        if f.is_file() and f.name not in (".env",):
            text = f.read_text(errors="replace")
            assert "PRIVATE KEY-----" not in text, f"{f}: private key material"


# --------------------------------------------------------------------------- rtpengine + CN filter

def test_compose_rtpengine_gets_the_cn_filter_and_the_gateways_port_range():
    doc = load_compose()
    rtp, gw = doc["services"]["rtpengine"], doc["services"]["gateway"]
    assert rtp["environment"]["GW_MEDIA_PORTS"] == gw["environment"]["GW_MEDIA_PORTS"]
    assert "../rtpengine/cn-filter.sh:/usr/local/sbin/gw-cn-filter:ro" in rtp["volumes"]
    assert "NET_ADMIN" in rtp["cap_add"]
    ins = dockerfile_instructions(DEPLOY / "rtpengine" / "Dockerfile")
    assert [a for i, a in ins if i == "ENTRYPOINT"] == ['["/usr/local/bin/rtpengine-entrypoint"]']
    assert "nftables" in " ".join(a for i, a in ins if i == "RUN")
    assert any(a.endswith("entrypoint.sh /usr/local/bin/rtpengine-entrypoint") for i, a in ins if i == "COPY")


def test_rtpengine_entrypoint_installs_the_cn_filter_and_removes_it(tmp_path):
    """deploy/rtpengine/entrypoint.sh with the real rtpengine and the shipped
    rtpengine.conf, in a network namespace of our own (its nftables ruleset is
    the namespace's): the table covers GW_MEDIA_PORTS, rtpengine uses the same
    range, PT 13 through a real session is dropped; SIGTERM stops rtpengine and
    removes the table. Without CAP_NET_ADMIN rtpengine still starts, and says so."""
    from gw import cnfilter
    from support.netns import NetNs
    ns = NetNs(f"gwent{os.getpid() % 100000}").create()
    low, high = 30000, 30039
    ng_port = 2223
    env = {**os.environ, "GW_MEDIA_PORTS": f"{low}-{high}", "CN_FILTER": str(ROOT / "rtpengine" / "cn-filter.sh"),
           "RTPENGINE_CONF": str(ROOT / "rtpengine" / "rtpengine.conf")}
    args = ["--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}", "--listen-cli=127.0.0.1:2224",
            "--listen-http=127.0.0.1:2225", "--table=-1", f"--pidfile={tmp_path / 'rtpengine.pid'}"]
    entry = str(DEPLOY / "rtpengine" / "entrypoint.sh")
    cfg = settings_mod.load({"GW_RTPENGINE": f"udp:127.0.0.1:{ng_port}", "GW_MEDIA_PORTS": f"{low}-{high}"})

    def ruleset() -> str:
        return run(ns.argv(["nft", "list", "ruleset"])).stdout

    def start(prefix: list[str]) -> tuple[subprocess.Popen, Path]:
        path = tmp_path / f"entrypoint{len(prefix)}.log"
        with open(path, "w") as log:
            proc = subprocess.Popen(prefix + ns.argv([entry, *args]), env=env, stdout=log,
                                    stderr=subprocess.STDOUT)

        def ready() -> bool:
            with ns.entered():
                return stack.ng_ping(cfg.rtpengines[0])
        deadline = time.monotonic() + 10
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, path.read_text()
            time.sleep(0.1)
        return proc, path

    def stop(started: tuple[subprocess.Popen, Path]) -> str:
        proc, path = started
        proc.terminate()                       # the entrypoint, our own child
        assert proc.wait(15) == 0
        return path.read_text()

    try:
        proc = start([])
        try:
            assert f"table inet gw_cn_{low}_{high}" in ruleset() and "owner: rtpengine container" in ruleset()
            with ns.entered():
                p = cnfilter.probe(cfg.rtpengines[0])
            assert p.cn_blocked, p.summary()
            assert p.target.startswith("127.0.0.1:") and low <= int(p.target.split(":")[1]) <= high
        finally:
            text = stop(proc)
        assert "drops RTP PT 13 sent to ports 30000-30039" in text, text
        assert "gw_cn_" not in ruleset(), "the entrypoint left its table behind"
        # No CAP_NET_ADMIN: no filter, rtpengine all the same, and a line saying so.
        proc = start(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"])
        text = stop(proc)
        assert "filter NOT installed" in text and "transcoder" in text, text
    finally:
        ns.delete()
