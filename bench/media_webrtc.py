"""make bench, WebRTC media section: what one gateway media relay carries when
the phones are real WebRTC endpoints, and what keeping comfort noise (CN, RTP
payload type 13) from them costs.

Every call is a real WebRTC call on the phone leg, ICE + DTLS-SRTP (the phones
are a second rtpengine, webrtc_peers.PhoneSide: full ICE, DTLS fingerprint
checked, SRTP both ways), and plain RTP on the PBX leg; G.711 20 ms both ways,
and the PBX sends CN in its silences without ever declaring it (media_gen.py).
Calls are set up over ng with exactly the gateway's flags (kemi/media.py),
phone -> PBX. Variants, the same calls on the same relay, side by side:

  filter      the product: plain relay flags (codec-strip=CN) + the nftables CN
              filter in front of the relay's ports (rtpengine/cn-filter.sh)
  plain       plain relay flags without any CN handling, no filter (CN leaks:
              the cost floor the filter path is measured against)
  transcoder  the fallback without the filter: rtpengine decodes CN
  janus       the same calls through Janus 1.1.2 (SIP plugin) instead of
              Kamailio + rtpengine, the same PBX emulator behind it

Everything runs in a network namespace of its own (loopback plus a veth pair
holding 198.18.12.1, the address ICE uses: Janus gathers no candidates on
loopback), so the filter and all the traffic stay there. CPU is read from
/proc (all threads) over the measured window only, after warm-up.

Settings (environment): BENCH_WEBRTC_CALLS (ramp of the filter variant, calls),
BENCH_WEBRTC_N (calls in the side-by-side comparison), BENCH_WEBRTC_S (measured
seconds per step), BENCH_WEBRTC_ROUNDS (comparison rounds, interleaved),
BENCH_WEBRTC_VARIANTS, BENCH_WEBRTC_COST_ROUNDS (rounds of the filter's own cost).
"""
from __future__ import annotations

import os
import secrets
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))          # support.netns: the namespace helper the tests use

from bench import filter_cost, media_gen, webrtc_peers  # noqa: E402
from bench.stacks import proc_cpu  # noqa: E402
from gw import cnfilter  # noqa: E402
from kemi import media  # noqa: E402
from kemi.media import CnBlock, Op, Side  # noqa: E402
from support.netns import NetNs  # noqa: E402

VARIANTS = ("filter", "plain", "transcoder", "janus")
ICE_IP = "198.18.12.1"            # RFC 2544 benchmarking range, only inside our namespace
GEN_IP = "127.0.0.1"
RELAY_PORTS = (10000, 14999)      # below the namespace's ephemeral range (the generator's sockets)
PHONE_PORTS = (15000, 19999)
JANUS_ICE_PORTS = (20000, 24999)
JANUS_SIP_PORTS = (25000, 29999)
TARGET_RATIO = 1.1
LABELS = {"filter": "gateway, CN filter (product)", "plain": "gateway, plain relay, no CN handling",
          "transcoder": "gateway, CN transcoder (fallback)", "janus": "Janus 1.1.2 SIP plugin (peer)"}


def _env(name: str, full: str, quick: str, smoke: str) -> str:
    mode = "smoke" if os.environ.get("BENCH_SMOKE") == "1" else (
        "quick" if os.environ.get("BENCH_QUICK") == "1" else "full")
    return os.environ.get(name) or {"full": full, "quick": quick, "smoke": smoke}[mode]


@dataclass
class Settings:
    ramp: list[int]
    compare: int
    seconds: float
    rounds: int
    variants: list[str]
    cost_rounds: int = 9
    warm: float = 2.0

    @classmethod
    def from_env(cls) -> "Settings":
        ints = lambda text: [int(x) for x in text.replace(",", " ").split()]  # noqa: E731
        return cls(ramp=ints(_env("BENCH_WEBRTC_CALLS", "100,200,300,400,600,800,1000", "50,100,200", "4")),
                   compare=int(_env("BENCH_WEBRTC_N", "150", "60", "4")),
                   seconds=float(_env("BENCH_WEBRTC_S", "8", "4", "2")),
                   rounds=int(_env("BENCH_WEBRTC_ROUNDS", "3", "1", "1")),
                   variants=_env("BENCH_WEBRTC_VARIANTS", ",".join(VARIANTS), ",".join(VARIANTS),
                                 ",".join(VARIANTS)).split(","),
                   cost_rounds=int(_env("BENCH_WEBRTC_COST_ROUNDS", "9", "5", "3")))


@dataclass
class Step:
    variant: str
    calls: int
    seconds: float
    phase: str                         # "ramp" or "compare"
    setup_failed: int = 0
    setup_error: str = ""
    relay_cpu: float = 0.0             # the relay's CPU over the window (rtpengine or Janus), seconds
    setup_cpu: float = 0.0             # the relay's CPU while the calls were set up
    phone_cpu: float = 0.0             # the phone emulator (second rtpengine) over the window
    transcoding_calls: int = 0         # calls whose `query` shows a transcoding media (rtpengine)
    gen: media_gen.GenResult = field(default_factory=media_gen.GenResult)

    @property
    def ms_per_call_s(self) -> float:
        return 1000 * self.relay_cpu / (self.calls * self.seconds) if self.calls and self.seconds else 0.0

    @property
    def relay_packets(self) -> int:
        """Packets the relay itself received in the window (the filter drops CN before it)."""
        return self.gen.packets_in - (self.gen.cn_window if self.variant == "filter" else 0)

    @property
    def us_per_packet(self) -> float:
        return 1e6 * self.relay_cpu / self.relay_packets if self.relay_packets else 0.0

    @property
    def setup_us(self) -> float:
        return 1e6 * self.setup_cpu / self.calls if self.calls else 0.0

    @property
    def clean(self) -> bool:
        """No failed set-up, no loss, and a generator that kept pace (else the
        step measured the generator, not the relay)."""
        return not self.setup_failed and self.gen.lost == 0 and self.gen.sent_up > 0 and self.generator_ok

    @property
    def generator_ok(self) -> bool:
        """The generator kept its 20 ms pace (a tick started over 20 ms late at most
        once in a hundred: a shared box preempts now and then), and the phones'
        rtpengine had CPU to spare."""
        return self.gen.late_ticks <= 0.01 * self.gen.ticks and self.phone_cpu / self.seconds < 0.9


class Bench:
    """The namespace, the relay under test, the phones, Janus and the PBX."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]) -> None:
        self.run_dir = run_dir
        self.log = log
        self.ns = NetNs(f"gwbench{os.getpid() % 100000}")
        self.stack = ExitStack()
        self.janus: Optional[webrtc_peers.JanusServer] = None
        self.janus_error = ""
        self.filter_on = False

    # ------------------------------------------------------------ set-up
    def start(self, want_janus: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ns = self.ns.create()
        self.stack.callback(ns.delete)
        ns.run(["ip", "link", "add", "gwb0", "type", "veth", "peer", "name", "gwb1"])
        ns.run(["ip", "addr", "add", f"{ICE_IP}/32", "dev", "gwb0"])
        for dev in ("gwb0", "gwb1"):
            ns.run(["ip", "link", "set", dev, "up"])
        self.stack.enter_context(ns.entered())      # this thread, its forks and sockets: in the namespace
        self.relay, self.relay_ng = self._rtpengine("relay", RELAY_PORTS)
        phone, phone_ng = self._rtpengine("phones", PHONE_PORTS)
        self.phones = webrtc_peers.PhoneSide(phone_ng)
        self.phone_daemon = phone
        self.uas = webrtc_peers.SipUas(GEN_IP)
        self.stack.callback(self.uas.close)
        if want_janus:
            self.janus_error = webrtc_peers.janus_available() or ""
            if not self.janus_error:
                try:
                    self.janus = webrtc_peers.JanusServer.start(self.run_dir, JANUS_ICE_PORTS, JANUS_SIP_PORTS,
                                                                ICE_IP, wrap=ns.argv)
                    self.stack.callback(self.janus.stop)
                except Exception as exc:  # noqa: BLE001 - reported, the other variants still run
                    self.janus_error = f"Janus did not start: {exc}"
            if self.janus_error:
                self.log(f"webrtc media: {self.janus_error}")

    def _rtpengine(self, name: str, ports: tuple[int, int]):
        d, ng = webrtc_peers.start_rtpengine(name, self.run_dir, ports, interface=ICE_IP, wrap=self.ns.argv)
        self.stack.callback(d.stop)
        return d, ng

    def stop(self) -> None:
        self._filter(False)
        self.stack.close()

    def _filter(self, on: bool) -> None:
        if on == self.filter_on:
            return
        if on:
            cnfilter.install(RELAY_PORTS, "make bench", self.ns.argv)
        else:
            cnfilter.remove(RELAY_PORTS, self.ns.argv)
        self.filter_on = on

    # ------------------------------------------------------------ one step
    def step(self, variant: str, calls: int, seconds: float, warm: float, phase: str) -> Step:
        st = Step(variant, calls, seconds, phase)
        self._filter(variant == "filter")
        legs: list[media_gen.Leg] = []
        ids: list[str] = []
        relay_pid = self.janus.daemon.pid if variant == "janus" else self.relay.pid
        tag = secrets.token_hex(3)
        cpu0 = proc_cpu(relay_pid)
        try:
            for i in range(calls):
                # Listed first: a call whose set-up fails half-way still has
                # sessions to delete at the end.
                ids.append(f"{variant}-{tag}-{i}")
                try:
                    legs.append(self._call(variant, f"{variant}-{tag}-{i}", i))
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    st.setup_failed += 1
                    st.setup_error = st.setup_error or str(exc)[:300]
            st.setup_cpu = proc_cpu(relay_pid) - cpu0
            marks: dict[str, tuple[float, float]] = {}

            def window(edge: str) -> None:
                marks[edge] = (proc_cpu(relay_pid), proc_cpu(self.phone_daemon.pid))
            if legs:
                st.gen = media_gen.run(legs, warm + 0.01 * calls, seconds, procs=2, on_window=window)
                if "end" in marks:
                    st.relay_cpu = marks["end"][0] - marks["start"][0]
                    st.phone_cpu = marks["end"][1] - marks["start"][1]
            if variant != "janus":
                st.transcoding_calls = sum(self._transcodes(cid) for cid in ids)
        finally:
            self._hang_up(variant, ids, legs)
        return st

    def _call(self, variant: str, call_id: str, i: int) -> media_gen.Leg:
        """One phone -> PBX call; returns its two generator sockets, connected."""
        phone = media_gen.new_socket(GEN_IP)
        pbx = media_gen.new_socket(GEN_IP)
        ssrc = int.from_bytes(os.urandom(4), "big") & 0xFFFFFFFE
        try:
            # What a browser offers (CN 13 included, as Chrome does), through the phones' rtpengine.
            offer = self.phones.offer(call_id, webrtc_peers.plain_sdp(GEN_IP, phone.getsockname()[1],
                                                                      (0, 13, 101), ssrc))
            if variant == "janus":
                assert self.janus is not None
                user = f"2{i:05d}"
                self.uas.expect(user, pbx.getsockname())
                _, answer = self.janus.call(user, (self.uas.host, self.uas.port), offer)
                pbx.connect(self.uas.remote[user])
            else:
                to_pbx, answer = self._relay(variant, call_id, offer, pbx.getsockname()[1])
                pbx.connect(webrtc_peers.media_addr(to_pbx))
            phone.connect(webrtc_peers.media_addr(self.phones.answer(call_id, answer)))
        except Exception:
            phone.close()
            pbx.close()
            raise
        return media_gen.Leg(phone, pbx, ssrc)

    def _relay(self, variant: str, call_id: str, offer: str, pbx_port: int) -> tuple[str, str]:
        """The gateway's offer (phone -> PBX) and answer (PBX -> phone) with the
        variant's flags; the PBX answers PCMU + telephone-event, never CN."""
        cn = CnBlock.TRANSCODE if variant == "transcoder" else CnBlock.FILTER

        def params(op: Op, receiver: Side, sender: Side) -> dict[str, Any]:
            flags = media.flags(op, receiver, sender, cn)
            if variant == "plain":
                flags = media.Flags(tuple(t for t in flags.tokens if not t.startswith("codec-")))
            return media.ng_params(flags)

        r = self.relay_ng.request({"command": "offer", "call-id": call_id, "from-tag": "phone",
                                   "sdp": media.rtpengine_sdp(offer, Side.PHONE, cn),
                                   **params(Op.OFFER, Side.PBX, Side.PHONE)})
        to_pbx = r["sdp"]
        pbx_sdp = webrtc_peers.plain_sdp(GEN_IP, pbx_port, (0, 101))
        r = self.relay_ng.request({"command": "answer", "call-id": call_id, "from-tag": "phone", "to-tag": "pbx",
                                   "sdp": media.rtpengine_sdp(pbx_sdp, Side.PBX, cn),
                                   **params(Op.ANSWER, Side.PHONE, Side.PBX)})
        return to_pbx, r["sdp"]

    def _transcodes(self, call_id: str) -> bool:
        try:
            q = self.relay_ng.query(call_id)
        except Exception:  # noqa: BLE001
            return False
        return any("transcoding" in (m.get("flags") or []) for t in (q.get("tags") or {}).values()
                   for m in t.get("medias") or [])

    def _hang_up(self, variant: str, ids: list[str], legs: list[media_gen.Leg]) -> None:
        if variant == "janus" and self.janus is not None:
            self.janus.hangup_all()
        for cid in ids:
            if variant != "janus":
                try:
                    self.relay_ng.request({"command": "delete", "call-id": cid})
                except Exception:  # noqa: BLE001 - teardown
                    pass
            self.phones.delete(cid)
        time.sleep(0.5)                 # Janus's BYEs, rtpengine's ICE/DTLS teardown
        for leg in legs:
            leg.phone.close()
            leg.pbx.close()


# ====================================================================== the section
def run(run_dir: Path, log: Callable[[str], None]) -> dict:
    cfg = Settings.from_env()
    b = Bench(run_dir, log)
    out: dict[str, Any] = {"settings": cfg, "steps": [], "janus_error": ""}
    try:
        b.start("janus" in cfg.variants)
        out["janus_error"] = b.janus_error
        log(f"=== WebRTC media: ramp of the filter variant {cfg.ramp}, then {cfg.compare} calls x "
            f"{cfg.variants} x {cfg.rounds} round(s), {cfg.seconds:g} s measured each")
        for n in cfg.ramp:
            st = b.step("filter", n, cfg.seconds, cfg.warm, "ramp")
            if not st.clean:
                log(f"webrtc media filter {n} calls: {_brief(st)}: once more")
                out["steps"].append(st)
                st = b.step("filter", n, cfg.seconds, cfg.warm, "ramp")
            out["steps"].append(st)
            log(f"webrtc media filter {n} calls: {_brief(st)}")
            if not st.clean:
                break
        for r in range(cfg.rounds):
            order = cfg.variants if r % 2 == 0 else list(reversed(cfg.variants))
            for v in order:
                if v == "janus" and b.janus is None:
                    continue
                st = b.step(v, cfg.compare, cfg.seconds, cfg.warm, "compare")
                out["steps"].append(st)
                log(f"webrtc media {v} {cfg.compare} calls (round {r + 1}): {_brief(st)}")
        if "filter" in cfg.variants:
            out["filter_cost"] = filter_cost.measure(RELAY_PORTS, b.ns.argv, RELAY_PORTS[1],
                                                     rounds=cfg.cost_rounds)
            log(f"webrtc media: the nftables filter costs {out['filter_cost']['ns_per_packet']:.0f} ns per "
                f"packet to rtpengine's ports (x{filter_cost.AMPLIFY} amplified; the table alone "
                f"{out['filter_cost']['ns_shipped_direct']:+.0f} ns)")
    finally:
        b.stop()
    return out


def _brief(st: Step) -> str:
    g = st.gen
    return (f"{st.ms_per_call_s:.2f} ms CPU per call-second, loss {g.lost}/{g.sent_up + g.sent_down} "
            f"({g.calls_with_loss} calls), PT 13 at phones {g.cn_at_phone}/{g.cn_sent}, "
            f"setup {st.setup_us:,.0f} us/call, failed setups {st.setup_failed}"
            f"{' (' + st.setup_error + ')' if st.setup_error else ''}, transcoding calls {st.transcoding_calls}, "
            f"phones' rtpengine {st.phone_cpu / st.seconds:.2f} cores, generator late ticks {g.late_ticks}")


def _median(steps: list[Step], attr: str) -> Optional[float]:
    vals = [getattr(s, attr) for s in steps]
    return statistics.median(vals) if vals else None


def compare_table(res: dict) -> dict[str, dict[str, Any]]:
    """Per variant: medians over the comparison rounds."""
    out: dict[str, dict[str, Any]] = {}
    for v in VARIANTS:
        steps = [s for s in res.get("steps", []) if s.phase == "compare" and s.variant == v]
        if not steps:
            continue
        pps = statistics.median(s.gen.packets_in / (s.calls * s.seconds) for s in steps)
        out[v] = {"steps": steps, "ms": _median(steps, "ms_per_call_s"), "setup_us": _median(steps, "setup_us"),
                  "us_per_packet": _median(steps, "us_per_packet"), "pps_in": pps,
                  "lost": sum(s.gen.lost for s in steps), "sent": sum(s.gen.sent_up + s.gen.sent_down for s in steps),
                  "cn_at_phone": sum(s.gen.cn_at_phone for s in steps), "cn_sent": sum(s.gen.cn_sent for s in steps),
                  "transcoding": sum(s.transcoding_calls for s in steps), "calls": steps[0].calls,
                  "rounds": len(steps), "all": [round(s.ms_per_call_s, 2) for s in steps]}
    return out


def best_clean(res: dict) -> tuple[Optional[Step], Optional[Step]]:
    """The ramp's largest clean step, and the step that ended the ramp (None: it never failed)."""
    ramp = [s for s in res.get("steps", []) if s.phase == "ramp"]
    clean = [s for s in ramp if s.clean]
    best = max(clean, key=lambda s: s.calls) if clean else None
    last = ramp[-1] if ramp else None
    return best, (last if last is not None and not last.clean else None)


def filter_ms(res: dict, pps_in: float) -> float:
    """The nftables filter's own cost per call-second: its ns per packet times
    the packets a call sends to the relay's ports per second (both legs)."""
    cost = res.get("filter_cost")
    return cost["ns_per_packet"] * pps_in / 1e6 if cost else 0.0


def summary_rows(res: dict) -> list[list[str]]:
    """Rows for make bench's summary table: metric, value, (empty), ratio, target, met."""
    rows: list[list[str]] = []
    best, bad = best_clean(res)
    if best is not None or bad is not None:
        txt = (f"{best.calls:,}" if best else "0") + ("" if bad else "+")
        if bad is not None and not bad.generator_ok:
            txt += f"+ (the generator fell behind at {bad.calls:,}: not the relay's limit)"
        elif bad is not None:
            txt += f" (loss at {bad.calls:,})"
        rows.append(["WebRTC calls (ICE + DTLS-SRTP phones, PBX sends CN) with 0 loss, CN filter path "
                     "(shared 2-core box: relay + phones' rtpengine + generator)", txt, "", "", "", ""])
    cmp = compare_table(res)
    f, p, t, j = (cmp.get(v) for v in VARIANTS)
    if f and p and p["ms"]:
        total = f["ms"] + filter_ms(res, f["pps_in"])
        ratio = total / p["ms"]
        rows.append([f"CPU ms per WebRTC call-second @ {f['calls']} calls: CN filter path (rtpengine + "
                     "nftables) / plain relay without CN handling", f"{total:.2f} / {p['ms']:.2f}", "",
                     f"{ratio:.2f}", f"<= {TARGET_RATIO}", "yes" if ratio <= TARGET_RATIO else "**no**"])
    if t and p and p["ms"]:
        rows.append(["... CN transcoder path (fallback without the filter) / plain relay", f"{t['ms']:.2f}", "",
                     f"{t['ms'] / p['ms']:.2f}", "", ""])
    if j and f and f["ms"]:
        total = f["ms"] + filter_ms(res, f["pps_in"])
        rows.append(["Janus 1.1.2 (SIP plugin) CPU ms per call-second, same calls / CN filter path",
                     f"{j['ms']:.2f}", "", f"{j['ms'] / total:.2f}", "", ""])
    return rows


def report_md(res: dict) -> list[str]:
    cfg: Settings = res["settings"]
    md = ["## Media, WebRTC phones (ICE + DTLS-SRTP) to a plain-RTP PBX", "",
          "Each call: the phone leg is real WebRTC (a second rtpengine plays the browsers: full ICE, DTLS-SRTP "
          "with the fingerprint checked, SRTP both ways), the PBX leg plain RTP; PCMU 20 ms both ways, and the PBX "
          "sends CN (PT 13) in every 20 ms of its silences (1 s audio / 0.6 s silence) without declaring it. "
          "Calls are set up over ng with the gateway's own flags (kemi/media.py), phone -> PBX; the relay under "
          "test is a userspace rtpengine (`--table=-1`, 2 threads) as make run starts it, in a network namespace "
          "of the bench's own. CPU: the relay's /proc time (all threads) over the measured window, after "
          f"{cfg.warm:g} s (+10 ms per call) of warm-up; per call-second = CPU / (calls x {cfg.seconds:g} s). "
          "Loss: marked audio packets that did not arrive, both directions. The generator (2 processes) and the "
          "phones' rtpengine run on the same box: a step where the generator fell behind or the phones' rtpengine "
          "neared a full core is marked. The plain relay relays the PBX's CN too (it reaches the phones); the "
          "filter path's relay never sees it, hence the per-packet column.", ""]
    cmp = compare_table(res)
    cost = res.get("filter_cost")
    if cmp:
        md += [f"### Side by side: {cfg.compare} concurrent calls, {cfg.rounds} interleaved round(s), medians", ""]
        hdr = ["variant", "CPU ms per call-second", "ratio to plain relay", "each round",
               "relay us per packet it received", "setup us per call", "loss",
               "PT 13 at the phones / sent by the PBX", "calls transcoding (rtpengine query)"]
        rows = []
        plain = cmp.get("plain", {}).get("ms")
        for v, c in cmp.items():
            ms = c["ms"] + (filter_ms(res, c["pps_in"]) if v == "filter" else 0.0)
            shown = f"{ms:.2f}" + (f" ({c['ms']:.2f} rtpengine + {ms - c['ms']:.3f} nftables)"
                                   if v == "filter" and cost else "")
            rows.append([LABELS[v], shown, f"{ms / plain:.2f}" if plain else "",
                         " / ".join(f"{x:.2f}" for x in c["all"]), f"{c['us_per_packet']:.1f}",
                         f"{c['setup_us']:,.0f}", f"{c['lost']}/{c['sent']}", f"{c['cn_at_phone']}/{c['cn_sent']}",
                         "n/a" if v == "janus" else str(c["transcoding"])])
        md += [_table(hdr, rows), ""]
    if cost:
        md += [f"The nftables filter itself (kernel, not in rtpengine's time): {cost['ns_per_packet']:.0f} ns per "
               f"packet sent to the relay's ports: the sender's CPU per 172-byte packet over loopback was "
               f"{cost['send_ns_without']:.0f} ns without the table and {cost['send_ns_amplified']:.0f} ns with "
               f"{filter_cost.AMPLIFY} copies of its chain (the shipped table alone: {cost['send_ns_with']:.0f} ns, "
               f"{cost['ns_shipped_direct']:+.0f} ns, within this box's noise); medians of {cost['rounds']} "
               f"interleaved rounds of {cost['count']:,} packets. Counted in the filter path's CPU above at the "
               "packets a call sends to the relay's ports per second (both legs, CN included).", ""]
    if res.get("janus_error"):
        md += [f"Janus not measured: {res['janus_error']}", ""]
    hdr = ["phase", "variant", "calls", "seconds", "relay CPU ms per call-second", "relay cores",
           "relay us per packet", "loss", "calls with loss", "PT 13 at phones", "failed setups",
           "phones' rtpengine cores", "generator cores", "generator late ticks", "clean"]
    rows = []
    for s in res.get("steps", []):
        g = s.gen
        rows.append([s.phase, s.variant, str(s.calls), f"{s.seconds:g}", f"{s.ms_per_call_s:.2f}",
                     f"{s.relay_cpu / s.seconds:.2f}", f"{s.us_per_packet:.1f}", f"{g.lost}/{g.sent_up + g.sent_down}",
                     str(g.calls_with_loss), str(g.cn_at_phone), str(s.setup_failed),
                     f"{s.phone_cpu / s.seconds:.2f}", f"{g.cpu / (g.ticks * media_gen.PTIME) if g.ticks else 0.0:.2f}", str(g.late_ticks),
                     ("yes" if s.clean else "no") + ("" if s.generator_ok else " (generator-limited)")])
    md += ["### Every step", "", _table(hdr, rows), ""]
    return md


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main() -> int:
    """python -m bench.media_webrtc: this section alone (same settings), report on stdout."""
    t0 = time.monotonic()
    run_dir = Path(os.environ.get("BENCH_RUN_DIR") or ROOT / "bench" / "_runs" / time.strftime("%Y%m%d-%H%M%S"))
    run_dir = run_dir / "webrtc"

    def log(text: str) -> None:
        print(f"[webrtc {time.monotonic() - t0:6.1f}s] {text}", flush=True)
    res = run(run_dir, log)
    print("\n".join(report_md(res)))
    for row in summary_rows(res):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
