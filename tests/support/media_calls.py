"""Media call scenarios for the end-to-end media tests: a real WebRTC phone
(webrtc_phone.py) and a plain-RTP PBX (rtp_pbx.py) through a running gateway.

A Scenario is one call: who calls whom (phone -> PBX, PBX -> phone, or the
PBX's offerless 3PCC INVITE), what the PBX plays, an optional script run while
the call is up (hold/resume, DTMF), and who hangs up. run_all() runs several
scenarios at once on one asyncio loop (the box has 2 cores and the calls are
long), and each keeps what the tests need: the call and PBX leg with every
packet both ends received, time marks, SIP statuses, DTLS/ICE events, and
whether rtpengine still holds the call after the BYE, and rtpengine's `query`
of the call just before it."""
from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from gw.ctl.call import find
from kemi import settings as settings_mod
from support.rtp_pbx import MediaPlan, PbxLeg, RtpPbx
from support.rtpaudio import Flow, flow
from support.waits import wait_until
from support.webrtc_phone import PhoneCall, WebRtcPhone

PHONE_TONE = 1000.0
PBX_TONE = 440.0


@dataclass
class Scenario:
    name: str
    order: str                                   # "phone->pbx" | "pbx->phone" | "3pcc"
    dn: str                                      # the agent's DN (phone registers it)
    plan: MediaPlan = field(default_factory=lambda: MediaPlan(freq=PBX_TONE))
    talk: float = 10.0                           # seconds of media after DTLS is up (no script)
    script: Callable[["Scenario"], Awaitable[None]] | None = None
    hangup: str = "pbx"                          # who sends the BYE
    mdns: bool = False                           # Chrome-style mDNS candidates, c=0.0.0.0, port 9
    offer_cn: bool = True                        # the phone offers CN 13 (Chrome does)
    call_id: str | None = None                   # the phone's Call-ID (phone->pbx), else random
    # results
    phone: WebRtcPhone | None = None
    call: PhoneCall | None = None
    leg: PbxLeg | None = None
    marks: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    in_rtpengine: bool = False                   # rtpengine had the call while it was up
    left_in_rtpengine: bool | None = None        # ... and still had it after the BYE
    error: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str) -> float:
        self.marks[name] = time.monotonic()
        return self.marks[name]

    # ---------------------------------------------------------------- analysis
    def up_flow(self, t0: float, t1: float) -> Flow:
        """phone -> PBX: the frames the phone sent in [t0, t1) (its clock)"""
        return flow(self.call.media.tx, self.leg.ep.rx, t0, t1)

    def down_flow(self, t0: float, t1: float) -> Flow:
        """PBX -> phone"""
        return flow(self.leg.ep.tx, self.call.media.rx, t0, t1)

    def check(self) -> None:
        if self.error:
            raise AssertionError(f"scenario {self.name} failed to run:\n{self.error}")


async def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """wait_until in a worker thread: the event loop goes on carrying the call meanwhile
    (the checks only read state)."""
    return await asyncio.to_thread(wait_until, check, timeout, what)


async def run_scenario(sc: Scenario, stack: Any, pbx: RtpPbx) -> Scenario:
    try:
        await _run(sc, stack, pbx)
    except BaseException:  # kept for the test that asserts on this scenario
        sc.error = traceback.format_exc()
        await _hang_up_anyway(sc)
    finally:
        if sc.phone is not None:
            try:
                await sc.phone.close()
            except Exception:
                pass
    return sc


async def _run(sc: Scenario, stack: Any, pbx: RtpPbx) -> None:
    # A stack may bring its own phone class (the deploy test's: WSS through nginx, with an Origin).
    phone_cls = getattr(stack, "phone_class", WebRtcPhone)
    sc.phone = phone_cls(stack.ws_url, sc.dn, freq=PHONE_TONE, mdns=sc.mdns, offer_cn=sc.offer_cn)
    await sc.phone.connect()
    sc.statuses["register"] = await sc.phone.register()
    assert sc.statuses["register"] == 200, f"REGISTER got {sc.statuses['register']}"
    sc.mark("start")
    gateway = (stack.sip.host, stack.sip.port)
    if sc.order == "phone->pbx":
        target = f"2{sc.dn}"
        pbx.plans[target] = sc.plan
        sc.call = await sc.phone.call(target, call_id=sc.call_id)
        sc.statuses["invite"] = sc.call.status
        assert sc.call.status == 200, f"INVITE got {sc.call.status}"
        sc.leg = await _wait(lambda: pbx.legs.get(sc.call.call_id), 5, "the call at the PBX")
    else:
        sc.leg = await asyncio.to_thread(pbx.dial, gateway, sc.dn, plan=sc.plan,
                                         offer=(sc.order == "pbx->phone"))
        sc.statuses["invite"] = sc.leg.status
        assert sc.leg.status == 200, f"INVITE got {sc.leg.status}"
        sc.call = await sc.phone.next_incoming(5)
        assert sc.call is not None and sc.call.call_id == sc.leg.call_id, "the phone never got the call"
    await _wait(lambda: sc.call.media.connected_at, 10, "ICE + DTLS between the phone and rtpengine")
    sc.marks["connected"] = sc.call.media.connected_at
    sc.in_rtpengine = sc.call.call_id in stack.ng().list_calls()
    if sc.script is not None:
        await sc.script(sc)
    else:
        await asyncio.sleep(sc.talk)
    # How rtpengine relays this call, after media (the PBX's CN included) flowed:
    # its per-media flags say "transcoding" when a codec handler transcodes.
    # (from whichever GW_RTPENGINE holds the call, as gwctl call finds it)
    engines = settings_mod.load(stack.env)
    sc.notes["rtpengine_query"] = (await asyncio.to_thread(find, engines, sc.call.call_id))[1]
    bye_at = sc.mark("bye")
    sc.notes["dtls_state_at_bye"] = sc.call.media.dtls_state()
    sc.notes["failures_before_bye"] = [(round(t - sc.marks["connected"], 3), k, s)
                                       for t, k, s in sc.call.media.failures_before(bye_at)]
    if sc.hangup == "phone":
        sc.statuses["bye"] = await sc.call.bye()
        await _wait(lambda: sc.leg.ended.is_set(), 5, "the BYE at the PBX")
    else:
        sc.statuses["bye"] = await asyncio.to_thread(sc.leg.bye)
        await _wait(lambda: sc.call.ended.is_set(), 5, "the BYE at the phone")
    call_id = sc.call.call_id
    try:
        await _wait(lambda: call_id not in stack.ng().list_calls(), 3, "rtpengine to drop the call")
        sc.left_in_rtpengine = False
    except AssertionError:
        sc.left_in_rtpengine = True
    sc.leg.ep.stop()


async def _hang_up_anyway(sc: Scenario) -> None:
    """A scenario that failed half-way still ends its call, so that rtpengine
    is not left holding it for the rest of the suite."""
    try:
        if sc.leg is not None and sc.leg.dialog is not None and not sc.leg.ended.is_set():
            await asyncio.to_thread(sc.leg.bye)
        elif sc.call is not None and sc.call.dialog is not None and not sc.call.ended.is_set():
            await sc.call.bye()
    except Exception:
        pass
    if sc.leg is not None:
        sc.leg.ep.stop()


async def run_all(scenarios: list[Scenario], stack: Any, pbx: RtpPbx, stagger: float = 0.3) -> None:
    async def delayed(i: int, sc: Scenario) -> Scenario:
        await asyncio.sleep(i * stagger)
        return await run_scenario(sc, stack, pbx)
    await asyncio.gather(*(delayed(i, sc) for i, sc in enumerate(scenarios)))


# ------------------------------------------------------------------ scripts
def hold_resume(who: str, style: str = "sendonly", talk: float = 3.0, held: float = 3.0,
                after: float = 4.0) -> Callable[[Scenario], Awaitable[None]]:
    """Talk, hold by re-INVITE from `who` ("pbx" or "phone"), resume, talk."""

    async def script(sc: Scenario) -> None:
        await asyncio.sleep(talk)
        for step, done, direction, then in (("hold", "held", style, held),
                                            ("resume", "resumed", "sendrecv", after)):
            sc.mark(step)
            if who == "pbx":
                sc.statuses[step] = await asyncio.to_thread(sc.leg.reinvite, direction)
            else:
                sc.statuses[step] = await (sc.call.hold() if step == "hold" else sc.call.resume())
            sc.mark(done)
            sc.notes[f"{done}_sdp_to_phone"] = sc.call.sdps_in[-1].direction
            sc.notes[f"{done}_sdp_to_pbx"] = sc.leg.remote_sdps[-1].direction
            await asyncio.sleep(then)

    return script


def send_digits(digits: str, before: float = 1.0, after: float = 1.5) -> Callable[[Scenario], Awaitable[None]]:
    async def script(sc: Scenario) -> None:
        await asyncio.sleep(before)
        sc.mark("dtmf")
        sc.call.send_dtmf(digits)
        await _wait(sc.call.media.dtmf_done, 15, "the phone to send its digits")
        sc.mark("dtmf_done")
        await asyncio.sleep(after)

    return script
