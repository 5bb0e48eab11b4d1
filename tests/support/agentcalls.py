"""The two calls the reliability tests make through a gateway: an agent's WebRTC
phone calls the PBX, and the PBX calls the agent's DN; both hung up once answered."""
from __future__ import annotations

import asyncio
import time

from support.fakepbx import FakePbx
from support.wsphone import WsPhone, webrtc_sdp


async def call_out_timed(phone: WsPhone, timeout: float = 15) -> tuple[int, float, str]:
    """The agent calls the PBX: (status, seconds to the final answer, Call-ID)."""
    t0 = time.monotonic()
    call = await phone.invite("sip:2000@pbx.test", webrtc_sdp(), timeout=timeout)
    elapsed = time.monotonic() - t0
    status = call.response.status if call.response is not None else 0
    if status == 200:
        assert (await call.bye()).status == 200
    return status, elapsed, call.call_id


async def call_out(phone: WsPhone, timeout: float = 10) -> int:
    return (await call_out_timed(phone, timeout))[0]


async def call_in(pbx: FakePbx, gateway: tuple[str, int], phone: WsPhone) -> int:
    """The PBX calls the agent's DN through the gateway; the phone answers."""
    call = await asyncio.to_thread(pbx.call, gateway, phone.user)
    if call.status == 200:
        got = await phone.wait_incoming(5)
        await got.wait_confirmed()
        assert await asyncio.to_thread(call.bye) == 200
    return call.status
