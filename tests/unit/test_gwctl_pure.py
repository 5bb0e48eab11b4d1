"""gw/ctl's pure parts: kamcmd output parsing, the address rule, SDP checks,
the ctl socket path, the ICE check it sends. No daemons."""
from __future__ import annotations

import binascii
import hashlib
import hmac
import struct
from pathlib import Path

import pytest

from gw import ctl
from kemi import settings as settings_mod

DLG_LIST = """{
\th_entry: 1454
\tcall-id: abc@host
\tfrom_uri: sip:1001@pbx.test
\tstate: 4
\tstart_ts: 1795580268
\tcaller: {
\t\ttag: sjsibtmu7o
\t\tcontact: sip:dm7erris@s645ssf7n15v.invalid;transport=ws;ob
\t\troute_set: 
\t\tsocket: tcp:127.0.0.1:8080
\t}
\tprofiles: {
\t}
}
{
\tcall-id: second
\tstate: 2
}
"""

WS_DUMP = """{
\tconnections: {
\t\t1: ws:127.0.0.1:56226 -> ws:127.0.0.1:55577 (state: OPEN,  last used 3s ago, sub-protocol: sip)
\t\t12: ws:10.0.0.9:40000 -> ws:127.0.0.1:55577 (state: CLOSING,  last used 40s ago, sub-protocol: sip)
\t}
\tinfo: {
\t\twscounter: 2
\t\ttruncated: no
\t}
}
"""


def test_parse_kamcmd_structs_nested_and_repeated():
    first, second = ctl.parse_kamcmd(DLG_LIST)
    assert first["call-id"] == "abc@host" and first["state"] == "4"
    assert first["caller"]["contact"] == "sip:dm7erris@s645ssf7n15v.invalid;transport=ws;ob"
    assert first["caller"]["route_set"] == "" and first["profiles"] == {}
    assert second == {"call-id": "second", "state": "2"}
    assert ctl.parse_kamcmd("{\n\ta: 1\n\ta: 2\n\ta: 3\n}\n") == [{"a": ["1", "2", "3"]}]
    assert ctl.parse_kamcmd("") == []
    assert ctl.parse_kamcmd("plain value\n") == ["plain value"]


def test_ws_dump_lines_parse():
    [dump] = ctl.parse_kamcmd(WS_DUMP)
    conns = dump["connections"]
    m = ctl._WS_LINE.match(conns["12"])
    assert m and (m["remote"], m["local"], m["state"], m["idle"], m["proto"]) == (
        "ws:10.0.0.9:40000", "ws:127.0.0.1:55577", "CLOSING", "40", "sip")
    assert dump["info"]["truncated"] == "no"


@pytest.mark.parametrize("ip,kind", [
    ("127.0.0.1", "loopback"), ("127.8.0.3", "loopback"), ("::1", "loopback"),
    ("0.0.0.0", "unspecified"), ("169.254.10.1", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("172.20.0.1", "private"), ("192.168.1.10", "private"),
    ("100.64.0.1", "private"), ("fd00::1", "private"),
    ("198.51.100.7", "public"), ("8.8.8.8", "public"), ("172.32.0.1", "public"), ("2001:db8::1", "public"),
])
def test_address_kind(ip, kind):
    assert ctl.address_kind(ip) == kind


def _probe(addr: str) -> ctl.MediaProbe:
    sdp = f"v=0\r\nc=IN IP4 {addr}\r\nm=audio 20000 UDP/TLS/RTP/SAVPF 0\r\n" \
          f"a=candidate:x 1 UDP 2130706431 {addr} 20000 typ host\r\n"
    return ctl.MediaProbe(engine="udp:127.0.0.1:2223", to_phone={"inbound offer": sdp}, bound="127.0.0.1")


@pytest.mark.parametrize("addr,phones,status", [
    ("127.0.0.1", "local", "ok"), ("127.0.0.1", "lan", "fail"), ("127.0.0.1", "internet", "fail"),
    ("10.0.0.5", "lan", "ok"), ("10.0.0.5", "internet", "fail"), ("10.0.0.5", "local", "ok"),
    ("203.0.113.9", "internet", "ok"), ("0.0.0.0", "local", "fail"),
])
def test_media_address_rule(addr, phones, status):
    cfg = settings_mod.load({})
    check = ctl.media_address_check(cfg, _probe(addr), phones)
    assert check["status"] == status, check
    if status == "fail":
        assert check["fix"] and "--phones" in check["fix"]


def test_sdp_helpers():
    sdp = ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 9 RTP/AVP 0 13 101\r\na=rtpmap:13 CN/8000\r\n"
           "a=candidate:1 1 udp 2122260223 5.6.7.8 50000 typ host\r\n"
           "a=candidate:2 1 udp 1686052607 1.2.3.4 50000 typ srflx raddr 0.0.0.0 rport 0\r\n")
    assert ctl.sdp_addresses(sdp) == ["1.2.3.4", "5.6.7.8"]
    assert ctl.sdp_cn(sdp) == ["m=audio payload 13", "a=rtpmap:13 CN/8000"]
    assert ctl.sdp_cn("m=audio 9 RTP/AVP 0 8 113\r\na=rtpmap:0 PCMU/8000\r\n") == []


def test_ctl_socket_resolution(tmp_path):
    assert ctl.ctl_socket("unix:/x/y", {}) == "unix:/x/y"
    assert ctl.ctl_socket("/x/y", {}) == "unix:/x/y"
    assert ctl.ctl_socket("tcp:127.0.0.1:2049", {}) == "tcp:127.0.0.1:2049"
    assert ctl.ctl_socket(None, {"GW_RUN_DIR": str(tmp_path)}) == f"unix:{tmp_path.resolve()}/kamailio_ctl"
    assert ctl.ctl_socket(None, {}) == f"unix:{(ctl.ROOT / '.run').resolve()}/kamailio_ctl"


def test_redact_url():
    assert ctl.redact_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert ctl.redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert ctl.redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_ice_check_is_a_valid_stun_request():
    """USERNAME remote:local, MESSAGE-INTEGRITY keyed with the remote ice-pwd, FINGERPRINT."""
    packet, txid = ctl.stun_binding("RUFRAG", "lufrag", "remote-password")
    mtype, length, magic = struct.unpack("!HHI", packet[:8])
    assert (mtype, magic, packet[8:20], length) == (0x0001, 0x2112A442, txid, len(packet) - 20)
    attrs, pos = {}, 20
    while pos < len(packet):
        t, n = struct.unpack("!HH", packet[pos:pos + 4])
        attrs[t] = (pos, packet[pos + 4:pos + 4 + n])
        pos += 4 + n + (-n % 4)
    assert attrs[0x0006][1] == b"RUFRAG:lufrag"
    mi_pos, mac = attrs[0x0008]
    head = struct.pack("!HHI", 0x0001, mi_pos - 20 + 24, 0x2112A442) + txid
    assert mac == hmac.new(b"remote-password", head + packet[20:mi_pos], hashlib.sha1).digest()
    fp_pos, crc = attrs[0x8028]
    assert struct.unpack("!I", crc)[0] == (binascii.crc32(packet[:fp_pos]) ^ 0x5354554E) & 0xFFFFFFFF


def test_gwctl_never_imports_kemi_metrics():
    """kemi.metrics empties the Prometheus multiprocess directory on import: a gwctl
    run inside the gateway's container must not wipe the running gateway's counters."""
    for path in sorted(Path(ctl.__file__).parent.rglob("*.py")):      # every module of the package
        source = path.read_text()
        assert "kemi.metrics" not in source.replace("Never import kemi.metrics", ""), path
        assert "import metrics" not in source and "metrics," not in source, path


# ------------------------------------------------------------ calls / call
QUALITY_DATA = Path(__file__).resolve().parents[1] / "data" / "rtpengine"


def _reply(name: str) -> dict:
    import json
    return json.loads((QUALITY_DATA / f"query_{name}.json").read_text())


def test_calls_session_shows_live_figures_per_leg():
    from gw.ctl.calls import session
    from gw.ctl.output import media_text
    sess = session(_reply("lossy_pbx_leg_phone_to_pbx"), "udp:192.0.2.10:2223")
    phone, pbx = sess["legs"]
    assert (phone["side"], pbx["side"]) == ("phone", "pbx")
    assert phone["protocol"] == "UDP/TLS/RTP/SAVPF" and pbx["codec"] == "PCMU/8000"
    assert pbx["loss"] == pytest.approx(0.09) and phone["loss"] == 0.0
    assert pbx["mos"] < phone["mos"] and sess["mos"] == pbx["mos"]
    text = media_text(sess)
    assert text.startswith("phone 203.0.113.50:") and "| pbx 198.51.100.20:" in text
    assert "loss 9%" in text and "MOS 3.5" in text
    # no RTCP from the PBX: packets only, no figure made up
    quiet = session(_reply("pbx_without_rtcp"), "udp:192.0.2.10:2223")
    assert all(leg["loss"] is None and leg["mos"] is None for leg in quiet["legs"])
    assert "loss" not in media_text(quiet) and "MOS" not in media_text(quiet)


class _Kam:
    def __init__(self, dlgs: list[dict]) -> None:
        self.dlgs = dlgs

    def rpc(self, *command: str) -> list:
        assert command == ("dlg.list",)
        return self.dlgs


def _fake_engine(reply_for) -> tuple[settings_mod.HostPort, "object"]:
    """A UDP ng responder answering query with reply_for(call_id)."""
    import socket
    import threading
    import bencode
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)

    def serve():
        try:
            while True:
                data, addr = sock.recvfrom(65535)
                cookie, _, body = data.partition(b" ")
                cid = bencode.decode(body)["call-id"]
                cid = cid.decode() if isinstance(cid, bytes) else cid
                sock.sendto(cookie + b" " + bencode.encode(reply_for(cid)), addr)
        except OSError:
            return
    threading.Thread(target=serve, daemon=True).start()
    return settings_mod.HostPort("127.0.0.1", sock.getsockname()[1]), sock


def test_call_found_on_the_engine_that_holds_it():
    from gw.ctl.call import call_report
    held = _reply("lossy_pbx_leg_pbx_to_phone")
    a, sock_a = _fake_engine(lambda cid: {"result": "error", "error-reason": "Unknown call-id"})
    b, sock_b = _fake_engine(lambda cid: held if cid == "c1" else
                             {"result": "error", "error-reason": "Unknown call-id"})
    try:
        cfg = settings_mod.load({"GW_RTPENGINE": f"udp:{a} udp:{b}"})
        dlg = {"call-id": "c1", "state": "4", "from_uri": "sip:pbx@pbx.test", "to_uri": "sip:4683@gw",
               "start_ts": "1795904485", "caller": {"socket": "udp:127.0.0.1:5070"}}
        r = call_report(cfg, _Kam([dlg]), "c1")
        assert r["engine"] == f"udp:{b}" and r["errors"] == []
        assert r["dialog"]["direction"] == "inbound" and r["dialog"]["state"] == "confirmed"
        phone, pbx = r["legs"]
        assert phone["crypto"] and phone["peer"].startswith("203.0.113.50:") and pbx["crypto"] == ""
        assert pbx["loss"] == pytest.approx(0.09) and pbx["reports"] > 0 and r["mos"] == pbx["mos"]
        missing = call_report(cfg, _Kam([]), "nobody")
        assert missing["engine"] is None and missing["errors"] == [] and "legs" not in missing
    finally:
        sock_a.close()
        sock_b.close()
