"""The comfort-noise filter (rtpengine/cn-filter.sh, gw/cnfilter.py), in a
network namespace of our own so its nftables table touches nothing else on
this machine:

1. hand-made packets of every kind that reaches rtpengine's media ports (STUN,
   DTLS, TURN ChannelData, RTCP PT 200-204 sent to the RTP port as with
   rtcp-mux, RTP PT 0/8/101, RTP PT 13 with and without the marker bit, over
   IPv4 and IPv6): only PT 13 inside the range is dropped;
2. install/replace/remove, and stale tables of a dead owner pruned;
3. a real rtpengine session: PT 13 from the PBX side comes out of rtpengine
   without the filter and not with it, and `decide` picks the path from that."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from gw import cnfilter, stack
from kemi import settings as settings_mod
from kemi.media import CnBlock
from support import stun
from support.netns import NetNs

LOW, HIGH = 30000, 30039          # inside our namespace: no other program there


@pytest.fixture
def ns():
    ns = NetNs(f"gwcn{os.getpid() % 100000}").create()
    yield ns
    ns.delete()


# ------------------------------------------------------------------ packets
def rtp(pt: int, marker: bool = False, payload: bytes = b"\xff" * 160, seq: int = 1) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, seq * 160, 0x1234) + payload


def rtcp(pt: int, body: bytes = b"", count: int = 0) -> bytes:
    """One RTCP packet (RFC 3550): V=2, the sender's SSRC (or the first SDES
    chunk's), then `body` (a multiple of 4 bytes)."""
    assert len(body) % 4 == 0
    return struct.pack("!BBHI", 0x80 | count, pt, (4 + len(body)) // 4, 0x1234) + body


def dtls(content_type: int, body: bytes) -> bytes:
    """A DTLS 1.2 record: type, version FEFD, epoch 0, sequence number, length."""
    return struct.pack("!BHH6sH", content_type, 0xFEFD, 0, b"\0" * 6, len(body)) + body


def packets() -> list[tuple[str, bytes, bool]]:
    """(name, datagram, dropped?) for everything that reaches rtpengine's ports."""
    binding, _ = stun.binding_request()
    success, _ = stun.encode(stun.BINDING | stun.SUCCESS, [(stun.XOR_MAPPED_ADDRESS, b"\0\x01" + b"\0" * 6)])
    client_hello = dtls(22, bytes([1]) + b"\0\0\x2c" + b"\0\0" + b"\0" * 6 + b"\0\0\x2c" + b"\xfe\xfd" + b"\x11" * 42)
    sr = rtcp(200, struct.pack("!IIIII", 0, 0, 0, 0, 0))
    rr = rtcp(201, b"")
    sdes = rtcp(202, b"\x01\x05gwcn1\x00", count=1)          # one chunk: CNAME "gwcn1", end
    return [
        ("STUN binding request", binding, False),
        ("STUN binding success", success, False),
        ("DTLS ClientHello", client_hello, False),
        ("DTLS application data", dtls(23, b"\x42" * 40), False),
        ("DTLS alert", dtls(21, b"\x01\x00"), False),
        ("TURN ChannelData 0x4000", struct.pack("!HH", 0x4000, 13) + rtp(13, payload=b"\x40")[:13], False),
        ("TURN ChannelData 0x7FFF", struct.pack("!HH", 0x7FFF, 172) + rtp(13), False),
        ("RTCP SR (200)", sr, False),
        ("RTCP RR (201)", rr, False),
        ("RTCP SDES (202)", sdes, False),
        ("RTCP BYE (203)", rtcp(203), False),
        ("RTCP APP (204)", rtcp(204, b"name" + b"\0" * 4), False),
        ("RTCP compound RR+SDES", rr + sdes, False),
        ("RTP PT 0 (PCMU)", rtp(0), False),
        ("RTP PT 0 marker", rtp(0, marker=True), False),
        ("RTP PT 8 (PCMA)", rtp(8), False),
        ("RTP PT 101 (telephone-event)", rtp(101, payload=b"\x05\x0a\x00\xa0"), False),
        ("RTP PT 101 marker", rtp(101, marker=True, payload=b"\x05\x0a\x00\xa0"), False),
        ("RTP PT 12", rtp(12), False),
        ("RTP PT 77 (0x4d: 13 | 0x40)", rtp(77), False),
        ("RTP PT 13 (CN)", rtp(13, payload=b"\x40"), True),
        ("RTP PT 13 (CN), marker bit (0x8d)", rtp(13, marker=True, payload=b"\x40"), True),
        ("RTP PT 13, 2-byte noise spectrum", rtp(13, payload=b"\x40\x21\x30"), True),
        ("RTP v1 with PT 13 bits", b"\x40\x0d" + rtp(13)[2:], False),
        ("2 bytes 80 0d (no RTP header)", b"\x80\x0d", False),
    ]


def exchange(ns: NetNs, family: int, host: str, datagrams: list[tuple[str, bytes]],
             ports: list[int]) -> dict[tuple[str, int], bool]:
    """Send each datagram to each port (a receiver bound there, in the namespace);
    which arrived."""
    arrived: dict[tuple[str, int], bool] = {}
    with ns.entered():
        rx = {}
        for port in ports:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.bind((host, port))
            s.settimeout(0.5)
            rx[port] = s
        tx = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for port, sock in rx.items():
                for name, data in datagrams:
                    tx.sendto(data, (host, port))
                    try:
                        got = sock.recv(2048)
                        arrived[(name, port)] = got == data
                    except socket.timeout:
                        arrived[(name, port)] = False
        finally:
            tx.close()
            for s in rx.values():
                s.close()
    return arrived


def wrap(ns: NetNs):
    return ns.argv


def table(ns: NetNs) -> str:
    return subprocess.run(ns.argv(["nft", "list", "ruleset"]), capture_output=True, text=True).stdout


# ------------------------------------------------------------------ 1. the rule
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
                         ids=["ipv4", "ipv6"])
def test_only_pt13_inside_the_range_is_dropped(ns, family, host):
    cases = packets()
    datagrams = [(name, data) for name, data, _ in cases]
    before = exchange(ns, family, host, datagrams, [LOW])
    assert all(before.values()), {k: v for k, v in before.items() if not v}   # nothing filters yet
    cnfilter.install((LOW, HIGH), "pytest", wrap(ns))
    inside, edge, outside = LOW + 7, HIGH, HIGH + 1
    got = exchange(ns, family, host, datagrams, [inside, edge, outside])
    expected = {(name, port): not (drop and port != outside)
                for name, _, drop in cases for port in (inside, edge, outside)}
    wrong = {f"{name} -> port {port}": ("arrived" if got[(name, port)] else "dropped")
             for (name, port), want in expected.items() if got[(name, port)] != want}
    assert not wrong, f"wrong verdicts: {wrong}\n{table(ns)}"
    status = subprocess.run(ns.argv([str(cnfilter.SCRIPT), "status", str(LOW), str(HIGH)]),
                            capture_output=True, text=True, check=True).stdout
    dropped = sum(drop for _, _, drop in cases) * 2          # inside + edge
    assert f"counter packets {dropped} " in status, status


# ------------------------------------------------------------------ 2. the table
def test_install_replaces_remove_cleans_and_stale_tables_are_pruned(ns):
    assert cnfilter.install((LOW, HIGH), "make run pid 1", wrap(ns)) == f"gw_cn_{LOW}_{HIGH}"
    cnfilter.install((LOW, HIGH), "make run pid 2", wrap(ns))     # a restart: replaced, not doubled
    text = table(ns)
    assert text.count(f"table inet gw_cn_{LOW}_{HIGH}") == 1 and "owner: make run pid 2" in text
    assert "hook prerouting priority raw" in text
    cnfilter.remove((LOW, HIGH), wrap(ns))
    cnfilter.remove((LOW, HIGH), wrap(ns))                        # already gone: no error
    assert "gw_cn_" not in table(ns)
    # A `make run` killed with SIGKILL left its table; the next start prunes it
    # (its pid is gone), and leaves a live owner's and the container's alone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    cnfilter.install((40000, 40099), f"make run pid {dead.pid}", wrap(ns))
    cnfilter.install((40100, 40199), f"pytest pid {os.getpid()}", wrap(ns))
    cnfilter.install((40200, 40299), "rtpengine container", wrap(ns))
    assert cnfilter.prune_stale(wrap(ns)) == ["gw_cn_40000_40099"]
    text = table(ns)
    assert "gw_cn_40000_40099" not in text and "gw_cn_40100_40199" in text and "gw_cn_40200_40299" in text


def test_install_without_cap_net_admin_says_so(ns):
    drop = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]
    with pytest.raises(cnfilter.FilterError) as err:
        cnfilter.install((LOW, HIGH), "pytest", lambda argv: drop + ns.argv(argv))
    assert "Operation not permitted" in str(err.value) and "CAP_NET_ADMIN" in str(err.value)
    assert "gw_cn_" not in table(ns)


def test_bad_arguments_are_refused():
    for args in (["install", "20", "10"], ["install", "1", "x"], ["install", "1", "70000"],
                 ["frob", "1", "2"], ["install", "1"], ["install", "1", "2", 'owner"; flush ruleset']):
        proc = subprocess.run([str(cnfilter.SCRIPT), *args], capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)


# ------------------------------------------------------------------ 3. rtpengine
def start_rtpengine(ns: NetNs, base: Path) -> tuple[stack.Daemon, settings_mod.Settings]:
    cfg = settings_mod.load({"GW_RTPENGINE": "udp:127.0.0.1:2223", "GW_MEDIA_PORTS": f"{LOW}-{HIGH}"})
    base.mkdir(parents=True, exist_ok=True)
    d = stack.Daemon("rtpengine", ns.argv(stack.rtpengine_argv(cfg, cfg.rtpengines[0], log_level=6)),
                     base / "rtpengine.log").start()

    def ping() -> bool:
        with ns.entered():
            return stack.ng_ping(cfg.rtpengines[0])
    stack.wait_for(ping, 10, "rtpengine in namespace", d)
    return d, cfg


def test_pt13_through_a_real_rtpengine_and_the_decision(ns, tmp_path):
    d, cfg = start_rtpengine(ns, tmp_path)
    try:
        with ns.entered():
            bare = cnfilter.probe(cfg.rtpengines[0])
            transcoder = cnfilter.probe(cfg.rtpengines[0], CnBlock.TRANSCODE)
            # no filter: make run falls back to the transcoder, and says why
            fallback = cnfilter.decide(cfg, [], "pytest")
        assert bare.relayed and bare.received.get(13, 0) == 6, bare.summary()    # 3 plain + 3 marker
        assert transcoder.cn_blocked, transcoder.summary()       # the fallback path blocks CN too
        assert fallback.cn is CnBlock.TRANSCODE and "PT 13 came out of rtpengine" in fallback.message
        assert "transcoder" in fallback.message and "FLAGS.md" in fallback.message
        with ns.entered():
            decision = cnfilter.decide(cfg, [cfg.media_ports], f"pytest pid {os.getpid()}", wrap(ns))
            try:
                filtered = cnfilter.probe(cfg.rtpengines[0])
            finally:
                assert cnfilter.release(decision, wrap(ns)) == []
            after = cnfilter.probe(cfg.rtpengines[0])
            with pytest.raises(cnfilter.FilterError, match="GW_CN_FILTER=on"):
                cnfilter.decide(settings_mod.load({**cfg.raw, "GW_CN_FILTER": "on"}), [], "pytest")
            off = cnfilter.decide(settings_mod.load({**cfg.raw, "GW_CN_FILTER": "off"}),
                                  [cfg.media_ports], "pytest", wrap(ns))
        assert decision.cn is CnBlock.FILTER and f"gw_cn_{LOW}_{HIGH}" in decision.message, decision.message
        assert filtered.cn_blocked and filtered.received.get(0) == 4, filtered.summary()
        assert after.received.get(13, 0) == 6, after.summary()     # removed again
        assert off.cn is CnBlock.TRANSCODE and off.installed == [] and "gw_cn_" not in table(ns)
    finally:
        d.stop()
