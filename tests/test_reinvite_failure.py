"""A re-INVITE that fails (488, 491 glare, a timeout) leaves the call as it
was (RFC 3261 14.1): the gateway must not tear down the call's media with it,
nor report the call's quality before it ends. Real daemons; the PBX is
tests/support/fakepbx.py, the phone tests/support/wsphone.py."""
from __future__ import annotations

import asyncio

import pytest

from conftest import wait_until
from support.fakepbx import FakePbx
from support.wsphone import WsPhone, sdp_set_direction
from test_core_calls import chromium_sdp


@pytest.fixture
def pbx(gw):
    p = FakePbx(gw.pbx.host, gw.pbx.port)
    yield p
    p.close()


def quality_lines(gw, call_id: str) -> list[str]:
    return [ln for ln in gw.kamailio_log().splitlines()
            if "event=call.quality" in ln and f"call_id={call_id}" in ln]


@pytest.mark.parametrize("code", [488, 491])
def test_failed_reinvite_keeps_the_call_and_its_media(gw, pbx, code):
    async def go():
        phone = await WsPhone.connect(gw.ws_url, user="1201", domain="pbx.test")
        call = await phone.invite("sip:2000@pbx.test", chromium_sdp())
        assert (await call.wait_final()).status == 200
        call_id = call.call_id
        assert call_id in gw.ng().list_calls()
        pbx.invite_code = code           # the PBX refuses the hold
        resp = await call.reinvite(sdp_set_direction(chromium_sdp(), "sendonly"))
        assert resp.status == code, resp.summary()
        # The call and its media are still there, and not reported as ended.
        kept = call_id in gw.ng().list_calls()
        early_quality = quality_lines(gw, call_id)
        pbx.invite_code = 200
        resume = await call.reinvite(chromium_sdp())
        bye = await call.bye()
        await phone.close()
        return call_id, kept, early_quality, resume.status, bye.status

    call_id, kept, early_quality, resumed, bye = asyncio.run(go())
    assert kept, "a failed re-INVITE deleted the call's rtpengine session"
    assert early_quality == [], early_quality
    assert resumed == 200 and bye == 200
    wait_until(lambda: call_id not in gw.ng().list_calls(), 5, "session deleted after BYE")
