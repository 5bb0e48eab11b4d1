"""gwctl: the on-call engineer's view of a running gateway.

    gwctl registrations        agents registered (Redis gw:reg:*)
    gwctl calls                live calls: Kamailio dialogs joined with rtpengine sessions,
                               per leg packets, loss, jitter and MOS so far
    gwctl call CALL-ID         one call's legs, addresses, codecs and quality figures
    gwctl ws                   WebSocket connections (Kamailio websocket module), with their agent
    gwctl doctor               check every dependency and the usual faults; exit 1 if one fails
    gwctl bans                 sources banned after failed authentications (gw/ctl/bans.py)
    gwctl unban IP [DN]        lift a ban

Every subcommand takes --json. Settings are the gateway's own GW_* variables
(kemi.settings), so run it with the gateway's environment (`docker compose exec
gateway gwctl doctor`, or the same shell as `make run`). Kamailio is reached
through its control socket with kamcmd: --ctl, else $GW_RUN_DIR/kamailio_ctl,
else <repo>/.run/kamailio_ctl (where gw.run puts it).

doctor's reachability rule (--phones, default $GWCTL_PHONES or "internet"):
the address rtpengine advertises to phones (c= and ICE candidates of the SDP a
phone receives) must be one the phones can reach:
    local     phones on this host (development): any address but 0.0.0.0/::
    lan       phones on a private network / VPN: not loopback, link-local or unspecified
    internet  phones anywhere: a public address only (not loopback, link-local,
              RFC 1918 10/8 172.16/12 192.168/16, CGNAT 100.64/10, IPv6 ULA fc00::/7)

Stdlib, redis and kemi's pure modules only. Never import kemi.metrics here: it
empties the Prometheus multiprocess directory on import.

Layout: a module per command (registrations.py, calls.py, call.py, ws.py, bans.py and the
doctor/ package, a module per check), kamailio.py (kamcmd and its printout),
output.py (text output), common.py (what they share).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Optional

from gw.ctl.common import GwctlError
from gw.ctl.doctor import CHECKS, PHONES, settings_failed
from gw.ctl.kamailio import Kamailio, ctl_socket
from kemi import settings as settings_mod

# The commands, in --help order: each module has HELP and command(cfg, kam, args, env).
COMMANDS = {name: importlib.import_module(f"gw.ctl.{module}")
            for name, module in (("registrations", "registrations"), ("calls", "calls"), ("call", "call"),
                                 ("ws", "ws"),
                                 ("bans", "bans"), ("unban", "bans"), ("doctor", "doctor"))}

# Everything the one-file gwctl offered as gw.ctl.<name>, for the tests and other code.
# ctl.doctor and ctl.registrations are the functions, as before; import their
# modules as `from gw.ctl.doctor import ...` (`import gw.ctl.doctor as m` gives the function).
from gw.ctl.calls import DLG_STATES, dialogs, live_calls, media_sessions  # noqa: E402,F401
from gw.ctl.common import DOCTOR_PREFIX, ROOT, redact_url, redis_client  # noqa: E402,F401
from gw.ctl.doctor.comfort_noise import comfort_noise_check, sdp_cn  # noqa: E402,F401
from gw.ctl.doctor.kamailio import kamailio_check  # noqa: E402,F401
from gw.ctl.doctor.media_address import REACHABLE, address_kind, media_address_check  # noqa: E402,F401
from gw.ctl.doctor.media_ports import bind_sample, is_local_address, media_ports_check  # noqa: E402,F401
from gw.ctl.doctor.media_probe import MediaProbe, local_ip_toward, probe_media, sdp_addresses  # noqa: E402,F401
from gw.ctl.doctor.pbx import pbx_check  # noqa: E402,F401
from gw.ctl.doctor.redis import redis_check  # noqa: E402,F401
from gw.ctl.doctor.rtpengine import rtpengine_check  # noqa: E402,F401
from gw.ctl.doctor.sip import sip_options  # noqa: E402,F401
from gw.ctl.doctor.stun import stun_binding  # noqa: E402,F401
from gw.ctl.kamailio import _WS_LINE, parse_kamcmd, ws_dump  # noqa: E402,F401
from gw.ctl.output import age, table  # noqa: E402,F401
from gw.ctl.ws import ws_connections  # noqa: E402,F401
# Last: these two bind the functions over the attributes their modules' import set.
from gw.ctl.doctor import doctor  # noqa: E402,F401
from gw.ctl.registrations import registrations  # noqa: E402,F401


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gwctl", description=(__doc__ or "gwctl").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Settings: the gateway's GW_* environment (see README).")
    p.add_argument("--ctl", help="Kamailio ctl socket (unix:/path, tcp:host:port); default "
                   "$GW_RUN_DIR/kamailio_ctl, else <repo>/.run/kamailio_ctl")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("registrations", "calls"):
        sub.add_parser(name, parents=[common], help=COMMANDS[name].HELP)
    COMMANDS["call"].add_parser(sub, common)
    sub.add_parser("ws", parents=[common], help=COMMANDS["ws"].HELP)
    COMMANDS["bans"].add_parsers(sub, common)
    doc = __doc__ or ""           # (python -OO drops docstrings)
    rule = doc[doc.find("doctor's reachability rule"):doc.find("Stdlib, redis")].strip() if doc else ""
    d = sub.add_parser("doctor", parents=[common], help=COMMANDS["doctor"].HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Checks: " + ", ".join(CHECKS) + ". Each failure says what to fix.\n"
                       "Exit 0 when no check fails, 1 otherwise (warn/skip do not fail).\n\n" + rule)
    d.add_argument("--phones", choices=PHONES, default=None,
                   help="where the agents' phones are, for the media address rule "
                   "(default $GWCTL_PHONES or internet)")
    d.add_argument("--only", help=f"comma list of checks: {','.join(CHECKS)}")
    return p


def main(argv: Optional[list[str]] = None, env: Optional[dict[str, str]] = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    try:
        cfg = settings_mod.load(env)
    except settings_mod.SettingsError as exc:
        if args.command == "doctor":
            return settings_failed(exc, args.json)
        print(f"gwctl: configuration error: {exc}", file=sys.stderr)
        return 2
    kam = Kamailio(ctl_socket(args.ctl, env))
    try:
        return COMMANDS[args.command].command(cfg, kam, args, env)
    except GwctlError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}))
        print(f"gwctl: {exc}", file=sys.stderr)
        return 1
