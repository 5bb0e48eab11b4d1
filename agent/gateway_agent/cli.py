"""`gateway-agent`: the WWE softphone connector on an agent's desktop.

  gateway-agent [--no-open]          serve the connector; open the phone page in
                                     the default browser when there is a desktop
  gateway-agent trust-cert [--dry-run]
                                     put the bridge certificate into your trust store
  gateway-agent autostart on|off [--dry-run]
                                     start (or no longer start) it at login
  gateway-agent --version

Settings come from AGENT_GATEWAY_WS, AGENT_ORIGINS, AGENT_LISTEN and
AGENT_CERT_DIR. Exit status 2 means it cannot start and says why (a bad
setting naming the variable, a certificate folder it cannot write, a port
already in use); 1 that an OS command failed. Ctrl-C stops the connector.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import ssl
import sys
import webbrowser
from typing import Optional, Sequence

from aiohttp import web

from gateway_agent import bridge, cert, desktop, platforms, settings as settings_mod, versions


class CannotStart(Exception):
    """The connector cannot start for a cause the user can fix (exit 2)."""


def _say(text: str, err: bool = False) -> None:
    print(f"gateway-agent: {text}", file=sys.stderr if err else sys.stdout, flush=True)


def _has_browser(plat, ctx: platforms.Context) -> bool:
    if not plat.has_desktop(ctx):
        return False
    try:
        webbrowser.get()
        return True
    except webbrowser.Error:
        return False


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[str]:
    """Set `stop` on SIGINT/SIGTERM where the loop can watch signals (POSIX), and
    on Ctrl-Break on Windows. Elsewhere Ctrl-C arrives as KeyboardInterrupt from
    asyncio.run, which main() turns into a clean stop. Returns what it watches."""
    watched = []
    for name in ("SIGINT", "SIGTERM"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            loop.add_signal_handler(sig, stop.set)
            watched.append(name)
        except (NotImplementedError, RuntimeError, ValueError):
            pass        # Windows' event loops: no add_signal_handler
    sigbreak = getattr(signal, "SIGBREAK", None)
    if sigbreak is not None and not watched:
        signal.signal(sigbreak, lambda *_: loop.call_soon_threadsafe(stop.set))
        watched.append("SIGBREAK")
    return watched


async def serve(cfg: settings_mod.Settings, ctx: ssl.SSLContext, open_browser: bool) -> None:
    app = bridge.build_app(cfg)
    runner = web.AppRunner(app, access_log_format='%a "%r" %s %Tfs')
    await runner.setup()
    site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port, ssl_context=ctx)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        where = f"{cfg.listen_host}:{cfg.listen_port}"
        if exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
            raise CannotStart(f"AGENT_LISTEN: {where} is already in use (another gateway-agent "
                              "running? stop it, or set AGENT_LISTEN to a free port)") from exc
        raise CannotStart(f"AGENT_LISTEN: cannot listen on {where}: {exc.strerror or exc}") from exc
    _say(f"ready: connector {cfg.base_url} phone page {cfg.page_url} "
         f"gateway {cfg.gateway_ws} origins {' '.join(cfg.origins) or '(none)'}")
    if open_browser:
        webbrowser.open(cfg.page_url)
    stop = asyncio.Event()
    stop_on_signals(asyncio.get_running_loop(), stop)
    try:
        await stop.wait()
    finally:
        print("gateway-agent: stopping", file=sys.stderr, flush=True)
        await runner.cleanup()


def _serve_command(no_open: bool) -> int:
    logging.basicConfig(level=logging.INFO, format="gateway-agent: %(message)s", stream=sys.stdout)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    cfg = settings_mod.load()
    if not (bridge.STATIC_DIR / "phone.js").exists():
        _say(f"the phone bundle {bridge.STATIC_DIR / 'phone.js'} is missing: this copy was not "
             "built (make agent-package builds the wheel; agent/install.sh a developer's tree)", err=True)
        return 1
    if not cfg.origins:
        _say("warning: AGENT_ORIGINS is empty: WWE (cross-origin) cannot call the connector", err=True)
    try:
        files = cert.ensure(cfg.cert_dir, cfg.listen_host)
    except OSError as exc:
        raise CannotStart(f"AGENT_CERT_DIR: cannot write the certificate to {cfg.cert_dir}: "
                          f"{exc.strerror or exc}") from exc
    _say(f"certificate {files.cert} ({'new' if files.created else 'reused'}, valid until "
         f"{files.not_after:%Y-%m-%d}; SPKI sha256 {files.spki_sha256})")
    if files.created:
        _say("a new certificate: browsers trust it after `gateway-agent trust-cert`")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    plat = platforms.for_platform()
    open_browser = not no_open and _has_browser(plat, platforms.Context.current())
    if not no_open and not open_browser:
        _say(f"no desktop browser here: open {cfg.page_url} yourself")
    try:
        asyncio.run(serve(cfg, ctx, open_browser))
    except KeyboardInterrupt:
        pass    # Ctrl-C where the loop cannot watch signals (Windows): serve() cleaned up
    return 0


def _trust_command(dry_run: bool) -> int:
    cfg = settings_mod.load()
    plat = platforms.for_platform()
    pem = cfg.cert_dir / cert.CERT_FILE
    if not dry_run:
        # The certificate the connector serves (made now if it has not run yet).
        try:
            pem = cert.ensure(cfg.cert_dir, cfg.listen_host).cert
        except OSError as exc:
            raise CannotStart(f"AGENT_CERT_DIR: cannot write the certificate to {cfg.cert_dir}: "
                              f"{exc.strerror or exc}") from exc
    return desktop.trust_cert(plat, platforms.Context.current(), pem, dry_run=dry_run)


def _autostart_command(state: str, dry_run: bool) -> int:
    settings_mod.load()     # a bad setting fails now, not at the next login
    plat = platforms.for_platform()
    return desktop.autostart(plat, platforms.Context.current(), state == "on",
                             desktop.launcher_argv(), settings_mod.given(os.environ), dry_run=dry_run)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway-agent", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    p.add_argument("--version", action="store_true", help="print the versions and exit")
    p.add_argument("--no-open", action="store_true", help="do not open the phone page in the browser")
    p.add_argument("--open", action="store_true", help=argparse.SUPPRESS)   # make agent's old flag
    sub = p.add_subparsers(dest="command", metavar="{serve,trust-cert,autostart}")
    s = sub.add_parser("serve", help="serve the connector (the default)")
    s.add_argument("--no-open", action="store_true", default=argparse.SUPPRESS,
                   help="do not open the phone page in the browser")
    t = sub.add_parser("trust-cert", help="trust the bridge certificate in your trust store")
    t.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = sub.add_parser("autostart", help="start the connector at login, or no longer")
    a.add_argument("state", choices=("on", "off"))
    a.add_argument("--dry-run", action="store_true", help="print the entry, write nothing")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.version:
        print(versions.line())
        return 0
    try:
        if args.command == "trust-cert":
            return _trust_command(args.dry_run)
        if args.command == "autostart":
            return _autostart_command(args.state, args.dry_run)
        return _serve_command(args.no_open)
    except settings_mod.SettingsError as exc:
        _say(f"configuration error: {exc}", err=True)
        return 2
    except CannotStart as exc:
        _say(str(exc), err=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
