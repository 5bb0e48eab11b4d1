"""gwctl: the on-call engineer's view of a running gateway.

    gwctl registrations        agents registered (Redis gw:reg:*)
    gwctl calls                live calls: Kamailio dialogs joined with rtpengine sessions
    gwctl ws                   WebSocket connections (Kamailio websocket module), with their agent
    gwctl doctor               check every dependency and the usual faults; exit 1 if one fails
    gwctl bans                 sources banned after failed authentications (gw/bans.py)
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
"""
from __future__ import annotations

import argparse
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlparse, urlunparse

from gw import bans, capacity, cnfilter
from kemi import bindings, media
from kemi import settings as settings_mod
from kemi.media import Op, Side
from kemi.ng import NgClient, NgError
from kemi.settings import HostPort, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCTOR_PREFIX = "gwctl-doctor-"      # call-ids of doctor's sample sessions (hidden by `calls`)
PHONES = ("local", "lan", "internet")
CHECKS = ("settings", "redis", "rtpengine", "kamailio", "pbx", "media_address", "comfort_noise",
          "media_ports", "capacity")
DLG_STATES = {"1": "unconfirmed", "2": "early", "3": "answered", "4": "confirmed", "5": "ended"}


class GwctlError(RuntimeError):
    """Something gwctl needs does not answer; the message says what and where."""


# ====================================================================== helpers
def redact_url(url: str) -> str:
    """The URL without its password (what gwctl prints)."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urlunparse(parsed._replace(netloc=netloc))


def age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain aligned columns: [(header, key)]."""
    cells = [[h for h, _ in columns]] + [[str(r.get(k, "") if r.get(k) is not None else "-")
                                          for _, k in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def local_ip_toward(host: str, port: int) -> str:
    """Our source address toward host (a connected UDP socket sends nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


def is_local_address(ip: str) -> bool:
    """Is ip an address of this host (can a socket bind it)?"""
    try:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


_PRIVATE = [ipaddress.ip_network(n) for n in
            ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")]


def address_kind(ip: str) -> str:
    """loopback, unspecified, link-local, private (RFC 1918, CGNAT, ULA) or public."""
    addr = ipaddress.ip_address(ip)
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if any(addr in net for net in _PRIVATE):
        return "private"
    return "public"


REACHABLE = {
    "local": {"loopback", "link-local", "private", "public"},
    "lan": {"private", "public"},
    "internet": {"public"},
}


# ===================================================================== Kamailio
def ctl_socket(arg: Optional[str], env: dict[str, str]) -> str:
    """kamcmd's -s value: --ctl (unix:PATH, tcp:HOST:PORT or a path), else
    $GW_RUN_DIR/kamailio_ctl, else <repo>/.run/kamailio_ctl (gw.run's choice)."""
    if arg:
        return arg if re.match(r"^(unix|tcp|udp):", arg) else f"unix:{arg}"
    run_dir = Path(env.get("GW_RUN_DIR") or ROOT / ".run")
    return f"unix:{run_dir.resolve() / 'kamailio_ctl'}"


def parse_kamcmd(text: str) -> list[Any]:
    """kamcmd's printout: each value of the RPC reply in turn, a struct as a
    '{' ... '}' block of 'key: value' lines (a nested struct as 'key: {' ... '}').
    Returns the values: dicts for structs (repeated keys become lists), strings otherwise."""
    lines = text.splitlines()
    pos = 0

    def block() -> dict:
        nonlocal pos
        out: dict[str, Any] = {}
        repeated: set[str] = set()
        while pos < len(lines):
            line = lines[pos].strip()
            pos += 1
            if line == "}":
                return out
            if not line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            item: Any = block() if value == "{" else value
            if name in repeated:
                out[name].append(item)
            elif name in out:
                out[name] = [out[name], item]
                repeated.add(name)
            else:
                out[name] = item
        return out

    values: list[Any] = []
    while pos < len(lines):
        line = lines[pos].strip()
        pos += 1
        if line == "{":
            values.append(block())
        elif line:
            values.append(line)
    return values


class Kamailio:
    def __init__(self, ctl: str, timeout: float = 5.0) -> None:
        self.ctl = ctl
        self.timeout = timeout

    def rpc(self, *command: str) -> list[Any]:
        kamcmd = shutil.which("kamcmd") or ("/usr/sbin/kamcmd" if Path("/usr/sbin/kamcmd").exists() else None)
        if kamcmd is None:
            raise GwctlError("kamcmd not found (Debian package kamailio): cannot reach Kamailio's ctl socket")
        if self.ctl.startswith("unix:") and not Path(self.ctl[5:]).exists():
            raise GwctlError(f"no Kamailio control socket at {self.ctl[5:]}: is the gateway running? "
                             "(pass --ctl, or set GW_RUN_DIR as for the gateway)")
        try:
            proc = subprocess.run([kamcmd, "-s", self.ctl, *command], capture_output=True, text=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise GwctlError(f"kamcmd {' '.join(command)}: no answer on {self.ctl} "
                             f"within {self.timeout}s") from None
        out = proc.stdout.strip()
        if proc.returncode != 0 or out.startswith("error:"):
            reason = (out or proc.stderr.strip() or f"exit {proc.returncode}").splitlines()[-1]
            raise GwctlError(f"kamcmd -s {self.ctl} {' '.join(command)}: {reason}")
        return parse_kamcmd(proc.stdout)


# ======================================================================== Redis
def redis_client(url: str, timeout: float = 2.0):
    import redis

    if url.startswith("redis+sentinel://"):
        from kemi import store
        return store.connect(url)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def registrations(cfg: Settings) -> list[dict]:
    """Every binding in Redis, with the seconds it has left (TTL)."""
    import redis

    try:
        client = redis_client(cfg.redis_url)
        keys = sorted(client.scan_iter(match=bindings.key("*"), count=1000))
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
            pipe.ttl(k)
        values = pipe.execute() if keys else []
    except redis.RedisError as exc:
        raise GwctlError(f"Redis {redact_url(cfg.redis_url)}: {exc}") from None
    rows = []
    for i, k in enumerate(keys):
        raw, ttl = values[2 * i], values[2 * i + 1]
        if raw is None:          # expired between SCAN and GET
            continue
        name = k.decode() if isinstance(k, bytes) else k
        try:
            rec = asdict(bindings.Binding.from_json(raw))
        except (ValueError, TypeError) as exc:
            rec = {"user": name[len(bindings.KEY_PREFIX):], "error": f"unreadable record: {exc}"}
        rec["expires_left"] = ttl
        rows.append(rec)
    rows.sort(key=lambda r: str(r.get("user")))
    return rows


# ============================================================== live: ws, calls
_WS_LINE = re.compile(r"^(?P<remote>\S+) -> (?P<local>\S+) \(state: (?P<state>[^,]+),\s*"
                      r"last used (?P<idle>-?\d+)s ago, sub-protocol: (?P<proto>[^)]*)\)")


def ws_connections(cfg: Settings, kam: Kamailio, with_agents: bool = True) -> dict:
    """ws.dump, each connection joined with the agent registered over it on this node."""
    dump = kam.rpc("ws.dump")
    data = dump[0] if dump and isinstance(dump[0], dict) else {}
    conns = data.get("connections") or {}
    info = data.get("info") or {}
    by_conid: dict[int, str] = {}
    note = ""
    try:
        for rec in registrations(cfg) if with_agents else ():
            if rec.get("node") == str(cfg.sip_listen) and "conid" in rec:
                by_conid[int(rec["conid"])] = rec["user"]
    except GwctlError as exc:
        note = f"agents unknown: {exc}"
    rows = []
    for conid, text in (conns.items() if isinstance(conns, dict) else []):
        m = _WS_LINE.match(text if isinstance(text, str) else "")
        row: dict[str, Any] = {"id": int(conid) if str(conid).isdigit() else conid}
        if m:
            row.update(remote=m["remote"], local=m["local"], state=m["state"].strip(),
                       idle_s=int(m["idle"]), subprotocol=m["proto"])
        else:
            row["raw"] = text
        row["user"] = by_conid.get(row["id"]) if isinstance(row["id"], int) else None
        rows.append(row)
    rows.sort(key=lambda r: str(r["id"]).zfill(12))
    return {"connections": rows, "truncated": info.get("truncated") == "yes",
            "total": int(info.get("wscounter", len(rows)) or 0), "note": note}


def _leg(tag: dict) -> dict:
    medias = tag.get("medias") or []
    first = medias[0] if medias else {}
    streams = first.get("streams") or []
    rtp = streams[0] if streams else {}
    endpoint = rtp.get("endpoint") or {}
    protocol = first.get("protocol", "")
    return {
        "tag": tag.get("tag", ""),
        "side": "phone" if "SAVP" in protocol else "pbx" if protocol else "?",
        "protocol": protocol,
        "peer": f"{endpoint['address']}:{endpoint['port']}" if endpoint.get("address") else "",
        "local": f"{rtp.get('local address', '')}:{rtp.get('local port', '')}",
        "packets": sum(int((s.get("stats") or {}).get("packets", 0)) for m in medias
                       for s in (m.get("streams") or [])),
    }


def media_sessions(cfg: Settings) -> tuple[dict[str, dict], list[str]]:
    """call-id -> rtpengine session summary, over every GW_RTPENGINE; and errors."""
    sessions: dict[str, dict] = {}
    errors = []
    for engine in cfg.rtpengines:
        ng = NgClient(engine.host, engine.port, timeout=2.0)
        try:
            ids = ng.list_calls()
        except (NgError, OSError) as exc:
            errors.append(f"rtpengine udp:{engine}: {exc}")
            continue
        for cid in ids:
            if cid.startswith((DOCTOR_PREFIX, cnfilter.PROBE_PREFIX)):
                continue
            try:
                q = ng.query(cid)
            except (NgError, OSError):
                continue          # ended meanwhile
            legs = [_leg(t) for t in (q.get("tags") or {}).values() if isinstance(t, dict)]
            sessions[cid] = {"engine": f"udp:{engine}", "created": q.get("created"),
                             "legs": sorted(legs, key=lambda leg: leg["side"] != "phone")}
    return sessions, errors


def dialogs(kam: Kamailio) -> list[dict]:
    return [d for d in kam.rpc("dlg.list") if isinstance(d, dict)]


def live_calls(cfg: Settings, kam: Kamailio) -> dict:
    sessions, errors = media_sessions(cfg)
    try:
        dlgs = dialogs(kam)
    except GwctlError as exc:
        errors.append(f"kamailio: {exc}")
        dlgs = []
    now = time.time()
    rows = []
    seen = set()
    ws = str(cfg.ws_listen)
    for d in dlgs:
        cid = d.get("call-id", "")
        seen.add(cid)
        caller = d.get("caller") if isinstance(d.get("caller"), dict) else {}
        start = int(d.get("start_ts") or 0) or int(d.get("init_ts") or 0)
        row = {
            "call_id": cid,
            "direction": "outbound" if str(caller.get("socket", "")).endswith(ws) else "inbound",
            "state": DLG_STATES.get(str(d.get("state")), str(d.get("state"))),
            "from": d.get("from_uri", ""),
            "to": d.get("to_uri", ""),
            "age_s": int(now - start) if start else None,
            "media": sessions.get(cid),
            "note": "" if cid in sessions else "no rtpengine session",
        }
        rows.append(row)
    for cid, sess in sessions.items():
        if cid in seen:
            continue
        created = sess.get("created")
        rows.append({"call_id": cid, "direction": "", "state": "", "from": "", "to": "",
                     "age_s": int(now - created) if created else None, "media": sess,
                     "note": "media only: no dialog on this node (another node's call, or a leaked session)"})
    return {"calls": rows, "errors": errors}


def _media_text(sess: Optional[dict]) -> str:
    if not sess:
        return "-"
    return " | ".join(f"{leg['side']} {leg['peer'] or '?'} {leg['packets']}p" for leg in sess["legs"])


# ====================================================================== probes
def sip_options(host: str, port: int, timeout: float = 2.0) -> tuple[Optional[str], str]:
    """Send SIP OPTIONS over UDP; (status line of the first final answer, or
    None with the reason). Any answer, even 404, proves a SIP stack is there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        return None, f"cannot resolve {host}: {exc}"
    family, _, _, _, addr = infos[0]
    call_id = f"gwctl-{secrets.token_hex(8)}"
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        lhost, lport = s.getsockname()[:2]
        via_host = f"[{lhost}]" if ":" in lhost else lhost
        target = f"[{host}]" if ":" in host else host
        msg = (f"OPTIONS sip:{target}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {via_host}:{lport};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:gwctl@{via_host}>;tag={secrets.token_hex(4)}\r\n"
               f"To: <sip:{target}:{port}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
               "User-Agent: gwctl\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n").encode()
        deadline = time.monotonic() + timeout
        resend = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None, f"no answer within {timeout:g}s"
            try:
                if now >= resend:            # UDP: send again every 0.5 s (RFC 3261 T1)
                    s.send(msg)
                    resend = now + 0.5
                s.settimeout(max(min(resend, deadline) - now, 0.01))
                data = s.recv(65535)
            except socket.timeout:
                continue
            except ConnectionRefusedError:
                return None, "ICMP port unreachable: nothing listens on that UDP port"
            except OSError as exc:
                return None, str(exc)
            text = data.decode("utf-8", "replace")
            first = text.split("\r\n", 1)[0]
            m = re.match(r"^SIP/2\.0 (\d{3})", first)
            if m and call_id in text and int(m.group(1)) >= 200:
                return first, ""


def redis_check(cfg: Settings) -> dict:
    import redis

    where = redact_url(cfg.redis_url)
    try:
        client = redis_client(cfg.redis_url, timeout=1.0)
        client.ping()
        count = sum(1 for _ in client.scan_iter(match=bindings.key("*"), count=1000))
        return _ok("redis", f"{where} answers PING; {count} registration(s)", data={"registrations": count})
    except redis.AuthenticationError as exc:
        return _fail("redis", f"{where} refuses our credentials: {exc}",
                     "Put Redis's password in GW_REDIS_URL (redis://:PASSWORD@HOST:PORT/DB), "
                     "the same as its requirepass.")
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            return _fail("redis", f"{where} refuses our credentials: {exc}",
                         "Put Redis's password in GW_REDIS_URL (redis://:PASSWORD@HOST:PORT/DB).")
        return _fail("redis", f"{where}: {exc}", "See Redis's log.")
    except redis.RedisError as exc:
        return _fail("redis", f"{where} does not answer: {exc}",
                     "Start Redis (docker compose up -d redis / systemctl start redis-server) or fix "
                     "GW_REDIS_URL. Until it answers, REGISTERs get 503 and calls to agents fail.")


def rtpengine_check(engine: HostPort) -> dict:
    ng = NgClient(engine.host, engine.port, timeout=1.0)
    target = f"udp:{engine}"
    try:
        ok = ng.request({"command": "ping"}).get("result") == "pong"
    except (NgError, OSError) as exc:
        return _fail("rtpengine", f"no answer to an ng ping: {exc}",
                     f"Start rtpengine (docker compose up -d rtpengine / systemctl start rtpengine) with "
                     f"listen-ng={engine}, or fix GW_RTPENGINE. Until it answers, calls get "
                     "503 Media Relay Unavailable.", target=target)
    if not ok:
        return _fail("rtpengine", "answered ng ping without pong", "Is that port really rtpengine's "
                     "listen-ng? Fix GW_RTPENGINE.", target=target)
    sessions = None
    try:
        cur = ng.statistics().get("statistics", {}).get("currentstatistics", {})
        sessions = int(cur.get("sessionsown", 0)) + int(cur.get("sessionsforeign", 0))
    except (NgError, OSError, ValueError):
        pass
    detail = "answers ng ping" + (f"; {sessions} session(s)" if sessions is not None else "")
    return _ok("rtpengine", detail, target=target, data={"sessions": sessions})


def kamailio_check(cfg: Settings, kam: Kamailio) -> dict:
    target = f"udp:{cfg.sip_listen}"
    status, why = sip_options(cfg.sip_listen.host, cfg.sip_listen.port, timeout=2.0)
    if status is None:
        return _fail("kamailio", f"the gateway does not answer SIP OPTIONS at {cfg.sip_listen}: {why}",
                     "Start the gateway (make run / docker compose up -d gateway) and read its log; "
                     "GW_SIP_LISTEN must be the address it listens on.", target=target)
    try:
        up = kam.rpc("core.uptime")
        uptime = up[0].get("uptime") if up and isinstance(up[0], dict) else "?"
    except GwctlError as exc:
        return _warn("kamailio", f"answers OPTIONS ({status}), but its control socket does not: {exc}",
                     "gwctl calls/ws need Kamailio's ctl socket: pass --ctl or set GW_RUN_DIR as for "
                     "the gateway.", target=target)
    return _ok("kamailio", f"answers OPTIONS ({status}); up {uptime}s", target=target)


def pbx_check(cfg: Settings) -> dict:
    target = f"udp:{cfg.pbx}"
    status, why = sip_options(cfg.pbx.host, cfg.pbx.port, timeout=2.0)
    if status is None:
        return _fail("pbx", f"GW_PBX={cfg.pbx} does not answer SIP OPTIONS over UDP: {why}",
                     "Check the PBX runs and listens on UDP there (Asterisk: a pjsip transport with "
                     "protocol=udp and that bind address; Genesys SIP Server: its UDP listener), that "
                     "GW_PBX is right, and that no firewall drops UDP between gateway and PBX. Until then "
                     "REGISTERs and calls from agents time out.", target=target)
    return _ok("pbx", f"answers OPTIONS: {status}", target=target)


# ------------------------------------------------------------------ STUN / RTP
_STUN_MAGIC = 0x2112A442


def stun_binding(ufrag_remote: str, ufrag_local: str, pwd_remote: str) -> tuple[bytes, bytes]:
    """An ICE connectivity check (RFC 8445 7.2.2) as a phone sends it: USERNAME,
    PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY (key: the answerer's ice-pwd), FINGERPRINT."""
    txid = os.urandom(12)

    def attr(t: int, v: bytes) -> bytes:
        return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)

    body = (attr(0x0006, f"{ufrag_remote}:{ufrag_local}".encode())
            + attr(0x0024, struct.pack("!I", 1853824767))
            + attr(0x802A, os.urandom(8)))
    head = struct.pack("!HHI", 0x0001, len(body) + 24, _STUN_MAGIC) + txid
    body += attr(0x0008, hmac.new(pwd_remote.encode(), head + body, hashlib.sha1).digest())
    head = struct.pack("!HHI", 0x0001, len(body) + 8, _STUN_MAGIC) + txid
    crc = (binascii.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
    body += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", 0x0001, len(body), _STUN_MAGIC) + txid + body, txid


def _sample_phone_sdp(ip: str, ufrag: str, pwd: str) -> str:
    """What Chrome offers (CN 13 included, as Chromium does)."""
    fp = ":".join(f"{b:02X}" for b in os.urandom(32))
    return "\r\n".join([
        "v=0", f"o=- {random.randrange(10**17, 10**18)} 2 IN IP4 {ip}", "s=-", "t=0 0",
        "a=group:BUNDLE 0", "a=msid-semantic: WMS gwctl",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 13 126", f"c=IN IP4 {ip}", "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp 2122260223 {ip} 9 typ host generation 0",
        f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {fp}", "a=setup:actpass", "a=mid:0", "a=sendrecv", "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:13 CN/8000",
        "a=rtpmap:126 telephone-event/8000",
    ]) + "\r\n"


def _sample_pbx_sdp(ip: str, port: int) -> str:
    """What Asterisk offers or answers with comfort noise enabled."""
    return "\r\n".join([
        "v=0", f"o=pbx {random.randrange(10**6, 10**7)} 1 IN IP4 {ip}", "s=Asterisk", f"c=IN IP4 {ip}",
        "t=0 0", f"m=audio {port} RTP/AVP 0 8 13 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16",
        "a=ptime:20", "a=sendrecv",
    ]) + "\r\n"


def sdp_addresses(sdp: str) -> list[str]:
    """Connection and ICE candidate addresses, in order, without repeats."""
    found = re.findall(r"^c=IN IP[46] (\S+)", sdp, re.M)
    found += re.findall(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", sdp, re.M)
    return list(dict.fromkeys(found))


def sdp_cn(sdp: str) -> list[str]:
    """What in this SDP still negotiates comfort noise: PT 13 on an m= line, or a CN rtpmap."""
    hits = [f"m=audio payload 13" for m in re.findall(r"^m=audio \d+ \S+ ([\d ]+)", sdp, re.M)
            if "13" in m.split()]
    hits += re.findall(r"^a=rtpmap:\d+ CN/\d+[^\r\n]*", sdp, re.M)
    return hits


def _sdp_port(sdp: str) -> Optional[int]:
    m = re.search(r"^m=audio (\d+)", sdp, re.M)
    return int(m.group(1)) if m else None


@dataclass
class MediaProbe:
    """doctor's sample sessions through one rtpengine, with the gateway's flags:
    outbound (the phone offers, the PBX answers), inbound (the PBX offers), and a
    plain RTP session between two sockets of ours to see rtpengine relay packets."""

    engine: str
    error: str = ""
    to_phone: dict[str, str] = field(default_factory=dict)
    to_pbx: dict[str, str] = field(default_factory=dict)
    bound: str = ""                         # the address rtpengine really listens on
    phone_port: Optional[int] = None        # rtpengine's port facing the phone (outbound call)
    ports: list[int] = field(default_factory=list)
    stun_reply: str = ""                    # our ICE check to phone_port: success / error / ''
    relay_ports: tuple[int, int] = (0, 0)   # rtpengine's ports facing our two RTP sockets
    relayed: dict[str, bool] = field(default_factory=dict)   # "a->b"/"b->a": packet came out


def _local_address(q: dict) -> str:
    for tag in (q.get("tags") or {}).values():
        for m in tag.get("medias") or []:
            for stream in m.get("streams") or []:
                if stream.get("local address"):
                    return stream["local address"]
    return ""


def _plain_sdp(ip: str, port: int) -> str:
    return (f"v=0\r\no=gwctl 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


def probe_media(engine: HostPort, timeout: float = 1.0,
                cn: media.CnBlock = media.CnBlock.TRANSCODE) -> MediaProbe:
    """Run the sample sessions, probe rtpengine's ports from here, delete the sessions.
    Probes go to the address rtpengine binds (from `query`), never to the advertised
    one, and relay only between our own sockets (no relay error in rtpengine's stats)."""
    probe = MediaProbe(engine=f"udp:{engine}")
    ng = NgClient(engine.host, engine.port, timeout=2.0)
    me = local_ip_toward(engine.host, engine.port)
    fam = "IP6" if ":" in me else "IP4"
    out_id, in_id, relay_id = (DOCTOR_PREFIX + secrets.token_hex(6) for _ in range(3))
    ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
    family = socket.AF_INET6 if ":" in me else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    phone_sock, sock_a, sock_b = socks

    def ng_call(command: str, call_id: str, sdp: str, op: Op, receiver: Side, sender: Side,
                **tags: str) -> str:
        # Exactly what kemi/app.py hands rtpengine: the gateway's flags for its
        # CN path, and a PBX's SDP as the gateway rewrites it first.
        sdp = media.rtpengine_sdp(sdp, sender, cn)
        params = media.ng_params(media.flags(op, receiver, sender, cn))
        reply = ng.request({"command": command, "call-id": call_id, "sdp": sdp,
                            "received-from": [fam, me], **tags, **params})
        return reply.get("sdp", "")

    try:
        for sock in socks:
            sock.bind((me, 0))
        port_a, port_b = sock_a.getsockname()[1], sock_b.getsockname()[1]
        try:
            # Outbound: the agent's browser offers (with CN), the PBX answers (with CN).
            probe.to_pbx["outbound offer"] = ng_call(
                "offer", out_id, _sample_phone_sdp(me, ufrag, pwd), Op.OFFER, Side.PBX, Side.PHONE,
                **{"from-tag": "phone"})
            probe.to_phone["outbound answer"] = ng_call(
                "answer", out_id, _sample_pbx_sdp(me, port_a), Op.ANSWER, Side.PHONE, Side.PBX,
                **{"from-tag": "phone", "to-tag": "pbx"})
            # Inbound: the PBX offers (with CN) toward the agent.
            probe.to_phone["inbound offer"] = ng_call(
                "offer", in_id, _sample_pbx_sdp(me, port_a), Op.OFFER, Side.PHONE, Side.PBX,
                **{"from-tag": "pbx"})
            # Plain RTP both ways between our sockets a and b (the gateway's PBX-side flags).
            to_b = ng_call("offer", relay_id, _plain_sdp(me, port_a), Op.OFFER, Side.PBX, Side.PBX,
                           **{"from-tag": "a"})
            to_a = ng_call("answer", relay_id, _plain_sdp(me, port_b), Op.ANSWER, Side.PBX, Side.PBX,
                           **{"from-tag": "a", "to-tag": "b"})
        except (NgError, OSError) as exc:
            probe.error = str(exc)
            return probe
        for sdp in (*probe.to_phone.values(), *probe.to_pbx.values(), to_a, to_b):
            port = _sdp_port(sdp)
            if port:
                probe.ports.append(port)
        answer = probe.to_phone["outbound answer"]
        probe.phone_port = _sdp_port(answer)
        try:
            probe.bound = _local_address(ng.query(out_id))
        except (NgError, OSError):
            pass
        probe.bound = probe.bound or (sdp_addresses(answer) or [""])[0]
        if not probe.bound:
            return probe
        # Phone side: an ICE connectivity check, as the browser's first packet.
        r_ufrag = re.search(r"^a=ice-ufrag:(\S+)", answer, re.M)
        r_pwd = re.search(r"^a=ice-pwd:(\S+)", answer, re.M)
        if r_ufrag and r_pwd and probe.phone_port:
            packet, txid = stun_binding(r_ufrag.group(1), ufrag, r_pwd.group(1))
            probe.stun_reply = _stun_exchange(phone_sock, (probe.bound, probe.phone_port), packet, txid,
                                              timeout)
        # Relay: b sends to the port rtpengine gave b, a must receive it; and back.
        to_a_port, to_b_port = _sdp_port(to_a) or 0, _sdp_port(to_b) or 0
        probe.relay_ports = (to_a_port, to_b_port)
        probe.relayed["b->a"] = _relay_once(sock_b, sock_a, (probe.bound, to_b_port), timeout)
        probe.relayed["a->b"] = _relay_once(sock_a, sock_b, (probe.bound, to_a_port), timeout)
        return probe
    finally:
        for cid in (out_id, in_id, relay_id):
            try:
                ng.request({"command": "delete", "call-id": cid})
            except (NgError, OSError):
                pass
        for sock in socks:
            sock.close()


def _relay_once(src: socket.socket, dst: socket.socket, to: tuple[str, int], timeout: float) -> bool:
    """Send RTP from src to rtpengine at `to`; did dst receive it back from rtpengine?"""
    if not to[1]:
        return False
    ssrc = random.randrange(1, 2**32)
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        rtp = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xff" * 160
        try:
            src.sendto(rtp, to)
            dst.settimeout(0.2)
            data = dst.recv(2048)
        except socket.timeout:
            continue
        except OSError:
            time.sleep(0.05)
            continue
        # rtpengine may rewrite SSRC and sequence (its CN decoder sits on this path):
        # any RTP packet it sends us on that leg proves the relay.
        if len(data) >= 12 and data[0] >> 6 == 2:
            return True
    return False


def _stun_exchange(sock: socket.socket, addr: tuple[str, int], packet: bytes, txid: bytes,
                   timeout: float) -> str:
    """'success' / 'error NNN' for the STUN response with our txid, or '' if none came."""
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        try:
            if now >= next_send:
                sock.sendto(packet, addr)
                next_send = now + 0.25
            sock.settimeout(max(min(next_send, deadline) - now, 0.01))
            data = sock.recv(2048)
        except socket.timeout:
            continue
        except OSError:
            return ""
        if len(data) >= 20 and data[8:20] == txid:
            mtype = struct.unpack("!H", data[:2])[0]
            return "success" if mtype == 0x0101 else f"error response {mtype:#06x}"
    return ""


def bind_sample(ip: str, low: int, high: int, count: int = 8) -> dict:
    """Can ports of the range be bound on ip? A sample: both ends and random ones."""
    ports = sorted({low, high, *random.sample(range(low, high + 1), min(count - 2, high - low + 1))})
    result: dict[str, Any] = {"ip": ip, "sampled": len(ports), "free": 0, "in_use": [], "error": ""}
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for port in ports:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((ip, port))
            result["free"] += 1
        except OSError as exc:
            if exc.errno == 98:          # EADDRINUSE
                result["in_use"].append(port)
            else:
                result["error"] = f"{exc.strerror} ({ip})"
                break
    return result


# ---------------------------------------------------------- media interpretations
def media_address_check(cfg: Settings, probe: MediaProbe, phones: str) -> dict:
    target = probe.engine
    if probe.error and "port" not in probe.error.lower():
        return _fail("media_address", f"rtpengine refused the gateway's sample offer: {probe.error}",
                     "Read rtpengine's log: it must accept the gateway's flags (rtpengine/FLAGS.md); "
                     "calls get 503 until it does.", target=target)
    if probe.error:
        return _skip("media_address", "no sample session (see media_ports)", target=target)
    advertised = []
    for sdp in probe.to_phone.values():
        advertised += [a for a in sdp_addresses(sdp) if a not in advertised]
    if not advertised:
        return _fail("media_address", "the SDP toward the phone carries no address",
                     "rtpengine's interface has no address: check its interface= setting.", target=target)
    kinds = {a: address_kind(a) for a in advertised}
    bad = {a: k for a, k in kinds.items() if k not in REACHABLE[phones]}
    shown = ", ".join(f"{a} ({k})" for a, k in kinds.items())
    data = {"advertised": advertised, "kinds": kinds, "bound": probe.bound, "phones": phones,
            "media_ip": cfg.media_ip}
    if bad:
        where = {"local": "on this host", "lan": "on your network", "internet": "on the internet"}[phones]
        return _fail(
            "media_address",
            f"rtpengine advertises {shown} to phones in c= and ICE candidates; phones {where} "
            f"cannot reach {', '.join(bad)}",
            "Give rtpengine an address the phones reach: its interface= (make run: GW_MEDIA_IP) on "
            "a public address, or behind 1:1 NAT interface=PRIVATE!PUBLIC (compose: "
            "RTPENGINE_ADVERTISED_IP in deploy/.env). If the phones really are "
            f"{'on this host' if phones != 'local' else 'elsewhere'}, say so: gwctl doctor "
            f"--phones {'local' if phones != 'local' else 'lan'}.",
            target=target, data=data)
    return _ok("media_address", f"rtpengine advertises {shown} to phones; reachable for phones "
               f"{phones} (--phones)", target=target, data=data)


def gateway_cn_path(kam: Kamailio) -> Optional[str]:
    """How the running gateway keeps CN from phones: 'filter' or 'transcode'
    (its KEMI app sets $shv(gw_cn) at start), None when Kamailio cannot say."""
    try:
        reply = kam.rpc("pv.shvGet", "gw_cn")
    except GwctlError:
        return None
    value = reply[0].get("value") if reply and isinstance(reply[0], dict) else None
    return value if value in ("filter", "transcode") else None


@dataclass
class CnEvidence:
    """What comfort_noise looks at: CN in the SDP toward the phone (doctor's
    sample sessions), PT 13 sent through rtpengine on the plain-relay path (the
    filter's job) and, when that passes, on the transcoder path."""

    path: Optional[str]                                 # the gateway's, from Kamailio
    relay: Optional[cnfilter.CnProbe] = None
    transcoder: Optional[cnfilter.CnProbe] = None


def probe_cn(engine: HostPort, path: Optional[str]) -> CnEvidence:
    ev = CnEvidence(path, relay=cnfilter.probe(engine, media.CnBlock.FILTER, call_prefix=DOCTOR_PREFIX))
    if ev.relay.relayed and not ev.relay.cn_blocked:
        ev.transcoder = cnfilter.probe(engine, media.CnBlock.TRANSCODE, call_prefix=DOCTOR_PREFIX)
    return ev


def _cn_fix(cfg: Settings, then: str) -> str:
    low, high = cfg.media_ports
    return (f"Install the CN filter in front of rtpengine's ports: as root on its host, "
            f"rtpengine/cn-filter.sh install {low} {high} (nftables, CAP_NET_ADMIN; compose: the "
            "rtpengine container installs it at start with cap_add NET_ADMIN: check its log; make run "
            f"installs it when run as root). {then} (rtpengine/FLAGS.md)")


def comfort_noise_check(cfg: Settings, probe: MediaProbe, ev: CnEvidence) -> dict:
    """CN never reaches a phone: no CN in the SDP a phone receives, and PT 13
    sent through rtpengine dropped, by the nftables filter in front of it (the
    cheap path) or by rtpengine's transcoder (the fallback, a warning)."""
    target = probe.engine
    if probe.error:
        return _skip("comfort_noise", "no sample session (see media_address/media_ports)", target=target)
    found = {f"{name} to the phone": hits for name, sdp in probe.to_phone.items() if (hits := sdp_cn(sdp))}
    data: dict[str, Any] = {"gateway_cn_path": ev.path}
    if found:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items())
        return _fail("comfort_noise", f"comfort noise (CN, PT 13) is negotiated toward the phone: {what}",
                     "Browsers drop audio on CN. The gateway's CN flags (kemi/media.py: codec-strip=CN "
                     "with the CN filter, else codec-consume-CN on offers to the phone and "
                     "codec-strip=full + codec-transcode=CN on offers to the PBX; rtpengine/FLAGS.md) are "
                     "not in effect: run this version's kemi/ and an rtpengine built with transcoding "
                     "support (10.5 as in deploy/rtpengine), which the fallback flags need.",
                     target=target, data={**data, "found": found})
    return _cn_packets(cfg, target, ev, data)


def _cn_packets(cfg: Settings, target: str, ev: CnEvidence, data: dict[str, Any]) -> dict:
    """comfort_noise, the RTP half: where PT 13 sent through rtpengine ended up,
    read against the CN path the gateway says it takes."""
    relay = ev.relay
    assert relay is not None
    data["relay_probe"] = relay.summary()
    if not relay.relayed:
        return _skip("comfort_noise", f"PT 13 not tested: rtpengine relayed no audio ({relay.summary()}; "
                     "see media_ports)", target=target, data=data)
    sdp_ok = "no CN in the SDP toward the phone; "
    if relay.cn_blocked:
        if ev.path == "transcode":
            return _warn("comfort_noise", sdp_ok + "PT 13 is dropped in front of rtpengine (nftables "
                         f"filter: {relay.summary()}), but the gateway still sends every call through "
                         "rtpengine's transcoder (it started before the filter worked)",
                         "Restart the gateway (make run, or docker compose restart gateway): it then "
                         "sees the filter and relays calls plainly.", target=target, data=data)
        return _ok("comfort_noise", sdp_ok + "PT 13 sent through rtpengine was dropped in front of it "
                   f"(nftables filter; {relay.summary()}); calls are plain relays", target=target, data=data)
    # PT 13 passed the plain relay: no filter (or it does not work).
    trans = ev.transcoder
    data["transcoder_probe"] = trans.summary() if trans else None
    missing = f"PT 13 sent through a plain-relay session came out of rtpengine ({relay.summary()})"
    if ev.path == "filter":
        return _fail("comfort_noise", missing + ": the CN filter in front of rtpengine is gone or not "
                     "working, and the gateway relays calls without the transcoder, so CN from the "
                     "PBX reaches the phones",
                     _cn_fix(cfg, "Or restart the gateway now: without a working filter it falls back "
                              "to rtpengine's transcoder."), target=target, data=data)
    if trans is None or not trans.cn_blocked:
        return _fail("comfort_noise", missing + "; rtpengine's transcoder did not stop it either "
                     f"({trans.summary() if trans else 'not tested'})",
                     _cn_fix(cfg, "The transcoder fallback needs rtpengine with transcoding (Debian's "
                              "rtpengine-daemon 10.5, deploy/rtpengine)."), target=target, data=data)
    how = ("the gateway uses rtpengine's transcoder" if ev.path == "transcode"
           else "the gateway's CN path is unknown (Kamailio did not say); with the default "
                "GW_CN_FILTER=auto it then uses rtpengine's transcoder")
    return _warn("comfort_noise", sdp_ok + missing + f": no CN filter in front of rtpengine; {how}, which "
                 f"keeps CN from phones ({trans.summary()}) at ~2.4x rtpengine CPU per call and without "
                 "kernel forwarding", _cn_fix(cfg, "Then restart the gateway: it sees the filter and relays "
                                             "calls plainly."), target=target, data=data)


def media_ports_check(cfg: Settings, probe: Optional[MediaProbe], engine: HostPort) -> dict:
    target = f"udp:{engine}"
    low, high = cfg.media_ports
    sample = bind_sample(cfg.media_ip, low, high) if is_local_address(cfg.media_ip) else None
    data: dict[str, Any] = {"range": f"{low}-{high}", "media_ip": cfg.media_ip, "bind_sample": sample}
    firewall_fix = (f"Open UDP {low}-{high} (GW_MEDIA_PORTS) toward rtpengine in the host firewall and any "
                    "security group (nft list ruleset / iptables -S / ufw status), and make sure nothing "
                    "else drops it on the way in.")
    if probe is None:
        if sample and sample["free"] == 0 and sample["in_use"]:
            return _fail("media_ports", f"rtpengine is down, and every sampled port of {low}-{high} on "
                         f"{cfg.media_ip} is taken by another program", "Give rtpengine a port range "
                         "nothing else uses (Asterisk's rtp.conf rtpstart/rtpend must not overlap).",
                         target=target, data=data)
        return _skip("media_ports", "rtpengine does not answer; ports not probed", target=target, data=data)
    data.update(ports=probe.ports, bound=probe.bound, stun_reply=probe.stun_reply,
                relay_ports=list(probe.relay_ports), relayed=probe.relayed)
    if probe.error:
        if "port" not in probe.error.lower():
            return _skip("media_ports", "no sample session (see media_address)", target=target, data=data)
        taken = f"; {len(sample['in_use'])}/{sample['sampled']} sampled ports in use on {cfg.media_ip}" \
            if sample else ""
        return _fail("media_ports", f"rtpengine could not allocate media ports: {probe.error}{taken}",
                     "rtpengine's port range is exhausted or taken by another program: give it a range "
                     f"of its own (port-min/port-max = GW_MEDIA_PORTS {low}-{high}; Asterisk's rtp.conf "
                     "must not overlap) and large enough (4 ports per call).", target=target, data=data)
    outside = sorted(p for p in probe.ports if not low <= p <= high)
    problems, fixes = [], []
    if outside:
        problems.append(f"rtpengine allocated port(s) {outside} outside GW_MEDIA_PORTS {low}-{high}")
        fixes.append("Make rtpengine's port-min/port-max and GW_MEDIA_PORTS (and the firewall rules "
                     "built from it) the same range.")
    closed = False
    if not probe.stun_reply:
        closed = True
        problems.append(f"no answer to an ICE check sent to {probe.bound}:{probe.phone_port} "
                        "(rtpengine's port toward the phone)")
    lost = [way for way, ok in probe.relayed.items() if not ok]
    if lost:
        closed = True
        a_port, b_port = probe.relay_ports
        problems.append(f"RTP sent to {probe.bound}:{b_port} and {probe.bound}:{a_port} was not relayed "
                        f"({', '.join(lost)} lost)")
    if closed:
        fixes.append(firewall_fix)
    if problems:
        return _fail("media_ports", "; ".join(problems), " ".join(fixes), target=target, data=data)
    extra = ""
    if sample and sample["error"]:
        extra = f"; GW_MEDIA_IP: {sample['error']}"
    elif sample and sample["in_use"]:
        extra = f"; {len(sample['in_use'])}/{sample['sampled']} sampled ports in use on {cfg.media_ip}"
    return _ok("media_ports", f"ports {sorted(probe.ports)} in {low}-{high}; rtpengine at {probe.bound} "
               f"answered an ICE check ({probe.stun_reply}) and relayed RTP both ways{extra}",
               target=target, data=data)


# ====================================================================== doctor
def _check(name: str, status: str, detail: str, fix: str = "", target: str = "",
           data: Optional[dict] = None) -> dict:
    return {"name": name, "status": status, "target": target, "detail": detail, "fix": fix,
            "data": data or {}}


def _ok(name: str, detail: str, **kw: Any) -> dict:
    return _check(name, "ok", detail, **kw)


def _fail(name: str, detail: str, fix: str, **kw: Any) -> dict:
    return _check(name, "fail", detail, fix, **kw)


def _warn(name: str, detail: str, fix: str, **kw: Any) -> dict:
    return _check(name, "warn", detail, fix, **kw)


def _skip(name: str, detail: str, **kw: Any) -> dict:
    return _check(name, "skip", detail, **kw)


def doctor(cfg: Settings, kam: Kamailio, phones: str = "internet",
           only: Optional[Iterable[str]] = None) -> list[dict]:
    """Every check, in dependency order. A check is skipped when what it needs is down."""
    want = set(only or CHECKS)
    checks: list[dict] = [_ok("settings", "GW_* settings are valid")] if "settings" in want else []
    if "redis" in want:
        checks.append(redis_check(cfg))
    media_checks = {"media_address", "comfort_noise", "media_ports"} & want
    for engine in cfg.rtpengines:
        up = rtpengine_check(engine)
        # shown when asked for, or when it is why the media checks asked for cannot run
        if "rtpengine" in want or (media_checks and up["status"] != "ok"):
            checks.append(up)
        if not media_checks:
            continue
        path = gateway_cn_path(kam) if "comfort_noise" in want else None
        cn = media.CnBlock.FILTER if path == "filter" else media.CnBlock.TRANSCODE
        probe = probe_media(engine, cn=cn) if up["status"] == "ok" else None
        if probe is None:
            for name in ("media_address", "comfort_noise"):
                if name in want:
                    checks.append(_skip(name, "rtpengine does not answer", target=f"udp:{engine}"))
        else:
            if "media_address" in want:
                checks.append(media_address_check(cfg, probe, phones))
            if "comfort_noise" in want:
                ev = probe_cn(engine, path) if not probe.error else CnEvidence(path)
                checks.append(comfort_noise_check(cfg, probe, ev))
        if "media_ports" in want:
            checks.append(media_ports_check(cfg, probe, engine))
    if "kamailio" in want:
        checks.append(kamailio_check(cfg, kam))
    if "pbx" in want:
        checks.append(pbx_check(cfg))
    if "capacity" in want:
        checks.append(capacity.check(cfg, kam))
    return checks


def _print_checks(checks: list[dict]) -> None:
    width = max((len(c["name"]) for c in checks), default=8)
    for c in checks:
        label = {"ok": "ok", "fail": "FAIL", "warn": "warn", "skip": "skip"}[c["status"]]
        target = f" [{c['target']}]" if c["target"] else ""
        print(f"{label:<5} {c['name']:<{width}}  {c['detail']}{target}")
        if c["fix"] and c["status"] in ("fail", "warn"):
            print(f"{'':<5} {'':<{width}}  fix: {c['fix']}")


# ======================================================================== main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gwctl", description=(__doc__ or "gwctl").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Settings: the gateway's GW_* environment (see README).")
    p.add_argument("--ctl", help="Kamailio ctl socket (unix:/path, tcp:host:port); default "
                   "$GW_RUN_DIR/kamailio_ctl, else <repo>/.run/kamailio_ctl")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("registrations", parents=[common], help="agents registered (Redis gw:reg:*)")
    sub.add_parser("calls", parents=[common], help="live calls (Kamailio dialogs + rtpengine sessions)")
    sub.add_parser("ws", parents=[common], help="WebSocket connections (Kamailio ws.dump)")
    bans.add_parsers(sub, common)
    doc = __doc__ or ""           # (python -OO drops docstrings)
    rule = doc[doc.find("doctor's reachability rule"):doc.find("Stdlib, redis")].strip() if doc else ""
    d = sub.add_parser("doctor", parents=[common], help="check dependencies and the usual faults",
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
            check = _fail("settings", str(exc), "Fix that variable in the gateway's environment "
                          "(deploy/.env, compose.yaml or your shell).")
            if args.json:
                print(json.dumps({"ok": False, "checks": [check]}, indent=2))
            else:
                _print_checks([check])
            return 1
        print(f"gwctl: configuration error: {exc}", file=sys.stderr)
        return 2
    kam = Kamailio(ctl_socket(args.ctl, env))
    try:
        if args.command == "registrations":
            return _cmd_registrations(cfg, kam, args.json)
        if args.command == "calls":
            return _cmd_calls(cfg, kam, args.json)
        if args.command == "ws":
            return _cmd_ws(cfg, kam, args.json)
        if args.command in ("bans", "unban"):
            return _cmd_bans(cfg, args)
        phones = args.phones or env.get("GWCTL_PHONES") or "internet"
        if phones not in PHONES:
            print(f"gwctl: GWCTL_PHONES={phones!r}: expected one of {', '.join(PHONES)}", file=sys.stderr)
            return 2
        only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
        unknown = set(only or ()) - set(CHECKS)
        if unknown:
            print(f"gwctl: unknown check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr)
            return 2
        checks = doctor(cfg, kam, phones, only)
        ok = all(c["status"] != "fail" for c in checks)
        if args.json:
            print(json.dumps({"ok": ok, "phones": phones, "checks": checks}, indent=2))
        else:
            _print_checks(checks)
            failed = sum(c["status"] == "fail" for c in checks)
            print("all good" if ok else f"{failed} check(s) failed")
        return 0 if ok else 1
    except GwctlError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}))
        print(f"gwctl: {exc}", file=sys.stderr)
        return 1


def _cmd_registrations(cfg: Settings, kam: Kamailio, as_json: bool) -> int:
    rows = registrations(cfg)
    # Is each phone's WebSocket still open? Only this node can tell, for its own phones.
    try:
        open_ids = {c["id"] for c in ws_connections(cfg, kam, with_agents=False)["connections"]}
    except GwctlError:
        open_ids = None
    for r in rows:
        if r.get("node") != str(cfg.sip_listen):
            r["ws"] = "other node"
        elif open_ids is not None:
            r["ws"] = "open" if r.get("conid") in open_ids else "gone"
        else:
            r["ws"] = None
    if as_json:
        print(json.dumps({"registrations": rows}, indent=2))
        return 0
    for r in rows:
        left = r.get("expires_left")
        r["left"] = age(left) if isinstance(left, int) and left >= 0 else "no expiry"
    print(table(rows, [("USER", "user"), ("RECEIVED", "received"), ("NODE", "node"),
                       ("EXPIRES IN", "left"), ("WS", "ws"), ("USER AGENT", "user_agent")]))
    print(f"{len(rows)} registration(s)")
    return 0


def _cmd_calls(cfg: Settings, kam: Kamailio, as_json: bool) -> int:
    result = live_calls(cfg, kam)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        rows = [{**c, "age": age(c["age_s"]) if c["age_s"] is not None else None,
                 "media_text": _media_text(c["media"])} for c in result["calls"]]
        print(table(rows, [("CALL-ID", "call_id"), ("DIR", "direction"), ("STATE", "state"),
                           ("FROM", "from"), ("TO", "to"), ("AGE", "age"), ("MEDIA", "media_text"),
                           ("NOTE", "note")]))
        print(f"{len(rows)} call(s)")
        for err in result["errors"]:
            print(f"warning: {err}", file=sys.stderr)
    return 1 if result["errors"] else 0


def _cmd_bans(cfg: Settings, args: argparse.Namespace) -> int:
    import redis

    try:
        client = redis_client(cfg.redis_url)
        if args.command == "bans":
            return bans.cmd_bans(client, args.json)
        return bans.cmd_unban(client, args.ip, args.dn, args.json)
    except redis.RedisError as exc:
        raise GwctlError(f"Redis {redact_url(cfg.redis_url)}: {exc}") from None


def _cmd_ws(cfg: Settings, kam: Kamailio, as_json: bool) -> int:
    result = ws_connections(cfg, kam)
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    print(table(result["connections"], [("ID", "id"), ("REMOTE", "remote"), ("LOCAL", "local"),
                                        ("STATE", "state"), ("IDLE S", "idle_s"), ("AGENT", "user")]))
    more = " (list truncated by Kamailio)" if result["truncated"] else ""
    print(f"{len(result['connections'])} connection(s){more}")
    if result["note"]:
        print(f"warning: {result['note']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
