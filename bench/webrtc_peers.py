"""The peers of the WebRTC media bench, all real stacks on loopback:

* PhoneSide: a second rtpengine playing the agents' browsers. It terminates
  ICE and DTLS-SRTP toward the relay under test (full ICE, DTLS fingerprint
  verified, SRTP both ways) and turns each call's media into plain RTP toward
  the generator (media_gen.py), so hundreds of WebRTC phones cost one C
  process, not hundreds of Python ones.
* Janus (Debian's janus 1.1.2, SIP plugin): what a user might deploy instead of
  Kamailio + rtpengine. Driven over its HTTP API (one session, one handle per
  call: guest "register", then "call" with the phone's offer); its SIP plugin
  calls our PBX (SipUas) with plain RTP, as the gateway's PBX leg does.
* SipUas: a minimal SIP UAS for Janus's INVITEs: answers each with SDP that
  points at that call's PBX socket, ACKs and BYEs as a PBX does.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from bench.rtp import media_addr
from gw import stack
from kemi.ng import NgClient
from kemi.settings import HostPort, load as load_settings

# The phone emulator's flags: plain RTP from the generator in, WebRTC out
# (UDP/TLS/RTP/SAVPF, DTLS-SRTP, ICE, rtcp-mux, a=mid: what a browser offers),
# and the relay's WebRTC answer back to plain RTP for the generator.
PHONE_OFFER = {"ICE": "force", "transport-protocol": "UDP/TLS/RTP/SAVPF", "rtcp-mux": ["offer", "require"],
               "SDES": ["off"], "flags": ["generate-mid", "trust-address"],
               "replace": ["origin", "session-connection"]}
PHONE_ANSWER = {"ICE": "remove", "rtcp-mux": ["demux"], "flags": ["trust-address"],
                "replace": ["origin", "session-connection"]}
JANUS_LIBDIR = Path("/usr/lib/x86_64-linux-gnu/janus")


def plain_sdp(ip: str, port: int, pts: tuple[int, ...], ssrc: Optional[int] = None) -> str:
    names = {0: "PCMU/8000", 8: "PCMA/8000", 13: "CN/8000", 101: "telephone-event/8000"}
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}\r\n"
            + "".join(f"a=rtpmap:{pt} {names[pt]}\r\n" for pt in pts)
            + ("a=fmtp:101 0-16\r\n" if 101 in pts else "") + "a=ptime:20\r\na=sendrecv\r\n"
            + (f"a=ssrc:{ssrc} cname:bench{ssrc}\r\n" if ssrc is not None else ""))


def start_rtpengine(name: str, base: Path, ports: tuple[int, int], interface: str = "127.0.0.1",
                    wrap: Optional[Callable[[list[str]], list[str]]] = None,
                    threads: int = 2) -> tuple[stack.Daemon, NgClient]:
    """A userspace rtpengine as gw/stack.py starts the gateway's, on its own range
    and interface (ng on 127.0.0.1); `wrap` runs it in a network namespace, whose
    loopback the caller must be in to reach it."""
    ng = HostPort("127.0.0.1", stack.free_port())       # free where the caller is (its namespace)
    cfg = load_settings({"GW_RTPENGINE": f"udp:{ng}", "GW_MEDIA_PORTS": f"{ports[0]}-{ports[1]}",
                         "GW_MEDIA_IP": interface})
    argv = [a if not a.startswith("--num-threads") else f"--num-threads={threads}"
            for a in stack.rtpengine_argv(cfg, ng, log_level=4)]
    d = stack.Daemon(name, wrap(argv) if wrap else argv, base / f"{name}.log").start()
    stack.wait_for(lambda: stack.ng_ping(ng), 10, name, d)
    return d, NgClient(ng.host, ng.port, 5.0)


class PhoneSide:
    """The phones: one rtpengine session per call, WebRTC toward the relay."""

    def __init__(self, ng: NgClient) -> None:
        self.ng = ng

    def offer(self, call_id: str, sdp: str) -> str:
        return self.ng.request({"command": "offer", "call-id": call_id, "from-tag": "gen", "sdp": sdp,
                                **PHONE_OFFER})["sdp"]

    def answer(self, call_id: str, sdp: str) -> str:
        return self.ng.request({"command": "answer", "call-id": call_id, "from-tag": "gen", "to-tag": "relay",
                                "sdp": sdp, **PHONE_ANSWER})["sdp"]

    def delete(self, call_id: str) -> None:
        try:
            self.ng.request({"command": "delete", "call-id": call_id})
        except Exception:  # noqa: BLE001 - teardown
            pass


# ------------------------------------------------------------------ SIP UAS (the PBX behind Janus)
class SipUas:
    """Answers INVITE sip:<user>@... with the SDP of the socket registered for
    <user> (its media address then goes to `on_invite`), ACKs silently, BYE with
    200. Loopback only; one thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self.targets: dict[str, tuple[str, int]] = {}          # user -> our media address
        self.remote: dict[str, tuple[str, int]] = {}           # user -> Janus's media address
        self.answered: dict[str, threading.Event] = {}
        self.byes = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def expect(self, user: str, media: tuple[str, int]) -> threading.Event:
        self.targets[user] = media
        self.answered[user] = threading.Event()
        return self.answered[user]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _loop(self) -> None:
        stack.receive_loop(self.sock, lambda: not self._stop.is_set(), self._datagram)

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._handle(data.decode(errors="replace"), addr)
        except Exception as exc:  # noqa: BLE001 - recorded for the report
            self.errors.append(repr(exc))

    def _handle(self, text: str, addr: tuple[str, int]) -> None:
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        if lines[0].startswith("SIP/2.0"):
            return
        method, uri = lines[0].split(" ")[:2]
        if method == "ACK":
            return
        user = uri.split(":", 1)[1].split("@", 1)[0]
        hdrs = [ln for ln in lines[1:] if ":" in ln]

        def get(name: str, short: str = "") -> list[str]:
            names = {name.lower(), short.lower()} - {""}
            return [ln.split(":", 1)[1].strip() for ln in hdrs if ln.split(":", 1)[0].strip().lower() in names]

        to = get("To", "t")[0]
        if ";tag=" not in to:
            to += f";tag={secrets.token_hex(4)}"
        reply = ["SIP/2.0 200 OK"] + [f"Via: {v}" for v in get("Via", "v")] + [
            f"From: {get('From', 'f')[0]}", f"To: {to}", f"Call-ID: {get('Call-ID', 'i')[0]}",
            f"CSeq: {get('CSeq')[0]}", f"Contact: <sip:pbx@{self.host}:{self.port}>", "User-Agent: bench-pbx"]
        sdp = ""
        if method == "INVITE" and user in self.targets:
            self.remote[user] = media_addr(body)
            ip, port = self.targets[user]
            sdp = plain_sdp(ip, port, (0, 101))          # CN never in the PBX's SDP
            reply.append("Content-Type: application/sdp")
        elif method == "BYE":
            self.byes += 1
        reply.append(f"Content-Length: {len(sdp)}")
        self.sock.sendto(("\r\n".join(reply) + "\r\n\r\n" + sdp).encode(), addr)
        if method == "INVITE" and user in self.answered:
            self.answered[user].set()


# ------------------------------------------------------------------ Janus
def janus_available() -> Optional[str]:
    """None when Janus and its SIP plugin are installed, else why not."""
    exe = next((p for p in ("/usr/bin/janus", "/usr/local/bin/janus") if os.path.exists(p)), None)
    if exe is None:
        return "janus is not installed (make bench-deps: Debian package janus)"
    if not (JANUS_LIBDIR / "plugins" / "libjanus_sip.so").exists():
        return f"Janus's SIP plugin is missing ({JANUS_LIBDIR}/plugins/libjanus_sip.so)"
    return None


def write_janus_config(conf: Path, http_port: int, ice_ports: tuple[int, int], sip_ports: tuple[int, int],
                       ice_ip: str, debug_level: int = 3) -> None:
    """Only the SIP plugin and the HTTP transport, on loopback; ICE candidates
    on ice_ip only (libnice gathers none on loopback)."""
    conf.mkdir(parents=True, exist_ok=True)
    plugins = [p.name for p in (JANUS_LIBDIR / "plugins").glob("libjanus_*.so") if p.name != "libjanus_sip.so"]
    transports = [p.name for p in (JANUS_LIBDIR / "transports").glob("libjanus_*.so")
                  if p.name != "libjanus_http.so"]
    (conf / "janus.jcfg").write_text(f"""general: {{
  configs_folder = "{conf}"
  plugins_folder = "{JANUS_LIBDIR}/plugins"
  transports_folder = "{JANUS_LIBDIR}/transports"
  events_folder = "{JANUS_LIBDIR}/events"
  loggers_folder = "{JANUS_LIBDIR}/loggers"
  debug_level = {debug_level}
  session_timeout = 0
  server_name = "bench-janus"
}}
certificates: {{
}}
media: {{
  rtp_port_range = "{ice_ports[0]}-{ice_ports[1]}"
}}
nat: {{
  nice_debug = false
  ice_enforce_list = "127.0.0.1"
  ignore_mdns = true
}}
plugins: {{
  disable = "{','.join(sorted(plugins))}"
}}
transports: {{
  disable = "{','.join(sorted(transports))}"
}}
events: {{
  broadcast = false
}}
loggers: {{
  disable = "libjanus_jsonlog.so"
}}
""")
    (conf / "janus.transport.http.jcfg").write_text(f"""general: {{
  json = "plain"
  base_path = "/janus"
  http = true
  port = {http_port}
  ip = "127.0.0.1"
  https = false
}}
admin: {{
  admin_http = false
}}
""")
    (conf / "janus.plugin.sip.jcfg").write_text(f"""general: {{
  local_ip = "127.0.0.1"
  keepalive_interval = 0
  behind_nat = false
  register_ttl = 3600
  rtp_port_range = "{sip_ports[0]}-{sip_ports[1]}"
  events = false
}}
""")


class JanusApi:
    """Janus's HTTP API: one session, a handle per call, events by long poll."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/janus"
        self.session: Optional[int] = None
        self.events: dict[int, list[dict]] = {}
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None

    def _post(self, path: str, body: dict, timeout: float = 10.0) -> dict:
        body = {**body, "transaction": secrets.token_hex(6)}
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            reply = json.loads(r.read())
        if reply.get("janus") == "error":
            raise RuntimeError(f"janus: {reply.get('error')}")
        return reply

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/info", timeout=0.5) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> None:
        self.session = self._post("", {"janus": "create"})["data"]["id"]
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"{self.base}/{self.session}?maxev=100", timeout=35) as r:
                    got = json.loads(r.read())
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.1)
                continue
            for ev in got if isinstance(got, list) else [got]:
                sender = ev.get("sender")
                if sender is not None:
                    with self._lock:
                        self.events.setdefault(sender, []).append(ev)
                        self._lock.notify_all()

    def attach(self) -> int:
        return self._post(f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.sip"})["data"]["id"]

    def message(self, handle: int, body: dict, jsep: Optional[dict] = None) -> None:
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        self._post(f"/{self.session}/{handle}", msg)

    def wait_event(self, handle: int, event: str, timeout: float = 10.0) -> dict:
        """The plugin event `event` (result.event) on this handle; raises on a SIP error event."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for ev in self.events.get(handle, []):
                    data = ev.get("plugindata", {}).get("data", {})
                    if data.get("error"):
                        raise RuntimeError(f"janus sip: {data.get('error')}")
                    result = data.get("result", {})
                    if result.get("event") == event:
                        self.events[handle].remove(ev)
                        return ev
                    if result.get("event") == "hangup":
                        raise RuntimeError(f"janus sip: call hung up ({result.get('reason')})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"janus: no {event!r} event on handle {handle} within {timeout}s")
                self._lock.wait(left)

    def stop(self) -> None:
        self._stop.set()
        if self.session is not None:
            try:
                self._post(f"/{self.session}", {"janus": "destroy"}, timeout=2)
            except Exception:  # noqa: BLE001 - teardown
                pass


@dataclass
class JanusServer:
    daemon: stack.Daemon
    api: JanusApi
    conf: Path
    handles: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, base: Path, ice_ports: tuple[int, int], sip_ports: tuple[int, int], ice_ip: str,
              wrap: Optional[Callable[[list[str]], list[str]]] = None) -> "JanusServer":
        http_port = stack.free_port(kind=socket.SOCK_STREAM)
        conf = base / "janus"
        write_janus_config(conf, http_port, ice_ports, sip_ports, ice_ip)
        exe = "/usr/bin/janus" if os.path.exists("/usr/bin/janus") else "janus"
        argv = [exe, "-C", str(conf / "janus.jcfg"), "-F", str(conf), "-o"]
        d = stack.Daemon("janus", wrap(argv) if wrap else argv, base / "janus.log").start()
        api = JanusApi(http_port)
        try:
            stack.wait_for(api.ready, 20, "janus HTTP API", d)
            api.start()
        except Exception:
            d.stop()
            raise
        return cls(d, api, conf)

    def call(self, user: str, pbx: tuple[str, int], offer: str, timeout: float = 10.0) -> tuple[int, str]:
        """A SIP call through Janus to sip:<user>@pbx with the phone's offer; the handle and Janus's answer."""
        h = self.api.attach()
        self.handles.append(h)
        self.api.message(h, {"request": "register", "type": "guest", "username": f"sip:agent{user}@127.0.0.1"})
        self.api.wait_event(h, "registered", timeout)
        self.api.message(h, {"request": "call", "uri": f"sip:{user}@{pbx[0]}:{pbx[1]}", "autoaccept_reinvites": False},
                         {"type": "offer", "sdp": offer})
        ev = self.api.wait_event(h, "accepted", timeout)
        return h, ev["jsep"]["sdp"]

    def hangup_all(self) -> None:
        for h in self.handles:
            try:
                self.api.message(h, {"request": "hangup"})
            except Exception:  # noqa: BLE001 - teardown
                pass
        self.handles.clear()

    def stop(self) -> None:
        self.hangup_all()
        self.api.stop()
        self.daemon.stop()
