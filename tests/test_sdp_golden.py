"""rtpengine-style golden tests: each tests/golden/*.sdp file holds the SDPs one
side sends (`in`) and what the other side must receive (`out`), with
placeholders for what rtpengine chooses ({PORT}, {ICE_UFRAG}, ...).

The SDPs go through a real rtpengine with exactly the flags the gateway sends
(kemi.media), on the CN path the file's `cn:` header names (`filter`: the
nftables filter drops PT 13 in front of rtpengine; `transcode`, the default:
rtpengine's transcoder decodes it). The inputs use documentation addresses, and rtpengine starts ICE
checks toward the phone's candidates, so it runs in a network namespace with
only loopback: nothing it sends can leave the machine.

GOLDEN_UPDATE=1 rewrites the `out` sections from what rtpengine produced;
review the diff before committing it.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from gw import stack
from kemi import media
from kemi.media import Op, Side
from kemi.ng import NgClient
from kemi.settings import HostPort, load
from support.netns import NetNs

GOLDEN = Path(__file__).parent / "golden"
MEDIA_IP = "127.0.0.1"
_HEADER = re.compile(r"^=== (offer|answer) from (phone|pbx), to (phone|pbx): (in|out)$")

_PLACEHOLDERS = [
    (re.compile(r"^(m=\w+ )\d+"), r"\1{PORT}"),
    (re.compile(r"^a=rtcp:\d+"), "a=rtcp:{PORT}"),
    (re.compile(r"^a=ice-ufrag:\S+"), "a=ice-ufrag:{ICE_UFRAG}"),
    (re.compile(r"^a=ice-pwd:\S+"), "a=ice-pwd:{ICE_PWD}"),
    (re.compile(r"^a=fingerprint:(\S+) \S+"), r"a=fingerprint:\1 {FINGERPRINT}"),
    (re.compile(r"^a=tls-id:\S+"), "a=tls-id:{TLS_ID}"),
    (re.compile(r"^a=candidate:\S+ (\d) (\S+) \d+ (\S+) \d+ typ"),
     r"a=candidate:{FOUNDATION} \1 \2 {PRIORITY} \3 {PORT} typ"),
]


def normalize(sdp: str) -> str:
    lines = []
    for line in sdp.replace("\r\n", "\n").strip().split("\n"):
        for pattern, repl in _PLACEHOLDERS:
            line = pattern.sub(repl, line)
        lines.append(line)
    return "\n".join(lines)


def parse(path: Path) -> tuple[list[str], list[dict]]:
    """Header lines and steps: [{op, sender, receiver, in, out}]."""
    header, steps, current = [], [], None
    for line in path.read_text().split("\n"):
        m = _HEADER.match(line)
        if m:
            op, sender, receiver, kind = m.groups()
            if kind == "in":
                current = {"op": op, "sender": sender, "receiver": receiver, "in": [], "out": []}
                steps.append(current)
            target = current[kind]
            continue
        if current is None:
            header.append(line)
        else:
            target.append(line)
    for step in steps:
        step["in"] = "\n".join(step["in"]).strip()
        step["out"] = "\n".join(step["out"]).strip()
    return header, steps


def write(path: Path, header: list[str], steps: list[dict]) -> None:
    parts = ["\n".join(header).rstrip()]
    for s in steps:
        title = f"=== {s['op']} from {s['sender']}, to {s['receiver']}"
        parts.append(f"{title}: in\n{s['in']}\n{title}: out\n{s['out']}")
    path.write_text("\n".join(parts) + "\n")


@pytest.fixture(scope="module")
def engine():
    ns = NetNs(f"gwgold{os.getpid()}").create()
    ng = HostPort("127.0.0.1", 2223)
    cfg = load({"GW_MEDIA_IP": MEDIA_IP})
    log = Path(__file__).parent / "_artifacts" / "golden-rtpengine.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    daemon = stack.Daemon("rtpengine", ns.argv(stack.rtpengine_argv(cfg, ng, log_level=6,
                                                                    ports=(30000, 30100))), log)
    daemon.start()
    try:
        with ns.entered():
            stack.wait_for(lambda: stack.ng_ping(ng), 10, "rtpengine in namespace", daemon)
        yield ns, NgClient(ng.host, ng.port, 2.0)
    finally:
        daemon.stop()
        ns.delete()


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.sdp")), ids=lambda p: p.stem)
def test_golden(engine, path):
    ns, ng = engine
    header, steps = parse(path)
    cn = next((media.CnBlock(line.split(":", 1)[1].strip()) for line in header if line.startswith("cn:")),
              media.CnBlock.TRANSCODE)
    call_id = f"golden-{uuid.uuid4().hex}"
    # From-tag is the caller's; the module swaps tags for reply-borne offers, so
    # ng always sees "from-tag" = whoever sends the offer.
    caller = steps[0]["sender"]
    tags = {caller: "tag-" + caller, ("pbx" if caller == "phone" else "phone"): "tag-callee"}
    produced = []
    with ns.entered():
        try:
            for step in steps:
                op = Op(step["op"])
                receiver, sender = Side(step["receiver"]), Side(step["sender"])
                params = media.ng_params(media.flags(op, receiver, sender, cn))
                offerer = step["sender"] if op is Op.OFFER else step["receiver"]
                other = [t for s, t in tags.items() if s != offerer][0]
                cmd = {"command": op.value, "call-id": call_id, "sdp": step["in"].replace("\n", "\r\n") + "\r\n",
                       "from-tag": tags[offerer], "received-from": ["IP4", "127.0.0.1"], **params}
                if op is Op.ANSWER:
                    cmd["to-tag"] = other
                reply = ng.request(cmd)
                produced.append(normalize(reply["sdp"]))
        finally:
            ng.request({"command": "delete", "call-id": call_id, "from-tag": tags[caller]})
    if os.environ.get("GOLDEN_UPDATE"):
        for step, out in zip(steps, produced):
            step["out"] = out
        write(path, header, steps)
        pytest.skip(f"GOLDEN_UPDATE: rewrote {path.name}")
    for i, (step, out) in enumerate(zip(steps, produced)):
        assert step["out"], f"{path.name} step {i + 1}: no expected output (run with GOLDEN_UPDATE=1)"
        assert out == step["out"], f"{path.name} step {i + 1} ({step['op']} to {step['receiver']})"
    # What must hold whatever the golden text says: no CN toward the phone.
    for step, out in zip(steps, produced):
        if step["receiver"] == "phone":
            assert "CN/8000" not in out and not re.search(r"^m=audio \S+ \S+ .*\b13\b", out, re.M)
