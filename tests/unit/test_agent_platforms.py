"""The connector's OS layer (agent/gateway_agent/platforms/, desktop.py) for
Windows, macOS and Linux, with the OS faked: the exact trust-store commands
and autostart files each platform gets, computed and "run" on any machine
(the command runner is a fake; files go to a temporary home)."""
from __future__ import annotations

import asyncio
import io
import plistlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from gateway_agent import cli, desktop, settings
from gateway_agent.platforms import APP_ID, Context, for_platform, linux, macos, windows

PACKAGE = Path(cli.__file__).resolve().parent
SETTINGS = {"AGENT_GATEWAY_WS": "wss://gw.example.com:8443", "AGENT_ORIGINS": "https://wwe.example.com"}


class FakeRunner:
    """Records each command; answers with the given exit codes in turn (0 after),
    or as if the program were not installed."""

    def __init__(self, codes: tuple[int, ...] = (), missing: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.codes = list(codes)
        self.missing = missing

    def __call__(self, argv):
        self.calls.append(list(argv))
        if self.missing:
            raise FileNotFoundError(argv[0])
        rc = self.codes.pop(0) if self.codes else 0
        return subprocess.CompletedProcess(list(argv), rc, stdout="", stderr="boom" if rc else "")


def trust(plat, ctx, pem, runner=None, dry_run=False):
    out, err = io.StringIO(), io.StringIO()
    rc = desktop.trust_cert(plat, ctx, pem, runner=runner or FakeRunner(), dry_run=dry_run,
                            out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def autostart(plat, ctx, on, argv=("/opt/agent/bin/gateway-agent",), settings_=SETTINGS, dry_run=False):
    out, err = io.StringIO(), io.StringIO()
    rc = desktop.autostart(plat, ctx, on, list(argv), dict(settings_), dry_run=dry_run, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ config folder
def test_default_cert_dir_is_the_users_config_folder(tmp_path):
    appdata = tmp_path / "AppData-Roaming"
    assert windows.config_dir(Context({"APPDATA": str(appdata)}, tmp_path)) == appdata / APP_ID
    assert windows.config_dir(Context({}, tmp_path)) == tmp_path / "AppData" / "Roaming" / APP_ID
    assert macos.config_dir(Context({}, tmp_path)) == \
        tmp_path / "Library" / "Application Support" / "webrtc-gateway-agent"
    assert linux.config_dir(Context({"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, tmp_path)) == \
        tmp_path / "xdg" / "webrtc-gateway-agent"
    assert linux.config_dir(Context({}, tmp_path)) == tmp_path / ".config" / "webrtc-gateway-agent"
    # The XDG spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    assert linux.config_dir(Context({"XDG_CONFIG_HOME": "rel/dir"}, tmp_path)) == \
        tmp_path / ".config" / "webrtc-gateway-agent"


def test_settings_default_cert_dir_follows_the_platform_not_the_cwd(tmp_path):
    cfg = settings.load({"HOME": str(tmp_path)})
    assert cfg.cert_dir == for_platform().config_dir(Context({"HOME": str(tmp_path)}, tmp_path))
    assert not str(cfg.cert_dir).startswith(str(Path.cwd()))
    assert settings.default_cert_dir({"APPDATA": str(tmp_path)}, tmp_path, platform="win32") == \
        tmp_path / APP_ID
    assert settings.default_cert_dir({}, tmp_path, platform="darwin") == \
        tmp_path / "Library" / "Application Support" / APP_ID
    assert settings.load({"HOME": str(tmp_path), "AGENT_CERT_DIR": str(tmp_path / "x")}).cert_dir == \
        tmp_path / "x"
    assert settings.given({"AGENT_ORIGINS": " https://a.b ", "AGENT_LISTEN": "", "OTHER": "1"}) == \
        {"AGENT_ORIGINS": "https://a.b"}


def test_platform_chosen_by_sys_platform():
    assert for_platform("win32") is windows
    assert for_platform("darwin") is macos
    assert for_platform("linux") is linux


def test_desktop_detection():
    assert windows.has_desktop(Context({}, Path("/h")))
    assert macos.has_desktop(Context({}, Path("/h")))
    assert not macos.has_desktop(Context({"SSH_CONNECTION": "10.0.0.1 1 10.0.0.2 22"}, Path("/h")))
    assert not linux.has_desktop(Context({}, Path("/h")))
    assert linux.has_desktop(Context({"WAYLAND_DISPLAY": "wayland-0"}, Path("/h")))
    assert linux.has_desktop(Context({"DISPLAY": ":0"}, Path("/h")))


# ------------------------------------------------------------------ trust-cert
def test_trust_cert_windows_user_root_store(tmp_path):
    pem = tmp_path / "bridge-cert.pem"
    runner = FakeRunner()
    rc, out, _ = trust(windows, Context({"APPDATA": str(tmp_path)}, tmp_path), pem, runner)
    assert rc == 0
    assert runner.calls == [["certutil", "-addstore", "-user", "Root", str(pem)]]
    assert "confirm" in out and "done" in out


def test_trust_cert_macos_login_keychain(tmp_path):
    pem = tmp_path / "bridge-cert.pem"
    runner = FakeRunner()
    rc, out, _ = trust(macos, Context({}, tmp_path), pem, runner)
    assert rc == 0
    assert runner.calls == [["security", "add-trusted-cert", "-r", "trustRoot", "-k",
                             str(tmp_path / "Library" / "Keychains" / "login.keychain-db"), str(pem)]]


def test_trust_cert_linux_creates_the_nss_db_then_adds(tmp_path):
    pem = tmp_path / "bridge-cert.pem"
    db = tmp_path / ".pki" / "nssdb"
    runner = FakeRunner()
    rc, _, _ = trust(linux, Context({}, tmp_path), pem, runner)
    assert rc == 0 and db.is_dir()
    assert runner.calls == [
        ["certutil", "-d", f"sql:{db}", "-N", "--empty-password"],
        ["certutil", "-d", f"sql:{db}", "-A", "-t", "P,,", "-n", APP_ID, "-i", str(pem)],
    ]


def test_trust_cert_linux_replaces_an_older_certificate(tmp_path):
    pem = tmp_path / "bridge-cert.pem"
    db = tmp_path / ".pki" / "nssdb"
    db.mkdir(parents=True)
    (db / "cert9.db").write_bytes(b"")
    runner = FakeRunner(codes=(255, 0))       # nothing to delete yet: that step may fail
    rc, _, err = trust(linux, Context({}, tmp_path), pem, runner)
    assert rc == 0, err
    assert runner.calls == [
        ["certutil", "-d", f"sql:{db}", "-D", "-n", APP_ID],
        ["certutil", "-d", f"sql:{db}", "-A", "-t", "P,,", "-n", APP_ID, "-i", str(pem)],
    ]


@pytest.mark.parametrize("plat,expected", [
    (windows, "certutil -addstore -user Root {pem}"),
    (macos, "security add-trusted-cert -r trustRoot -k {home}/Library/Keychains/login.keychain-db {pem}"),
    (linux, "certutil -d sql:{home}/.pki/nssdb -A -t P,, -n webrtc-gateway-agent -i {pem}"),
])
def test_trust_cert_dry_run_prints_the_exact_command_and_runs_nothing(tmp_path, plat, expected):
    pem = tmp_path / "bridge-cert.pem"
    runner = FakeRunner()
    rc, out, _ = trust(plat, Context({"APPDATA": str(tmp_path)}, tmp_path), pem, runner, dry_run=True)
    assert rc == 0 and runner.calls == []
    assert expected.format(pem=pem, home=tmp_path) in out.splitlines(), out
    assert not (tmp_path / ".pki").exists()
    if plat is linux:
        assert f"mkdir -p {tmp_path}/.pki/nssdb" in out.splitlines()
        assert f"certutil -d sql:{tmp_path}/.pki/nssdb -N --empty-password" in out.splitlines()


def test_trust_cert_dry_run_quotes_paths_for_the_platform(tmp_path):
    pem = tmp_path / "My Documents" / "bridge-cert.pem"
    _, out, _ = trust(windows, Context({}, tmp_path), pem, dry_run=True)
    assert f'certutil -addstore -user Root "{pem}"' in out.splitlines()
    _, out, _ = trust(macos, Context({}, tmp_path), pem, dry_run=True)
    assert shlex.split(out.splitlines()[-2])[-1] == str(pem)


def test_trust_cert_failures_say_why(tmp_path):
    pem = tmp_path / "bridge-cert.pem"
    rc, _, err = trust(windows, Context({}, tmp_path), pem, FakeRunner(codes=(1,)))
    assert rc == 1 and "certutil failed (exit 1): boom" in err
    rc, _, err = trust(linux, Context({}, tmp_path), pem, FakeRunner(missing=True))
    assert rc == 2 and "certutil not found" in err and "libnss3-tools" in err
    rc, _, err = trust(macos, Context({}, tmp_path), pem, FakeRunner(missing=True))
    assert rc == 2 and "security not found" in err


# ------------------------------------------------------------------ autostart
def test_autostart_windows_startup_folder_cmd(tmp_path):
    ctx = Context({"APPDATA": str(tmp_path)}, tmp_path)
    exe = r"C:\Users\José Ñ\agent\Scripts\gateway-agent.exe"
    rc, out, err = autostart(windows, ctx, True, [exe], {**SETTINGS, "AGENT_LISTEN": "127.0.0.1:8001"})
    assert rc == 0, err
    path = tmp_path / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / f"{APP_ID}.cmd"
    assert path.read_bytes() == (
        "@echo off\r\n"
        "chcp 65001 >nul\r\n"
        "rem Agent phone connector (WWE): started at login (gateway-agent autostart on).\r\n"
        "rem Remove it with: gateway-agent autostart off\r\n"
        'set "AGENT_GATEWAY_WS=wss://gw.example.com:8443"\r\n'
        'set "AGENT_ORIGINS=https://wwe.example.com"\r\n'
        'set "AGENT_LISTEN=127.0.0.1:8001"\r\n'
        f'start "Agent phone connector (WWE)" /min "{exe}"\r\n').encode("utf-8")
    assert str(path) in out
    rc, out, _ = autostart(windows, ctx, False)
    assert rc == 0 and not path.exists() and "removed" in out


def test_autostart_windows_cmd_escapes_percent_and_refuses_quotes(tmp_path):
    ctx = Context({"APPDATA": str(tmp_path)}, tmp_path)
    rc, _, _ = autostart(windows, ctx, True, ["C:\\a\\gateway-agent.exe"],
                         {"AGENT_GATEWAY_WS": "wss://gw.example.com/ws%20x"})
    assert rc == 0
    text = windows.autostart_file(ctx).read_text(encoding="utf-8")
    assert 'set "AGENT_GATEWAY_WS=wss://gw.example.com/ws%%20x"' in text
    rc, _, err = autostart(windows, ctx, True, ["C:\\a\\gateway-agent.exe"],
                           {"AGENT_ORIGINS": 'https://a.b" & calc'})
    assert rc == 2 and "AGENT_ORIGINS" in err and ".cmd" in err


def test_autostart_macos_launch_agent(tmp_path):
    ctx = Context({}, tmp_path)
    rc, _, err = autostart(macos, ctx, True, ["/Users/ana/agent/bin/gateway-agent"])
    assert rc == 0, err
    path = tmp_path / "Library" / "LaunchAgents" / f"{APP_ID}.plist"
    plist = plistlib.loads(path.read_bytes())
    log = str(tmp_path / "Library" / "Logs" / f"{APP_ID}.log")
    assert plist == {
        "Label": APP_ID,
        "ProgramArguments": ["/Users/ana/agent/bin/gateway-agent"],
        "EnvironmentVariables": SETTINGS,
        "RunAtLoad": True,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }
    assert autostart(macos, ctx, False)[0] == 0 and not path.exists()


def test_autostart_linux_xdg_entry(tmp_path):
    ctx = Context({"XDG_CONFIG_HOME": str(tmp_path / "cfg")}, tmp_path)
    rc, _, err = autostart(linux, ctx, True, ["/home/ana/agent env/bin/gateway-agent"])
    assert rc == 0, err
    path = tmp_path / "cfg" / "autostart" / f"{APP_ID}.desktop"
    assert path.read_text() == (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Agent phone connector (WWE)\n"
        "Comment=WWE softphone connector and web phone (gateway-agent autostart on)\n"
        "Exec=env AGENT_GATEWAY_WS=wss://gw.example.com:8443 AGENT_ORIGINS=https://wwe.example.com"
        ' "/home/ana/agent env/bin/gateway-agent"\n'
        "Terminal=false\n"
        "X-GNOME-Autostart-enabled=true\n")
    rc, out, _ = autostart(linux, ctx, False)
    assert rc == 0 and not path.exists()
    rc, out, _ = autostart(linux, ctx, False)
    assert rc == 0 and "already off" in out


@pytest.mark.parametrize("arg,quoted", [
    ("/opt/agent/bin/gateway-agent", "/opt/agent/bin/gateway-agent"),
    ("/a b/gateway-agent", '"/a b/gateway-agent"'),
    ("AGENT_ORIGINS=https://a.b https://c.d", '"AGENT_ORIGINS=https://a.b https://c.d"'),
    ("x$HOME", '"x\\\\$HOME"'),          # \$ inside quotes, then the string escape doubles \
    ('say "hi"', '"say \\\\"hi\\\\""'),
    ("50%", "50%%"),
    ("C:\\dir", '"C:\\\\\\\\dir"'),     # a literal backslash: four in the file
])
def test_desktop_exec_quoting(arg, quoted):
    assert linux.exec_quote(arg) == quoted


def test_desktop_exec_line_reads_back(tmp_path):
    """What a desktop session does with Exec (string unescape, %% -> %, then a
    shell-like split, here by sh itself) gives back exactly what was written."""
    argv = ["/a b/$x/gateway-agent"]
    values = {"AGENT_ORIGINS": "https://a.b, https://c.d", "AGENT_GATEWAY_WS": "wss://gw/p%41"}
    line = linux.autostart_entry(Context({}, tmp_path), argv, values).decode().split("Exec=")[1]
    line = line.split("\n")[0]
    unescaped = re.sub(r"\\(.)", lambda m: {"s": " ", "n": "\n", "t": "\t", "r": "\r"}.get(
        m.group(1), m.group(1)), line).replace("%%", "%")
    words = subprocess.run(["sh", "-c", f"printf '%s\\0' {unescaped}"], capture_output=True,
                           text=True, check=True).stdout.split("\0")[:-1]
    assert words == ["env", *(f"{k}={v}" for k, v in values.items()), *argv]


def test_autostart_dry_run_writes_nothing(tmp_path):
    for plat in (windows, macos, linux):
        ctx = Context({"APPDATA": str(tmp_path / "w")}, tmp_path / plat.NAME)
        rc, out, _ = autostart(plat, ctx, True, dry_run=True)
        assert rc == 0 and "would write" in out and not plat.autostart_file(ctx).exists()
        rc, out, _ = autostart(plat, ctx, False, dry_run=True)
        assert rc == 0 and "nothing to remove" in out


def test_autostart_unwritable_folder_exits_2(tmp_path):
    blocker = tmp_path / "cfg"
    blocker.write_text("a file where the folder should be")
    rc, _, err = autostart(linux, Context({"XDG_CONFIG_HOME": str(blocker)}, tmp_path), True)
    assert rc == 2 and "cannot write" in err and str(blocker) in err


def test_launcher_is_the_installed_command(tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    assert desktop.launcher_argv(str(python)) == [str(python), "-m", "gateway_agent"]
    (tmp_path / "bin" / "gateway-agent").write_text("")
    assert desktop.launcher_argv(str(python)) == [str(tmp_path / "bin" / "gateway-agent")]
    scripts = tmp_path / "Scripts"
    scripts.mkdir()
    (scripts / "python.exe").write_text("")
    (scripts / "gateway-agent.exe").write_text("")
    assert desktop.launcher_argv(str(scripts / "python.exe")) == [str(scripts / "gateway-agent.exe")]


# ------------------------------------------------------------------ no POSIX assumptions
def test_stop_without_signal_support():
    """Windows' event loops have no add_signal_handler: the connector still
    starts (Ctrl-C then arrives as KeyboardInterrupt, handled in main)."""
    class NoSignals:
        def add_signal_handler(self, *a):
            raise NotImplementedError

        def call_soon_threadsafe(self, *a):
            pass
    watched = cli.stop_on_signals(NoSignals(), asyncio.Event())
    assert "SIGINT" not in watched

    async def posix():
        loop = asyncio.get_running_loop()
        try:
            return cli.stop_on_signals(loop, asyncio.Event())
        finally:
            for sig in ("SIGINT", "SIGTERM"):
                loop.remove_signal_handler(getattr(__import__("signal"), sig))
    assert asyncio.run(posix()) == ["SIGINT", "SIGTERM"]


def test_connector_code_has_no_posix_only_calls():
    banned = re.compile(r"\bos\.(fork|kill|killpg|setsid|getuid|geteuid|getpgid)\b|"
                        r"^\s*(import|from)\s+(fcntl|pwd|grp|termios|resource)\b|['\"]/tmp/", re.M)
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert not banned.search(text), f"{path}: {banned.search(text).group(0)!r}"
        if path.name != "cli.py":
            assert "add_signal_handler" not in text, path


# ------------------------------------------------------------------ the command line
def test_cli_version(capsys):
    assert cli.main(["--version"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("gateway-agent 0.1.0 (JsSIP ") and "aiohttp" in line


def test_cli_autostart_and_trust_refuse_bad_settings(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AGENT_ORIGINS", "*")
    assert cli.main(["autostart", "on", "--dry-run"]) == 2
    assert cli.main(["trust-cert", "--dry-run"]) == 2
    assert capsys.readouterr().err.count("AGENT_ORIGINS") == 2


def test_cli_trust_dry_run_changes_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("AGENT_CERT_DIR", raising=False)
    assert cli.main(["trust-cert", "--dry-run"]) == 0
    out = capsys.readouterr().out
    pem = tmp_path / ".config" / APP_ID / "bridge-cert.pem"
    assert f"certutil -d sql:{tmp_path}/.pki/nssdb -A -t P,, -n {APP_ID} -i {pem}" in out.splitlines()
    assert not (tmp_path / ".config").exists() and not (tmp_path / ".pki").exists()
