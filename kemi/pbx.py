"""Several PBXs (GW_PBX, in priority order): what the routing decides about
them without Kamailio. Kamailio's dispatcher module holds the list (set
settings.PBX_SET, the file gw/stack.py writes from the settings) and probes
it; kemi/app.py asks it for the first PBX up and hands back one that failed.
"""
from __future__ import annotations

import socket
from typing import Iterable, Optional

BY_PRIORITY = 8   # ds_select_dst algorithm: the first PBX up, in GW_PBX order
# With another PBX to fail over to, one that has not even sent 100 Trying after
# 3 s (three UDP retransmissions) is taken for dark, so the next one still
# answers within the 8 s an agent waits. A provisional reply switches to
# fr_inv_timer (60 s, kamailio.cfg): a ringing call is never moved.
SILENT_MS = 3000


def failover_reason(status: int, timed_out: bool, replied: bool) -> Optional[str]:
    """Why the next PBX gets the request (MANAGE_FAILURE), or None: nothing came
    back at all (a dark PBX), or a 5xx. A branch that got a provisional reply
    before it timed out was ringing: the call is not offered twice."""
    if timed_out and not replied:
        return "no_answer"
    if 500 <= status < 600:
        return str(status)
    return None


def trusted_addresses(hosts: Iterable[str]) -> set[str]:
    """The source addresses calls to agents may come from (every PBX, GW_PBX_ALLOW);
    a host name counts with the address it resolves to at start."""
    out = set()
    for host in hosts:
        try:
            out.add(socket.getaddrinfo(host, None)[0][4][0])
        except OSError:
            out.add(host)
    return out
