"""Calls surviving an agent's WebSocket reconnect, Kamailio's side: the
decisions kemi/reconnect.py takes, carried out with KSR.

A mixin of the Gateway (kemi/app.py): WITHINDLG asks `_dialog_target` where
a loose-routed in-dialog request goes, and RECONNECT finds the phone for one
headed for a phone's WebSocket (or handed over by another node); `ksr_reconnect_timer` runs every 100 ms in its own rtimer
process (kamailio.cfg) and resumes, through `ksr_reconnect_continue`, the
requests suspended while their phone was away.
"""
from __future__ import annotations

import time
from typing import Callable

import KSR  # noqa: E402  (provided by app_python3)

from kemi import metrics, reconnect, settings as settings_mod
from kemi.bindings import Binding
from kemi.flags import FL_FROM_WS, FL_PEER, FL_TO_PEER_PHONE, current
from kemi.ksr_edge import log as _log, pv as _pv
from kemi.reconnect import Action
from kemi.store import BindingStore, StoreError

WAITING = "gwwait"         # htable: suspended requests waiting for their phone, by index:label


class Reroute:
    cfg: settings_mod.Settings
    store: BindingStore
    node: str                         # this node (GW_SIP_LISTEN)
    MEDIA_OFFER: Callable[[], bool]   # the Gateway's (kemi/app.py)
    RELAY: Callable[[], None]
    _media_delete: Callable[[str], None]
    _from_ws: Callable[[], bool]
    _to_ws: Callable[[], bool]
    _waited_ms: int | None = None     # set by the timer around t_continue ...
    _resume = False                   # ... and whether the phone is back

    def _dialog_target(self, routes: str) -> bool:
        """Where a loose-routed in-dialog request goes now that phones reconnect:
        a reconnected phone's own request for a dialog (and media) another node
        holds goes to that node's SIP side (its next Route); one arriving from
        that node is the phone's; one for a phone goes through RECONNECT. False
        when the request was answered or suspended."""
        from_ws, to_ws = current.ws, self._to_ws()
        if from_ws and to_ws and reconnect.peer_hop(routes):
            KSR.setdsturi(reconnect.peer_hop(routes))
            KSR.setflag(FL_PEER)
        elif not from_ws and reconnect.from_phone_side(routes):
            KSR.setflag(FL_FROM_WS)
        elif to_ws:
            return self.RECONNECT()
        return True

    # ------------------------------------------------------------- RECONNECT
    def RECONNECT(self, may_hand_over: bool = True, may_wait: bool = True) -> bool:
        """Why: an agent's WebSocket drops and comes back mid-call (same Contact and
        +sip.instance): reach the phone where its binding says now, on this node or
        the one holding it, waiting up to GW_RECONNECT_WAIT for it. Sets the
        destination and returns True when the request should be relayed; False
        when it was answered or suspended."""
        contact = KSR.kx.get_ruri() or ""
        binding = self._find_phones([contact])[0]
        plan = reconnect.plan(binding, node=self.node, target=KSR.kx.get_duri() or "",
                              conid=reconnect.dialog_conid(_pv("$(hdr(Route)[*])")),
                              alive=lambda c: KSR.tcpops.tcp_conid_state(c) > 0,
                              may_hand_over=may_hand_over)
        if plan.action is Action.NOWHERE:
            self._unreachable("withindlg.no_route", 404, "Not here")
        elif plan.action is Action.WAIT:
            if not (binding and may_wait and self._wait_for_phone(contact, binding, plan)):
                self._unreachable("dialog.phone_gone", from_conid=plan.from_conid)
        elif plan.action is not Action.KEEP:
            KSR.setdsturi(plan.dst)
            if plan.action is Action.PEER:
                KSR.setflag(FL_TO_PEER_PHONE)
            if may_hand_over:  # else the node that handed it over counted it
                metrics.DIALOG_REROUTED.inc()
            _log("info", "dialog.rerouted" if may_hand_over else "dialog.from_peer",
                 method=KSR.kx.get_method(), from_conid=plan.from_conid, to_conid=plan.to_conid,
                 via=plan.action.value, dst=plan.dst, waited_ms=self._waited_ms)
        return plan.action in (Action.KEEP, Action.MOVE, Action.PEER)

    def _find_phones(self, contacts: list[str]) -> list[Binding | None]:
        try:
            return self.store.find_phones(contacts)
        except StoreError as exc:  # dialogs then go where they point, as before
            metrics.REDIS_ERRORS.inc()
            _log("warn", "dialog.redis_down", error=exc)
            return [None] * len(contacts)

    def _wait_for_phone(self, contact: str, binding: Binding, plan: reconnect.Plan) -> bool:
        """Suspend the transaction (tm keeps it; no worker waits) for the timer to resume."""
        wait = self.cfg.reconnect_wait
        fr_ms = int(wait * 1000) + 2000  # tm's own timeout only backs up the timer's
        if wait <= 0 or KSR.is_ACK() or KSR.tm.t_set_fr(fr_ms, fr_ms) < 0 or KSR.tmx.t_suspend() < 0:
            return False
        tid = f"{_pv('$T(id_index)')}:{_pv('$T(id_label)')}"
        waiter = reconnect.Waiter.start(contact, binding, wait, KSR.kx.get_callid())
        KSR.htable.sht_sets(WAITING, tid, waiter.to_json())
        _log("info", "dialog.waiting", method=KSR.kx.get_method(), from_conid=plan.from_conid,
             wait_s=wait, tid=tid)
        return True

    def _unreachable(self, event: str, code: int = 480, reason: str = "Temporarily Unavailable",
                     **fields: object) -> None:
        """The reply (stateful once suspended: sl's send_reply); a BYE still ends the media."""
        if KSR.is_BYE() and not KSR.isflagset(FL_PEER):
            self._media_delete("bye")
        if not KSR.is_ACK():
            KSR.sl.send_reply(code, reason)
            KSR.statistics.update_stat(metrics.reply_stat(code), 1)
            _log("info", event, method=KSR.kx.get_method(), outcome=code, **fields)

    # ------------------------------------------------------------- the timer
    def ksr_reconnect_timer(self, msg: object, evname: str = "") -> int:
        """Why: waiting requests go on once their phone registered again, or get
        480 after GW_RECONNECT_WAIT; one Redis lookup per tick for all of them."""
        entries, it = [], "gwwait_it"
        if KSR.htable.sht_iterator_start(it, WAITING) > 0:
            while KSR.htable.sht_iterator_next(it) > 0:
                entries.append((_pv(f"$shtitkey({it})"), _pv(f"$shtitval({it})")))
            KSR.htable.sht_iterator_end(it)
        for tid, ids, what, waiter in reconnect.due(entries, self._find_phones, time.time()):
            KSR.htable.sht_rm(WAITING, tid)
            if ids is not None:
                self._waited_ms, self._resume = waiter.waited_ms(time.time()), what == "resume"
                KSR.tmx.t_continue(ids[0], ids[1], "ksr_reconnect_continue")
                self._waited_ms = None
        return 1

    def ksr_reconnect_continue(self, msg: object) -> int:
        """The suspended request goes on: to its phone, back again, or 480."""
        if not self._resume:
            metrics.RECONNECT_TIMEOUTS.inc()
            self._unreachable("dialog.reconnect_timeout", waited_ms=self._waited_ms)
            return 1
        KSR.tm.t_reset_fr()
        if self.RECONNECT(may_hand_over=not KSR.isflagset(FL_PEER), may_wait=False):
            self._dialog_relay()
        return 1

    def _dialog_relay(self) -> None:
        """In-dialog media (where this node holds it), then relay (WITHINDLG's end)."""
        method = current.method
        if not KSR.isflagset(FL_PEER):
            if method == "BYE":
                self._media_delete("bye")
            elif method in ("INVITE", "UPDATE", "PRACK", "ACK") and not self.MEDIA_OFFER():
                return
        if method == "ACK":
            KSR.tm.t_relay()
        else:
            self.RELAY()
