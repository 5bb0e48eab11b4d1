"""One complete call each way through a gateway, checked at both ends:
phone -> PBX (INVITE/200/ACK/BYE) and PBX -> phone by DN. Used by the
reliability tests to prove "a normal call still succeeds" after each fault."""
from __future__ import annotations

import time

from support.fakepbx import FakePbx
from support.wsphone import BlockingPhone


def _wait(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


def outbound(phone: BlockingPhone, pbx: FakePbx, dn: str = "2000", timeout: float = 5.0) -> str:
    """Phone calls the PBX. Returns "ok" or what went wrong."""
    call = phone.call(dn, timeout=timeout)
    if call.status != 200:
        return f"INVITE got {call.status or 'no final response'}"
    if not _wait(lambda: call.invite.call_id in pbx.acked, timeout):
        return "ACK never reached the PBX"
    status = call.bye(timeout)
    if status != 200:
        return f"BYE got {status or 'no response'}"
    if call.invite.call_id not in pbx.byes:
        return "BYE never reached the PBX"
    return "ok"


def inbound(pbx: FakePbx, gateway: tuple[str, int], phone: BlockingPhone, dn: str | None = None,
            timeout: float = 5.0) -> str:
    """The PBX calls the agent's DN at `gateway`. Returns "ok" or what went wrong."""
    dn = dn or phone.user
    call = pbx.call(gateway, dn, timeout=timeout)
    if call.status != 200:
        return f"INVITE got {call.status or 'no final response'}"
    got = phone.next_incoming(timeout)
    if got is None or got.invite.call_id != call.invite.call_id:
        return "the phone never saw the INVITE"
    if not got.acked.wait(timeout):
        return "ACK never reached the phone"
    status = call.bye(timeout)
    if status != 200:
        return f"BYE got {status or 'no response'}"
    if not got.ended.wait(timeout):
        return "BYE never reached the phone"
    return "ok"
