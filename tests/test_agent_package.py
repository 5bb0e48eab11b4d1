"""The connector as agents' desktops get it: `make agent-package`'s wheel
(agent/build.py), installed with pip alone into a fresh venv whose PATH has no
Node.js (the agent_install fixture, tests/conftest.py), runs as `gateway-agent`:
/Ping over HTTPS, /phone with its script, /health with the versions. On Linux
for real, inside a temporary HOME: trust-cert puts the certificate into the NSS
database and Debian's chromium then loads the page with no certificate
override; the XDG autostart entry starts the connector. Bad input: a
certificate folder it cannot write and a port already in use exit 2, naming
the cause. (Windows and macOS: tests/unit/test_agent_platforms.py, OS faked.)"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest

import gateway_agent
from support.agent_harness import CHROMIUM, Bridge, _stop_group, free_tcp_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "_artifacts" / "agent_package"
LOCK = ROOT / "agent" / "web" / "package-lock.json"
WWE = "https://wwe.contact-centre.test"
APP_ID = "webrtc-gateway-agent"


def _home_env(agent_install, home: Path, **extra: str) -> dict[str, str]:
    """A desktop user's environment: this HOME, no XDG_CONFIG_HOME, no display."""
    env = agent_install.env({"HOME": str(home), **extra})
    for k in ("XDG_CONFIG_HOME", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(k, None)
    return env


def _start(agent_install, home: Path, name: str, **env: str) -> Bridge:
    """The installed connector with its certificate in the default folder of `home`."""
    log = ARTIFACTS / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    return Bridge.start("ws://127.0.0.1:9", WWE, home / ".config" / APP_ID, log,
                        extra_env={"AGENT_CERT_DIR": "", **env}, command=agent_install.command,
                        base_env=_home_env(agent_install, home))


# ------------------------------------------------------------------ the wheel
def test_wheel_is_pure_python_and_carries_the_built_bundle(agent_install):
    whl = agent_install.wheel
    assert whl.name == f"webrtc_gateway_agent-{gateway_agent.__version__}-py3-none-any.whl"
    lock = json.loads(LOCK.read_text())["packages"]
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        info = f"webrtc_gateway_agent-{gateway_agent.__version__}.dist-info"
        wheel_meta = z.read(f"{info}/WHEEL").decode()
        assert "Root-Is-Purelib: true" in wheel_meta and "Tag: py3-none-any" in wheel_meta
        requires = re.findall(r"^Requires-Dist: (\S+)", z.read(f"{info}/METADATA").decode(), re.M)
        assert sorted(r.split(">")[0] for r in requires) == ["aiohttp", "cryptography"]
        assert "gateway-agent = gateway_agent.cli:main" in z.read(f"{info}/entry_points.txt").decode()
        assert not [n for n in names if "node_modules" in n or n.endswith((".so", ".pyd", ".dll"))]
        versions = json.loads(z.read("gateway_agent/static/versions.json"))
        phone_js = z.read("gateway_agent/static/phone.js")
        source_map = json.loads(z.read("gateway_agent/static/phone.js.map"))
    # The lockfile's versions, recorded: what the bundle is made of.
    assert versions["jssip"] == lock["node_modules/jssip"]["version"]
    assert versions["esbuild"] == lock["node_modules/esbuild"]["version"]
    assert versions["packages"] == {k.split("node_modules/", 1)[1]: v["version"]
                                    for k, v in lock.items() if k and not v.get("dev")}
    assert versions["lockfile_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert versions["bundle"]["phone.js"]["sha256"] == hashlib.sha256(phone_js).hexdigest()
    assert f'"{versions["jssip"]}"'.encode() in phone_js
    assert phone_js.rstrip().endswith(b"//# sourceMappingURL=phone.js.map")
    # The source map carries the sources (phone.js and JsSIP's), so a stack trace reads back.
    assert any(s.endswith("web/src/phone.js") for s in source_map["sources"])
    assert any("node_modules/jssip/" in s for s in source_map["sources"])
    assert len(source_map["sourcesContent"]) == len(source_map["sources"])


def test_installed_copy_runs_without_node(agent_install):
    env = agent_install.env()
    for tool in ("node", "npm"):
        assert shutil.which(tool, path=env["PATH"]) is None
    where = subprocess.run([agent_install.python, "-c", "import gateway_agent; print(gateway_agent.__file__)"],
                           env=env, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    assert Path(where.stdout.strip()).is_relative_to(agent_install.venv), where.stdout
    r = agent_install.run("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"gateway-agent {gateway_agent.__version__} (JsSIP "), r.stdout
    print(f"{r.stdout.strip()}; wheel built in {agent_install.build_seconds}s, "
          f"installed with pip alone in {agent_install.install_seconds}s")


# ------------------------------------------------------------------ serving
def test_serves_ping_and_phone_over_https_with_versions(agent_install, tmp_path):
    """Started with no AGENT_CERT_DIR from a folder of its own: the certificate
    goes to the user's config folder (~/.config/webrtc-gateway-agent here), not
    the current directory; /Ping, /phone and its script answer over HTTPS."""
    home = tmp_path / "home"
    b = _start(agent_install, home, "serve_default_dir")
    try:
        assert (home / ".config" / APP_ID / "bridge-cert.pem").is_file()
        assert not list(ARTIFACTS.glob("bridge-*.pem"))        # nothing in its working folder
        status, body, _ = b.get("/Ping", origin=WWE)
        assert status == 200 and body["PingResult"][0]["status"] == "EndpointStatus_NoPhonePage"
        status, html, headers = b.get("/phone")
        assert status == 200 and '<script src="/phone/phone.js" defer></script>' in html
        assert "script-src 'self'" in headers["content-security-policy"]
        with zipfile.ZipFile(agent_install.wheel) as z:
            versions = json.loads(z.read("gateway_agent/static/versions.json"))
        raw = _get_bytes(b, "/phone/phone.js")
        assert hashlib.sha256(raw).hexdigest() == versions["bundle"]["phone.js"]["sha256"]
        assert b.get("/phone/phone.js.map")[0] == 200
        health = b.get("/health")[1]
        assert health["versions"]["gateway_agent"] == gateway_agent.__version__
        assert health["versions"]["jssip"] == versions["jssip"]
        assert health["versions"]["bundle_sha256"] == versions["bundle"]["phone.js"]["sha256"]
        assert {"python", "aiohttp", "cryptography"} <= set(health["versions"])
        print(f"/health versions {health['versions']}")
    finally:
        b.stop()


def _get_bytes(b: Bridge, path: str) -> bytes:
    import http.client
    conn = http.client.HTTPSConnection(b.host, b.port, context=b.ctx, timeout=15)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


# ------------------------------------------------------------------ bad input
def _readonly_run(agent_install, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """gateway-agent where `folder` cannot be written: a read-only bind mount in a
    mount namespace of its own when we are root (root ignores file modes), else
    the folder's mode."""
    argv = [*agent_install.command, "--no-open"]
    if os.geteuid() == 0:
        unshare, mount = shutil.which("unshare"), shutil.which("mount")
        assert unshare and mount, "unshare/mount (util-linux) are missing"
        argv = [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c",
                f'{mount} --bind "$1" "$1" && {mount} -o remount,bind,ro "$1" && shift && exec "$@"',
                "sh", str(folder), *argv]
    else:
        folder.chmod(0o555)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("inside", [False, True], ids=["folder_itself", "folder_below"])
def test_unwritable_cert_dir_exits_2_naming_it(agent_install, tmp_path, inside):
    ro = tmp_path / "locked"
    ro.mkdir()
    cert_dir = ro / "certs" if inside else ro
    env = _home_env(agent_install, tmp_path / "home", AGENT_CERT_DIR=str(cert_dir),
                    AGENT_LISTEN=f"127.0.0.1:{free_tcp_port()}")
    try:
        r = _readonly_run(agent_install, ro, env)
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert f"AGENT_CERT_DIR: cannot write the certificate to {cert_dir}:" in r.stderr, r.stderr
    assert re.search(r"(Read-only file system|Permission denied)", r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    print(r.stderr.strip().splitlines()[-1])


def test_port_in_use_exits_2_naming_it(agent_install, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = agent_install.run("--no-open", env=_home_env(
            agent_install, tmp_path / "home", AGENT_LISTEN=f"127.0.0.1:{port}"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert f"AGENT_LISTEN: 127.0.0.1:{port} is already in use" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    print(r.stderr.strip().splitlines()[-1])


# ------------------------------------------------------------------ Linux for real
def _tools_path(agent_install, tmp_path: Path, *tools: str) -> str:
    """The venv plus a folder holding only `tools` (not node or npm)."""
    d = tmp_path / "tools"
    d.mkdir(exist_ok=True)
    for t in tools:
        found = shutil.which(t)
        assert found, f"{t} is missing: run `make deps` (agent/install.sh)"
        (d / t).symlink_to(found)
    return f"{agent_install.bin}{os.pathsep}{d}"


def _chromium_dom(url: str, home: Path, work: Path) -> str:
    """The page's DOM as Debian's headless chromium loads it for a user whose
    HOME is `home` (its NSS database); no certificate override of any kind."""
    profile = Path(tempfile.mkdtemp(prefix="agent-pkg-chromium-", dir=work))
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-default-apps", f"--user-data-dir={profile}",
            "--virtual-time-budget=3000", "--dump-dom", url]
    out = work / f"dom-{profile.name}.html"
    with open(out, "wb") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                             env={**os.environ, "HOME": str(home)}, start_new_session=True)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _stop_group(p)
    shutil.rmtree(profile, ignore_errors=True)
    return out.read_text(errors="replace")


def _nss_list(home: Path) -> str:
    return subprocess.run(["certutil", "-L", "-d", f"sql:{home / '.pki' / 'nssdb'}"],
                          capture_output=True, text=True, check=True).stdout


def test_trust_cert_for_real_then_chromium_trusts_the_page(agent_install, tmp_path):
    home = tmp_path / "home"
    path = _tools_path(agent_install, tmp_path, "certutil")
    env = _home_env(agent_install, home)
    env["PATH"] = path
    pem = home / ".config" / APP_ID / "bridge-cert.pem"

    dry = agent_install.run("trust-cert", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert (f"certutil -d sql:{home}/.pki/nssdb -A -t P,, -n {APP_ID} -i {pem}"
            in dry.stdout.splitlines()), dry.stdout
    assert not (home / ".pki").exists() and not pem.exists()   # a dry run changes nothing

    b = _start(agent_install, home, "trust_cert")
    try:
        work = tmp_path / "chromium"
        work.mkdir()
        assert "Agent phone" not in _chromium_dom(b.base + "/phone", home, work)   # not trusted yet
        # Why "P,," and not "C,,": as a trusted CA only, chromium still refuses
        # this certificate (it is deliberately no CA).
        ca_home = tmp_path / "ca-only"
        ca_db = f"sql:{ca_home / '.pki' / 'nssdb'}"
        (ca_home / ".pki" / "nssdb").mkdir(parents=True)
        subprocess.run(["certutil", "-d", ca_db, "-N", "--empty-password"], check=True)
        subprocess.run(["certutil", "-d", ca_db, "-A", "-t", "C,,", "-n", APP_ID, "-i", str(pem)],
                       check=True)
        assert "Agent phone" not in _chromium_dom(b.base + "/phone", ca_home, work)
        for _ in range(2):          # again: the renewed-certificate path (-D, then -A)
            r = agent_install.run("trust-cert", env=env)
            assert r.returncode == 0, (r.stdout, r.stderr)
        listed = [line for line in _nss_list(home).splitlines() if line.startswith(APP_ID)]
        assert len(listed) == 1 and listed[0].split()[-1] == "P,,", listed
        dom = _chromium_dom(b.base + "/phone", home, work)
        assert "<h1>Agent phone</h1>" in dom, dom[:2000]
        print(f"trust-cert: {listed[0]}; chromium loads {b.base}/phone with no override")
    finally:
        b.stop()


def test_trust_cert_without_certutil_exits_2(agent_install, tmp_path):
    r = agent_install.run("trust-cert", env=_home_env(agent_install, tmp_path / "home"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "certutil not found" in r.stderr and "libnss3-tools" in r.stderr


def test_autostart_for_real_starts_the_connector(agent_install, tmp_path):
    home = tmp_path / "home"
    port = free_tcp_port()
    env = _home_env(agent_install, home, AGENT_ORIGINS=WWE, AGENT_LISTEN=f"127.0.0.1:{port}",
                    AGENT_GATEWAY_WS="ws://127.0.0.1:9")
    r = agent_install.run("autostart", "on", env=env)
    assert r.returncode == 0, r.stderr
    entry = home / ".config" / "autostart" / f"{APP_ID}.desktop"
    text = entry.read_text()
    exec_line = next(line for line in text.splitlines() if line.startswith("Exec="))[len("Exec="):]
    # As a desktop session reads Exec: string escapes, %% -> %, then shell-like words.
    unescaped = re.sub(r"\\(.)", lambda m: m.group(1), exec_line).replace("%%", "%")
    words = subprocess.run(["sh", "-c", f"printf '%s\\0' {unescaped}"], capture_output=True,
                           text=True, check=True).stdout.split("\0")[:-1]
    assert words == ["env", "AGENT_GATEWAY_WS=ws://127.0.0.1:9", f"AGENT_ORIGINS={WWE}",
                     f"AGENT_LISTEN=127.0.0.1:{port}", str(agent_install.bin / "gateway-agent")]

    # Log in: run the entry's command with nothing of ours in the environment but HOME.
    log = ARTIFACTS / "autostart.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    session = _home_env(agent_install, home)
    with open(log, "wb") as f:
        p = subprocess.Popen([shutil.which("env"), *words[1:]], env=session, stdout=f,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path,
                             start_new_session=True)
    try:
        wait_for(lambda: "ready" in log.read_text() or p.poll() is not None, 30, "the connector")
        assert p.poll() is None, log.read_text()
        b = Bridge(session, log, port=port)
        b.ctx = ssl.create_default_context(cafile=str(home / ".config" / APP_ID / "bridge-cert.pem"))
        status, body, headers = b.get("/Ping", origin=WWE)
        assert status == 200 and headers["access-control-allow-origin"] == WWE
    finally:
        _stop_group(p)

    r = agent_install.run("autostart", "off", env=env)
    assert r.returncode == 0 and not entry.exists(), r.stderr
