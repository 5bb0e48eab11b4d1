"""The comfort-noise filter in front of rtpengine: install it, check it with a
real packet, and decide how the gateway keeps CN (RTP PT 13) from the phones.

The filter is an nftables table of its own per rtpengine port range
(rtpengine/cn-filter.sh, the one place the rule is written; the production
rtpengine container runs the same script). Whether it works is never assumed:
`probe` sets up a plain-RTP session through the real rtpengine with the
gateway's own flags, sends PT 0 and PT 13 (marker bit clear and set) toward it,
and looks at what comes out. `make run` (gw/run.py) and the test fixtures call
`decide`, which installs the filter for an rtpengine they started, probes every
rtpengine, and falls back to rtpengine's transcoder when the filter is missing
(no CAP_NET_ADMIN, no nft) or does not work. gwctl doctor's comfort_noise check
uses `probe` too.
"""
from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from kemi import media
from kemi.media import CnBlock, Op, Side
from kemi.ng import NgClient, NgError
from kemi.settings import HostPort, Settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "rtpengine" / "cn-filter.sh"
PROBE_PREFIX = "gw-cn-probe-"       # call-ids of probe sessions
PT_CN = 13
# What the transcoder path costs, for the messages (issue 12, measured by make bench).
FALLBACK_NOTE = ("rtpengine decodes CN instead: every call engages its transcoder "
                 "(~2.4x rtpengine CPU per call, no kernel forwarding)")

Wrap = Callable[[list[str]], list[str]]


class FilterError(RuntimeError):
    """The filter could not be installed/removed; the message says why (nft's words)."""


def table_name(ports: tuple[int, int]) -> str:
    return f"gw_cn_{ports[0]}_{ports[1]}"


def _script(action: str, ports: tuple[int, int], owner: str = "", wrap: Optional[Wrap] = None,
            timeout: float = 10.0) -> str:
    argv = [str(SCRIPT), action, str(ports[0]), str(ports[1])] + ([owner] if owner else [])
    if wrap is not None:
        argv = wrap(argv)
    if shutil.which("nft") is None and wrap is None:
        raise FilterError("nft not found (Debian package nftables)")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FilterError(f"{SCRIPT.name} {action}: {exc}") from None
    if proc.returncode != 0:
        err = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
        err = err.replace("netlink: Error: cache initialization failed: ", "")
        if "Operation not permitted" in err:
            err += " (needs CAP_NET_ADMIN)"
        raise FilterError(f"nft: {err}")
    return proc.stdout


def install(ports: tuple[int, int], owner: str, wrap: Optional[Wrap] = None) -> str:
    """Create or replace the table for this port range; returns its name."""
    _script("install", ports, owner, wrap)
    return table_name(ports)


def remove(ports: tuple[int, int], wrap: Optional[Wrap] = None) -> None:
    _script("remove", ports, wrap=wrap)


def ruleset(ports: tuple[int, int], owner: str = "") -> str:
    return _script("show", ports, owner)


def prune_stale(wrap: Optional[Wrap] = None) -> list[str]:
    """Remove gw_cn_* tables whose owner comment names a pid that is gone (a
    `make run` or test session that was killed before it could clean up).
    Tables without a pid (the rtpengine container's) are never touched."""
    run = (lambda argv: wrap(argv)) if wrap else (lambda argv: argv)
    try:
        listing = subprocess.run(run(["nft", "list", "tables", "inet"]), capture_output=True,
                                 text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    removed = []
    for name in re.findall(r"^table inet (gw_cn_(\d+)_(\d+))$", listing, re.M):
        table, low, high = name
        try:
            text = subprocess.run(run(["nft", "list", "table", "inet", table]), capture_output=True,
                                  text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r'comment "[^"]*owner: [^"]*\bpid (\d+)', text)
        if m and not _alive(int(m.group(1))):
            try:
                remove((int(low), int(high)), wrap)
                removed.append(table)
            except FilterError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------ probe
@dataclass
class CnProbe:
    """PT 0 and PT 13 sent by a 'PBX' socket through one rtpengine session, and
    what its 'phone' socket received, per payload type."""
    engine: str
    cn: CnBlock
    error: str = ""
    target: str = ""                       # where the PBX packets went (rtpengine's port)
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)

    @property
    def relayed(self) -> bool:
        return self.received.get(0, 0) > 0

    @property
    def cn_blocked(self) -> bool:
        """Audio went through and no PT 13 did."""
        return not self.error and self.relayed and not self.received.get(PT_CN, 0)

    def summary(self) -> str:
        if self.error:
            return f"no probe session: {self.error}"
        got = ", ".join(f"PT {pt}: {n}" for pt, n in sorted(self.received.items())) or "nothing"
        sent = ", ".join(f"{k}: {n}" for k, n in self.sent.items())
        return f"sent {sent} to {self.target}; the phone side got {got}"


def local_ip_toward(host: str, port: int) -> str:
    """Our source address toward host (a connected UDP socket sends nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


def _sdp(ip: str, port: int, pts: tuple[int, ...]) -> str:
    names = {0: "PCMU/8000", 13: "CN/8000", 101: "telephone-event/8000"}
    fam = "IP6" if ":" in ip else "IP4"
    return (f"v=0\r\no=gw-cn-probe 1 1 IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}\r\n"
            + "".join(f"a=rtpmap:{pt} {names[pt]}\r\n" for pt in pts) + "a=sendrecv\r\n")


def bound_address(q: dict) -> str:
    """The address rtpengine really listens on, from a `query` of one of its calls."""
    for tag in (q.get("tags") or {}).values():
        for m in tag.get("medias") or []:
            for stream in m.get("streams") or []:
                if stream.get("local address"):
                    return stream["local address"]
    return ""


def probe(engine: HostPort, cn: CnBlock = CnBlock.FILTER, timeout: float = 1.0,
          call_prefix: str = PROBE_PREFIX) -> CnProbe:
    """One plain-RTP session through rtpengine with the gateway's flags for `cn`
    (the 'phone' offers, the 'PBX' answers with CN 13 declared, as Asterisk
    does): the PBX sends PT 0, PT 13 and PT 13 with the marker bit, ending with
    PT 0; once the last PT 0 is out of rtpengine, any PT 13 before it would be
    too. The session is deleted before our sockets close (no ICMP errors in
    rtpengine's statistics)."""
    res = CnProbe(engine=f"udp:{engine}", cn=cn)
    ng = NgClient(engine.host, engine.port, timeout=2.0)
    try:
        me = local_ip_toward(engine.host, engine.port)
    except OSError as exc:
        res.error = f"no route to rtpengine: {exc}"
        return res
    family = socket.AF_INET6 if ":" in me else socket.AF_INET
    phone, pbx = socket.socket(family, socket.SOCK_DGRAM), socket.socket(family, socket.SOCK_DGRAM)
    call_id = call_prefix + secrets.token_hex(6)
    fam = "IP6" if family == socket.AF_INET6 else "IP4"

    def ng_call(command: str, sdp: str, sender: Side, **tags: str) -> str:
        op = Op(command)
        params = media.ng_params(media.flags(op, Side.PBX, Side.PBX, cn))
        reply = ng.request({"command": command, "call-id": call_id, "received-from": [fam, me],
                            "sdp": media.rtpengine_sdp(sdp, sender, cn), **tags, **params})
        return reply.get("sdp", "")

    try:
        for s in (phone, pbx):
            s.bind((me, 0))
        try:
            to_pbx = ng_call("offer", _sdp(me, phone.getsockname()[1], (0, 13, 101)), Side.PHONE,
                             **{"from-tag": "phone"})
            ng_call("answer", _sdp(me, pbx.getsockname()[1], (0, 13, 101)), Side.PBX,
                    **{"from-tag": "phone", "to-tag": "pbx"})
            bound = bound_address(ng.query(call_id)) or me
        except (NgError, OSError) as exc:
            res.error = str(exc)
            return res
        port = re.search(r"^m=audio (\d+)", to_pbx, re.M)
        if not port:
            res.error = "rtpengine's offer has no audio port"
            return res
        res.target = f"{bound}:{port.group(1)}"
        _exchange(pbx, phone, (bound, int(port.group(1))), res, timeout)
        return res
    finally:
        try:
            ng.request({"command": "delete", "call-id": call_id})
        except (NgError, OSError):
            pass
        phone.close()
        pbx.close()


def _exchange(pbx: socket.socket, phone: socket.socket, to: tuple[str, int], res: CnProbe,
              timeout: float) -> None:
    ssrc = random.randrange(1, 2**32)
    plan = [(0, False), (PT_CN, False), (PT_CN, True)] * 3 + [(0, False)]
    seq, ts = random.randrange(2**16), random.randrange(2**32)
    phone.setblocking(False)
    for pt, marker in plan:
        payload = bytes([64]) if pt == PT_CN else b"\xff" * 160   # CN: noise level, RFC 3389
        head = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        try:
            pbx.sendto(head + payload, to)
        except OSError as exc:
            res.error = f"send to {to[0]}:{to[1]}: {exc}"
            return
        key = f"PT {pt}" + (" marker" if marker else "")
        res.sent[key] = res.sent.get(key, 0) + 1
        seq, ts = seq + 1, ts + 160
        _drain(phone, res)
        time.sleep(0.02)
    want = res.sent.get("PT 0", 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and res.received.get(0, 0) < want:
        time.sleep(0.02)
        _drain(phone, res)
    time.sleep(0.1)
    _drain(phone, res)


def _drain(sock: socket.socket, res: CnProbe) -> None:
    while True:
        try:
            data = sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if len(data) >= 12 and data[0] >> 6 == 2:
            pt = data[1] & 0x7F
            res.received[pt] = res.received.get(pt, 0) + 1


# ------------------------------------------------------------------ decision
@dataclass
class Decision:
    cn: CnBlock
    message: str                                 # one line, said once at start
    installed: list[tuple[int, int]] = field(default_factory=list)   # remove these at exit
    probes: list[CnProbe] = field(default_factory=list)


def decide(cfg: Settings, own_ranges: list[tuple[int, int]], owner: str,
           wrap: Optional[Wrap] = None) -> Decision:
    """GW_CN_FILTER=off: the transcoder. Otherwise install the filter for the
    rtpengine port ranges we started (own_ranges), probe every rtpengine of
    GW_RTPENGINE, and use the filter only if every one drops PT 13. With
    GW_CN_FILTER=on a failure raises FilterError (after removing what we
    installed); with auto it falls back to the transcoder."""
    if cfg.cn_filter == "off":
        return Decision(CnBlock.TRANSCODE, f"comfort noise: GW_CN_FILTER=off: {FALLBACK_NOTE}")
    installed: list[tuple[int, int]] = []
    install_errors: list[str] = []
    if own_ranges:
        prune_stale(wrap)
    for ports in own_ranges:
        try:
            install(ports, owner, wrap)
            installed.append(ports)
        except FilterError as exc:
            install_errors.append(f"could not install the nftables filter for ports "
                                  f"{ports[0]}-{ports[1]}: {exc}")
    # The probe decides, not the install: a filter someone else put there works
    # as well, and one of ours that does not work is no filter.
    probes = [probe(engine) for engine in cfg.rtpengines]
    failed = []
    for p in probes:
        if not p.cn_blocked:
            why = ("PT 13 came out of rtpengine" if p.received.get(PT_CN)
                   else p.error or "no audio came back")
            # the packet counts matter when the install worked and the filter still failed
            failed.append(f"rtpengine {p.engine}: {why}" + ("" if install_errors else f" ({p.summary()})"))
    if not failed:
        where = ", ".join(f"table inet {table_name(r)}" for r in installed) or "a filter already in place"
        return Decision(CnBlock.FILTER, "comfort noise: PT 13 dropped in front of rtpengine "
                        f"(nftables, {where}); calls are plain relays", installed, probes)
    problems = install_errors + failed
    if cfg.cn_filter == "on":
        for ports in installed:
            try:
                remove(ports, wrap)
            except FilterError:
                pass
        raise FilterError("GW_CN_FILTER=on, but " + "; ".join(problems))
    return Decision(CnBlock.TRANSCODE, "comfort noise: no working filter in front of rtpengine ("
                    + "; ".join(problems) + f"); {FALLBACK_NOTE}. See rtpengine/FLAGS.md",
                    installed, probes)


def release(decision: Decision, wrap: Optional[Wrap] = None) -> list[str]:
    """Remove the tables `decide` installed; returns what could not be removed."""
    left = []
    for ports in decision.installed:
        try:
            remove(ports, wrap)
        except FilterError as exc:
            left.append(f"{table_name(ports)}: {exc}")
    decision.installed = []
    return left
