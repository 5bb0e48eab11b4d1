"""Issue 7, "Abuse": per-source REGISTER flood limiting, scanner user agents
dropped without a reply, and only the PBX (GW_PBX, GW_PBX_ALLOW) reaching
agents. Sources other than the PBX use their own loopback addresses
(127.0.0.x), as the internet would."""
from __future__ import annotations

import select
import socket
import time

from conftest import wait_until
from gw import stack
from support import callcheck, relstack, sipmsg
from support.fakepbx import FakePbx
from support.wsphone import BlockingPhone, ws_connect

SCANNERS = ["friendly-scanner", "sipvicious", "SIPVicious 0.3.4", "sipcli/v1.8", "sip-scan",
            "sundayddr", "iWar", "VaxSIPUserAgent/3.1", "PPLSIP", "smap 0.6.0", "sipsak 0.9.6",
            "Nessus SIP scanner", "sipbomber"]


def _register(transport: str, user: str, host: str, port: int, call_id: str, cseq: int,
              ua: str = "JsSIP 3.10.0") -> str:
    aor = f"<sip:{user}@pbx.test>"
    return sipmsg.request("REGISTER", "sip:pbx.test", [
        ("Via", f"SIP/2.0/{transport} {host}:{port};branch={sipmsg.new_branch()};rport"),
        ("Max-Forwards", "70"), ("To", aor), ("From", f"{aor};tag={sipmsg.new_tag()}"),
        ("Call-ID", call_id), ("CSeq", f"{cseq} REGISTER"),
        ("Contact", f"<sip:{user}@{host}:{port};transport={transport.lower()}>;expires=600"),
        ("User-Agent", ua)])


def _drain_ws(ws, quiet: float = 0.7) -> list[sipmsg.Msg]:
    """Replies until `quiet` seconds pass without one."""
    got = []
    while True:
        try:
            got.append(sipmsg.parse(ws.recv(timeout=quiet)))
        except TimeoutError:
            return got


def test_register_flood_blocked_per_source(fresh_gw):
    gw = fresh_gw
    limit = gw.cfg.flood_limit
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)
    agents = [BlockingPhone(gw.ws_url, f"11{i:02d}") for i in range(3)]
    agents.append(BlockingPhone(gw.ws_url, "1199", source_ip="127.0.0.7"))
    flooder = ws_connect(gw.ws_url, subprotocols=["sip"], open_timeout=3)
    try:
        for a in agents:
            assert a.register().status == 200
        # An agent re-registers about every 5 minutes; this is one REGISTER every
        # few milliseconds from one WebSocket (one source IP:port): 5x the limit in ~1 s.
        # It comes from 127.0.0.1, the PBX's address: a WebSocket is never the PBX
        # (think of nginx in front of the gateway on the PBX's host), so no exemption.
        sent = 5 * limit
        started = time.monotonic()
        for i in range(sent):
            flooder.send(_register("WS", "1150", "f1ood.invalid", 5060, "flood-1", i + 1))
        elapsed = time.monotonic() - started
        answered = [r for r in _drain_ws(flooder) if r.status >= 200]
        print(f"flood: {sent} REGISTERs in {elapsed:.2f}s, {len(answered)} answered (limit {limit})")
        assert len(answered) == limit and all(r.status == 200 for r in answered)
        assert len([r for r in pbx.requests("REGISTER") if r.call_id == "flood-1"]) == limit
        # Blocked: everything from that source is now dropped without a word.
        flooder.send(_register("WS", "1150", "f1ood.invalid", 5060, "flood-1", sent + 1))
        flooder.send(sipmsg.request("OPTIONS", f"sip:2000@pbx.test", [
            ("Via", f"SIP/2.0/WS f1ood.invalid;branch={sipmsg.new_branch()}"), ("Max-Forwards", "70"),
            ("To", "<sip:2000@pbx.test>"), ("From", f"<sip:1150@pbx.test>;tag={sipmsg.new_tag()}"),
            ("Call-ID", "flood-2"), ("CSeq", "1 OPTIONS")]))
        assert _drain_ws(flooder, 1.0) == []
        wait_until(lambda: "event=reqinit.flood_blocked" in gw.kamailio_log(), 3, "flood log")
        # Meanwhile the agents -- same IP, other ports, and another IP -- keep
        # registering and calling.
        for a in agents:
            assert a.register().status == 200, a.user
        assert callcheck.outbound(agents[0], pbx) == "ok"
        assert callcheck.inbound(pbx, (gw.sip.host, gw.sip.port), agents[1]) == "ok"
        assert callcheck.inbound(pbx, (gw.sip.host, gw.sip.port), agents[3]) == "ok"
        # The ban is an htable entry with a 60 s life; the flooder is still out.
        dump = relstack.kamcmd(gw.ctl(), "htable.dump", "gwban")
        assert dump.count("127.0.0.1:") == 1, dump
        assert _drain_ws(flooder, 0.3) == []
        flooder.send(_register("WS", "1150", "f1ood.invalid", 5060, "flood-1", sent + 2))
        assert _drain_ws(flooder, 1.0) == []

        # The same over plain UDP from its own address.
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.8", 0))
        try:
            h, p = udp.getsockname()
            for i in range(sent):
                udp.sendto(_register("UDP", "1151", h, p, "flood-udp", i + 1).encode(),
                           (gw.sip.host, gw.sip.port))
            finals = 0
            while select.select([udp], [], [], 0.7)[0]:
                finals += sipmsg.parse(udp.recv(65535)).status >= 200
            assert finals == limit, finals
        finally:
            udp.close()
        assert not gw.kamailio.exited()
        assert gw.rtpengine_sessions() == 0
    finally:
        flooder.close()
        for a in agents:
            a.close()
        pbx.close()


def test_scanner_user_agents_dropped_silently(gw):
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.11", 0))
    tcp = socket.create_connection((gw.sip.host, gw.sip.port), timeout=3, source_address=("127.0.0.11", 0))
    ws = ws_connect(gw.ws_url, subprotocols=["sip"], open_timeout=3)
    before = gw.kamailio_log().count("event=reqinit.scanner")
    sent = 0
    try:
        uh, up = udp.getsockname()
        th, tp = tcp.getsockname()
        for ua in SCANNERS:
            for method in ("OPTIONS", "REGISTER", "INVITE"):
                for transport in ("UDP", "TCP", "WS"):
                    host, port = {"UDP": (uh, up), "TCP": (th, tp), "WS": ("scan.invalid", 5060)}[transport]
                    text = sipmsg.request(method, "sip:100@pbx.test" if method != "REGISTER" else "sip:pbx.test", [
                        ("Via", f"SIP/2.0/{transport} {host}:{port};branch={sipmsg.new_branch()};rport"),
                        ("Max-Forwards", "70"), ("To", "<sip:100@pbx.test>"),
                        ("From", f"<sip:100@pbx.test>;tag={sipmsg.new_tag()}"),
                        ("Call-ID", f"scan-{sipmsg.new_tag()}"), ("CSeq", f"1 {method}"),
                        ("Contact", f"<sip:100@{host}:{port}>"), ("User-Agent", ua)])
                    if transport == "UDP":
                        udp.sendto(text.encode(), (gw.sip.host, gw.sip.port))
                    elif transport == "TCP":
                        tcp.sendall(text.encode())
                    else:
                        ws.send(text)
                    sent += 1
        # Every one of them was seen and dropped (one log line each) ...
        wait_until(lambda: gw.kamailio_log().count("event=reqinit.scanner") - before >= sent, 10,
                   "every scanner message logged")
        # ... and none was answered or relayed: after a legitimate OPTIONS on each
        # connection comes back, nothing else is waiting there.
        probe = "OPTIONS sip:{g} SIP/2.0\r\nVia: SIP/2.0/{t} {h}:{p};branch={b};rport\r\nMax-Forwards: 70\r\n" \
                "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:{g}>\r\nCall-ID: probe-{b}\r\n" \
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        udp.sendto(probe.format(g=gw.sip, t="UDP", h=uh, p=up, b=sipmsg.new_branch()).encode(),
                   (gw.sip.host, gw.sip.port))
        tcp.sendall(probe.format(g=gw.sip, t="TCP", h=th, p=tp, b=sipmsg.new_branch()).encode())
        ws.send(probe.format(g=gw.sip, t="WS", h="scan.invalid", p=5060, b=sipmsg.new_branch()))
        udp.settimeout(3)
        tcp.settimeout(3)
        replies = [udp.recv(65535), tcp.recv(65535), ws.recv(timeout=3).encode()]
        assert all(r.startswith(b"SIP/2.0 200 Keepalive") and r.count(b"\r\n\r\n") == 1 for r in replies), replies
        assert not select.select([udp, tcp], [], [], 0.5)[0]
        try:
            extra = ws.recv(timeout=0.3)
        except TimeoutError:
            extra = None
        assert extra is None, extra
        assert pbx.requests() == [], "a scanner's request reached the PBX"
        print(f"scanners: {sent} messages ({len(SCANNERS)} user agents x 3 methods x 3 transports), "
              f"0 answered, 0 relayed")
        assert not gw.kamailio.exited()
    finally:
        ws.close()
        tcp.close()
        udp.close()
        pbx.close()


def test_only_pbx_reaches_agents(gw):
    pbx = FakePbx(gw.pbx.host, gw.pbx.port)
    stranger = FakePbx("127.0.0.9", 0)
    agent = BlockingPhone(gw.ws_url, "1081")
    other_phone = BlockingPhone(gw.ws_url, "1082")
    try:
        assert agent.register().status == 200
        assert other_phone.register().status == 200
        gw_addr = (gw.sip.host, gw.sip.port)
        binding = gw.redis_client().get("gw:reg:1081")
        contact = agent.contact.strip("<>")
        alias_uri = contact.replace(";transport=ws", "") + \
            ";alias=127.0.0.1~{}~5;transport=ws".format(agent.local[1])
        refused = []
        # By DN at the gateway, and straight at the phone's aliased contact (how a
        # PBX that learnt it through Path would address it) ...
        refused.append(stranger.call(gw_addr, "1081").status)
        refused.append(stranger.call(gw_addr, "1081", ruri=alias_uri).status)
        # ... over TCP too.
        with socket.create_connection(gw_addr, timeout=3, source_address=("127.0.0.9", 0)) as tcp:
            h, p = tcp.getsockname()
            for ruri in (f"sip:1081@{gw.sip}", alias_uri):
                tcp.sendall(sipmsg.request("INVITE", ruri, [
                    ("Via", f"SIP/2.0/TCP {h}:{p};branch={sipmsg.new_branch()};rport"),
                    ("Max-Forwards", "70"), ("To", "<sip:1081@pbx.test>"),
                    ("From", f"<sip:evil@127.0.0.9>;tag={sipmsg.new_tag()}"),
                    ("Call-ID", f"evil-{sipmsg.new_tag()}"), ("CSeq", "1 INVITE"),
                    ("Contact", f"<sip:evil@{h}:{p};transport=tcp>")]).encode())
                tcp.settimeout(3)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += tcp.recv(65535)
                refused.append(sipmsg.parse(data).status)
        print(f"calls toward an agent from a non-PBX source: {refused}")
        assert refused == [403, 403, 403, 403]
        assert agent.requests == [], "a stranger's request reached the agent"
        assert binding is not None
        # A phone calling the agent's DN goes to the PBX, never straight to the agent.
        call = other_phone.call("1081")
        assert call.status == 200 and call.bye() == 200
        assert any(r.call_id == call.invite.call_id for r in pbx.requests("INVITE"))
        assert agent.requests == []
        # The PBX itself gets through.
        assert callcheck.inbound(pbx, gw_addr, agent) == "ok"
        assert gw.rtpengine_sessions() == 0
    finally:
        agent.close()
        other_phone.close()
        stranger.close()
        pbx.close()


def test_pbx_allow_list_reaches_agents(tmp_path):
    s = relstack.start_stack(tmp_path / "stack", {"GW_PBX_ALLOW": "127.0.0.9"})
    pbx = FakePbx(s.pbx.host, s.pbx.port)
    second_pbx = FakePbx("127.0.0.9", 0)
    stranger = FakePbx("127.0.0.10", 0)
    agent = BlockingPhone(s.ws_url, "1083")
    try:
        assert agent.register().status == 200
        gw_addr = (s.sip.host, s.sip.port)
        assert stranger.call(gw_addr, "1083").status == 403
        assert callcheck.inbound(second_pbx, gw_addr, agent) == "ok"
        assert callcheck.inbound(pbx, gw_addr, agent) == "ok"
        assert s.rtpengine_sessions() == 0
        assert stack.sip_options(s.sip.host, s.sip.port, 2) == "SIP/2.0 200 Keepalive"
    finally:
        agent.close()
        stranger.close()
        second_pbx.close()
        pbx.close()
        stack.stop_all(s.daemons())
