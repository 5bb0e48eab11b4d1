"""Several PBXs, Kamailio's side: what kemi/pbx.py decides, carried out with
KSR through the dispatcher module (its list is GW_PBX, written by gw/stack.py).

A mixin of the Gateway (kemi/app.py): `_select_pbx` wherever a request goes
to the PBX (REGISTRAR, TO_PBX), `_pbx_failover` in MANAGE_FAILURE,
`pbx_states` for /health and every /metrics scrape.
"""
from __future__ import annotations

from typing import Callable

import KSR  # noqa: E402  (provided by app_python3)

from kemi import logfmt, metrics, pbx, settings as settings_mod
from kemi.flags import FL_TO_PBX



def _warn(event: str, **fields: object) -> None:
    fields.setdefault("call_id", KSR.kx.get_callid())
    KSR.warn(logfmt.line(event, **fields) + "\n")


class PbxRouting:
    cfg: settings_mod.Settings
    live: metrics.LiveCollector
    RELAY: Callable[[], None]         # the Gateway's

    def _init_pbx(self, cfg: settings_mod.Settings) -> None:
        self.pbx_uris = {str(p): settings_mod.pbx_uri(p) for p in cfg.pbxs}
        self.live.pbx_states = self.pbx_states

    def _select_pbx(self) -> None:
        """Why: REGISTERs and new calls go to the first PBX up in GW_PBX order (the
        dispatcher's probes); the others stay in its list for MANAGE_FAILURE."""
        KSR.setflag(FL_TO_PBX)
        if KSR.dispatcher.ds_select_dst(settings_mod.PBX_SET, pbx.BY_PRIORITY) < 0:
            # None up: the first all the same, a probe can be GW_PBX_PROBE s old.
            KSR.setdsturi(self.cfg.pbx_uri)
            _warn("pbx.none_up", method=KSR.kx.get_method(), dst=self.cfg.pbx_uri)
        if len(self.pbx_uris) > 1:
            KSR.tm.t_set_fr(0, pbx.SILENT_MS)   # no 100 Trying in time: the next PBX

    def _pbx_failover(self) -> bool:
        """Why: a PBX that stays silent or answers 5xx to a REGISTER or a new call
        hands it to the next one up in the same transaction, so it is still
        answered. True when relayed there."""
        if not KSR.isflagset(FL_TO_PBX) or KSR.tm.t_is_canceled() > 0:
            return False
        why = pbx.failover_reason(KSR.tm.t_get_status_code(), KSR.tm.t_branch_timeout() > 0,
                                  KSR.tm.t_branch_replied() > 0)
        if why is None:
            return False
        failed = KSR.kx.get_duri()
        if self.cfg.pbx_probe_interval:
            # Skipped from now on, until a probe finds it answering again.
            KSR.dispatcher.ds_mark_dst_state("ip")
        if KSR.dispatcher.ds_next_dst() < 0:
            return False
        _warn("pbx.failover", method=str(KSR.pv.get("$rm") or ""), failed=failed, why=why,
              dst=KSR.kx.get_duri())
        self.RELAY()
        return True

    def pbx_states(self) -> dict[str, bool]:
        """Each GW_PBX entry up or not, as the dispatcher's probes see it (a lone
        PBX is not probed: it counts as up)."""
        return {name: KSR.dispatcher.ds_is_active_uri(settings_mod.PBX_SET, uri) > 0
                for name, uri in self.pbx_uris.items()}
