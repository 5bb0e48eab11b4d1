"""Call quality, Kamailio's side: what kemi/quality.py makes of rtpengine's
figures, collected with KSR at a call's end.

A mixin of the Gateway (kemi/app.py): `_dlg_call_start` where a call starts
(the initial INVITE, to the agent or to the PBX), `_call_quality` in
_media_delete, just before rtpengine's session goes (BYE, CANCEL, failure,
timeout), and `ksr_quality_timer`, which writes the lines.

Why a queue: the SIP worker only asks rtpengine (C) and queues its reply; the
timer process (kamailio.cfg, every 100 ms, with the reconnect timer) reads the
replies in batches. Parsed one at a time in a worker between SIP messages, the
JSON and its walk ran with cold caches: ~150 us a call there against ~25 us in a
batch (bench/NOTES.md), the largest single item of a call's Kamailio CPU.
"""
from __future__ import annotations

import time

import KSR  # noqa: E402  (provided by app_python3)

from kemi import logfmt, metrics, quality
from kemi.ksr_edge import pv as _pv

QUERY_VAR = "$var(gw_rtpq)"            # rtpengine's query reply (JSON) at a call's end
DLG_CALL = "$dlg_var(gw_call)"         # direction, DN, caller's tag (quality.dlg_call)
QUEUE = "gwquality"                    # kamailio.cfg mqueue: calls ended, their lines not yet written
QUEUE_MAX = 1000                       # its size there: mqueue would drop the oldest without a word


class QualityReport:
    @staticmethod
    def _dlg_call_start(direction: str) -> None:
        """A new call: its dialog keeps which way it goes, the agent's DN (the
        To user toward the agent, the From user from it) and the caller's tag
        for the quality line at its end (a BYE carries none of them reliably)."""
        KSR.dialog.dlg_manage()
        dn = KSR.kx.get_fuser() if direction == "outbound" else KSR.kx.get_tuser()
        KSR.pv.sets(DLG_CALL, quality.dlg_call(direction, dn, _pv("$ft")))

    @staticmethod
    def _call_quality(answered: bool) -> None:
        """Why: rtpengine's figures (RTCP loss, jitter, MOS) go with its session: read
        them before the delete, from the node the rtpengine module chose for the
        call (its call-id table: with several engines, the one that holds it), and
        queue them for ksr_quality_timer. One report per call: the dialog is marked."""
        try:
            dlg_call = _pv(DLG_CALL)
            # Reported already (crossing BYEs): not even the query.
            if dlg_call == quality.REPORTED or KSR.rtpengine.rtpengine_query_v("j", QUERY_VAR) < 0:
                return
            KSR.pv.sets(DLG_CALL, quality.REPORTED)   # a crossing BYE reports nothing more
            if KSR.mqueue.mq_size(QUEUE) >= QUEUE_MAX:
                # The timer process is stuck or far behind: this call's line is the one
                # lost, said here, rather than the oldest one's without a word.
                KSR.err(logfmt.line("call.quality_dropped", why="quality queue full", queued=QUEUE_MAX,
                                    call_id=KSR.kx.get_callid()) + "\n")
                return
            key = quality.queue_key(KSR.kx.get_callid(), dlg_call, _pv("$dlg(start_ts)"), answered,
                                    time.time())
            if KSR.mqueue.mq_add(QUEUE, key, _pv(QUERY_VAR)) < 0:
                raise RuntimeError(f"mqueue {QUEUE} refused the call's figures")
        except Exception as exc:  # the figures may be lost, never the delete
            KSR.err(logfmt.line("call.quality_failed", error=repr(exc), call_id=KSR.kx.get_callid()) + "\n")

    def ksr_quality_timer(self, msg: object, evname: str = "") -> int:
        """Why: the quality line and histograms of every call that ended since the
        last tick, in one batch (see the module's docstring). The histograms are
        observed before the line is written: whoever sees the line sees them."""
        while KSR.mqueue.mq_fetch(QUEUE) > 0:
            key, reply = _pv(f"$mqk({QUEUE})"), _pv(f"$mqv({QUEUE})")
            call_id = key
            try:
                call_id, dlg_call, start_ts, answered, ended = quality.read_queue_key(key)
                end = quality.at_end(reply, dlg_call, start_ts, answered, now=ended)
                if end is None:
                    continue
                metrics.observe_quality(end.call)
                KSR.info(logfmt.line("call.quality", call_id=call_id, **end.fields) + "\n")
            except Exception as exc:  # one call's figures, never the others'
                KSR.err(logfmt.line("call.quality_failed", error=repr(exc), call_id=call_id) + "\n")
        return 1
