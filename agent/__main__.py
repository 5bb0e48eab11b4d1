"""`python -m agent` (what `make agent` runs): the WWE connector bridge in the foreground.

Validates AGENT_* settings (an error names the variable and exits 2), makes or
reuses the local certificate, serves HTTPS on AGENT_LISTEN, and with --open
opens the phone page in the system browser when there is one. Ctrl-C or
SIGTERM stops it.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import webbrowser

from aiohttp import web

from agent import bridge, cert, settings as settings_mod


def _has_browser() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
        return True
    except webbrowser.Error:
        return False


async def serve(cfg: settings_mod.Settings, ctx: ssl.SSLContext, open_browser: bool) -> None:
    app = bridge.build_app(cfg)
    runner = web.AppRunner(app, access_log_format='%a "%r" %s %Tfs')
    await runner.setup()
    site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port, ssl_context=ctx)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"agent: AGENT_LISTEN: cannot listen on {cfg.listen_host}:{cfg.listen_port}: "
                         f"{exc.strerror or exc}")
    print(f"agent: ready: connector {cfg.base_url} phone page {cfg.page_url} "
          f"gateway {cfg.gateway_ws} origins {' '.join(cfg.origins) or '(none)'}", flush=True)
    if open_browser:
        if _has_browser():
            webbrowser.open(cfg.page_url)
        else:
            print(f"agent: no system browser here: open {cfg.page_url} yourself", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("agent: stopping", file=sys.stderr, flush=True)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--open", action="store_true",
                        help="open the phone page in the system browser, if there is one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="agent: %(message)s", stream=sys.stdout)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    try:
        cfg = settings_mod.load()
    except settings_mod.SettingsError as exc:
        print(f"agent: configuration error: {exc}", file=sys.stderr)
        return 2
    if not (bridge.DIST_DIR / "phone.js").exists():
        print("agent: the phone bundle agent/web/dist/phone.js is missing: run agent/install.sh",
              file=sys.stderr)
        return 1
    if not cfg.origins:
        print("agent: warning: AGENT_ORIGINS is empty: WWE (cross-origin) cannot call the bridge",
              file=sys.stderr)
    files = cert.ensure(cfg.cert_dir, cfg.listen_host)
    print(f"agent: certificate {files.cert} ({'new' if files.created else 'reused'}, valid until "
          f"{files.not_after:%Y-%m-%d}; SPKI sha256 {files.spki_sha256})", flush=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    try:
        asyncio.run(serve(cfg, ctx, args.open))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
