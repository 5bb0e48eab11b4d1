"""Call quality, Kamailio's side: what kemi/quality.py makes of rtpengine's
figures, collected with KSR at a call's end.

A mixin of the Gateway (kemi/app.py): `_dlg_call_start` where a call starts
(the initial INVITE, to the agent or to the PBX), `_call_quality` in
_media_delete, just before rtpengine's session goes (BYE, CANCEL, failure,
timeout).
"""
from __future__ import annotations

import KSR  # noqa: E402  (provided by app_python3)

from kemi import logfmt, metrics, quality
from kemi.ksr_edge import pv as _pv

QUERY_VAR = "$var(gw_rtpq)"            # rtpengine's query reply (JSON) at a call's end
DLG_CALL = "$dlg_var(gw_call)"         # direction, DN, caller's tag (quality.dlg_call)


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
        call (its call-id table: with several engines, the one that holds it)."""
        try:
            if KSR.rtpengine.rtpengine_query_v("j", QUERY_VAR) < 0:
                return
            end = quality.at_end(_pv(QUERY_VAR), _pv(DLG_CALL), _pv("$dlg(start_ts)"), answered)
            if end is None:
                return
            KSR.info(logfmt.line("call.quality", call_id=KSR.kx.get_callid(), **end.fields) + "\n")
            metrics.observe_quality(end.call)
            KSR.pv.sets(DLG_CALL, quality.REPORTED)   # a crossing BYE reports nothing more
        except Exception as exc:  # the figures may be lost, never the delete
            KSR.err(logfmt.line("call.quality_failed", error=repr(exc), call_id=KSR.kx.get_callid()) + "\n")
