"""The gateway's routing: a Kamailio KEMI application (app_python3).

Kamailio imports this file in its main process and forks workers from it; each
worker then calls the route methods below. Routes follow Kamailio's canonical
blocks, in order. Only this file and its route mixins touch KSR (wsguard.py the
connection guard, pbxroute.py several PBXs, reroute.py calls surviving a reconnect,
qualityroute.py call quality): SDP/flag choice, bindings, settings, limits and
call quality are pure modules next to them.
"""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
# Kamailio embeds Debian's python3; packages it lacks (bencode.py) come from the
# project's venv, built on that same interpreter.
for _site in sorted((_ROOT / ".venv" / "lib").glob("python3*/site-packages")):
    sys.path.append(str(_site))

import json  # noqa: E402
import time  # noqa: E402

import KSR  # noqa: E402  (provided by app_python3)

from kemi import authguard, bindings, health, media, metrics, reconnect, turn, wsguard  # noqa: E402
from kemi import pbx, pbxroute, qualityroute  # noqa: E402
from kemi import settings as settings_mod  # noqa: E402
from kemi.bindings import Binding  # noqa: E402
from kemi.flags import (FL_AUTH_TRACK, FL_FROM_WS, FL_MEDIA, FL_PEER, FL_REQ_SDP,  # noqa: E402
                        FL_TO_PBX, FL_TO_PEER_PHONE)
from kemi.flags import current as _msg  # noqa: E402
from kemi.ksr_edge import log as _log, pv as _pv  # noqa: E402
from kemi.media import Op, Side  # noqa: E402
from kemi.ng import NgClient  # noqa: E402
from kemi.reroute import Reroute  # noqa: E402
from kemi.store import BindingStore, StoreError  # noqa: E402

FLOOD_WINDOW = "gwflood"   # htable: REGISTERs per source in the last 10 s (kamailio.cfg)
FLOOD_BAN = "gwban"        # htable: sources blocked for 60 s

AVP_BINDING = "$avp(gw_binding)"
AVP_REQ_EXPIRES = "$avp(gw_req_expires)"
AVP_INVITE_T0 = "$avp(gw_invite_t0)"   # when an initial INVITE arrived, for setup time
AVP_AUTH = "$avp(gw_auth)"   # "<Digest credentials 1|0> <phone's address> <DN>": refusals counted
_CREDENTIAL_COUNTS = tuple((name, f"$hdrc({name})") for name in authguard.CREDENTIAL_HEADERS)
SDP_VAR = "$var(gw_sdp)"               # the SDP rtpengine reads (kamailio.cfg: read_sdp_pv)
SHV_CN = "gw_cn"                        # kamailio.cfg shvset: the CN path, for gwctl doctor
RETRY_AFTER_S = 5
# The largest SIP message accepted: kamailio.cfg's tcp_rd_buf_size, the most a
# TCP or WebSocket message can carry, so UDP gets the same limit (RFC 3261 513).
MAX_MSG_BYTES = 16384


def _reply(code: int, reason: str, event: str, retry_after: int | None = None, **fields: object) -> None:
    """Stateless reply plus the one log line that explains it."""
    if retry_after is not None:
        KSR.hdr.append_to_reply(f"Retry-After: {retry_after}\r\n")
    KSR.sl.sl_send_reply(code, reason)
    KSR.statistics.update_stat(metrics.reply_stat(code), 1)
    _log("info" if code < 500 else "warn", event, method=_msg.method, outcome=code, **fields)


def _rtpengine(op: Op, flags: str, sender: Side, cn: media.CnBlock) -> int:
    """Offer or answer, tried twice: after an rtpengine restart each worker's
    socket still holds the ICMP error of the outage and fails its next command
    at once. A second failure is real (and fast: the node is then disabled).

    rtpengine reads the SDP from SDP_VAR (kamailio.cfg, read_sdp_pv), set here
    before every command: the message's SDP, with CN declared when the PBX
    sent it and rtpengine must decode CN (media.rtpengine_sdp: the transcoder
    path). rtpengine's answer replaces the message body as usual."""
    KSR.pv.sets(SDP_VAR, media.rtpengine_sdp(_pv("$sdp(body)"), sender, cn))
    call = KSR.rtpengine.rtpengine_offer if op is Op.OFFER else KSR.rtpengine.rtpengine_answer
    rc = call(flags)
    if rc < 0:
        rc = call(flags)
    return rc


def mod_init() -> "Gateway":
    gateway = Gateway(settings_mod.load())
    # Once, in Kamailio's main process: how CN is kept from the phones.
    # GW_CN_FILTER=on only when make run (gw/run.py) saw PT 13 dropped in front
    # of every rtpengine, or the operator says a filter is there. gwctl doctor
    # reads it back (kamailio.cfg: $shv(gw_cn)).
    KSR.pvx.shv_sets(SHV_CN, gateway.cn.value)
    _log("info", "media.comfort_noise", cn=gateway.cn.value, setting=gateway.cfg.cn_filter, call_id=None,
         path="plain relay, nftables drops PT 13" if gateway.cn is media.CnBlock.FILTER
         else "rtpengine's transcoder decodes CN")
    return gateway


class Gateway(wsguard.ConnectionGuard, pbxroute.PbxRouting, Reroute,
              qualityroute.QualityReport):
    def __init__(self, cfg: settings_mod.Settings) -> None:
        self.cfg = cfg
        self.store = BindingStore(cfg.redis_url)
        self.trusted = pbx.trusted_addresses(cfg.trusted_sources)
        self.node = str(cfg.sip_listen)
        self.engines = [NgClient(r.host, r.port, timeout=0.5) for r in cfg.rtpengines]
        self.limits = authguard.Limits.from_settings(cfg)
        self.ws_proxies = set(cfg.ws_proxies)
        self.live = metrics.LiveCollector(lambda: health.registrations(self.store),
                                          lambda: health.rtpengine_stats(self.engines),
                                          kamailio_stats=wsguard.kamailio_statistics)
        self._init_guard(cfg)
        self.cn = media.CnBlock.FILTER if cfg.cn_filter == "on" else media.CnBlock.TRANSCODE
        self._init_pbx(cfg)

    def child_init(self, rank: int) -> int:
        self.store.forget()
        return 0

    # ------------------------------------------------------------------ main
    def ksr_request_route(self, msg: object) -> int:
        try:
            _msg.begin(KSR.kx.get_method(), bool(KSR.is_WSX()))
            return self._request_route(_msg.method)
        except Exception as exc:  # a bug must cost one request, with a reason, not a worker
            _log("err", "route.exception", method=_msg.method, error=repr(exc), outcome=500)
            if _msg.method != "ACK":
                KSR.sl.sl_send_reply(500, "Internal Server Error")
            return 1

    def _request_route(self, method: str) -> int:
        if method == "OPTIONS":   # the core counts every other method (kemi/metrics.py)
            KSR.statistics.update_stat(metrics.OPTIONS_STAT, 1)
        if _msg.ws:
            self._sip_seen()  # kemi/wsguard.py: the connection sent SIP
        if self.REQINIT():
            return 1
        if _msg.ws:
            KSR.setflag(FL_FROM_WS)
        self.NATDETECT()
        if method == "CANCEL":
            # CANCEL follows its INVITE's transaction; rtpengine is cleaned up
            # when the 487 reaches MANAGE_FAILURE.
            if KSR.tm.t_check_trans() > 0:
                self.RELAY()
            return 1
        # Retransmissions are absorbed before any routing, in-dialog ones too (a
        # PBX resends BYE/NOTIFY/INFO/re-INVITE over UDP every 500 ms until the
        # phone answers): otherwise each copy is routed again, logged as a second
        # decision and, with SDP, handed to rtpengine again.
        if method != "ACK":
            if KSR.tmx.t_precheck_trans() > 0:
                KSR.tm.t_check_trans()
                return 1
            if KSR.tm.t_check_trans() == 0:
                return 1
        if self.WITHINDLG():
            return 1
        if method == "REGISTER":
            self.REGISTRAR()
            return 1
        if method == "INVITE":
            KSR.pv.sets(AVP_INVITE_T0, repr(time.time()))
        if not self.AUTH():
            if not _msg.ws and self._targets_agent():
                _reply(403, "Forbidden", "auth.agent_call_not_from_pbx", src=KSR.kx.get_srcip())
                return 1
            if self.AUTH_LIMIT():
                self.TO_PBX()
            return 1
        if not self.LOCATION():
            return 1
        if not KSR.isflagset(FL_PEER):
            if method == "INVITE":
                self._dlg_call_start("inbound")
            if method in ("INVITE", "SUBSCRIBE", "REFER"):
                KSR.rr.record_route()
            if not self.MEDIA_OFFER():
                return 1
        self.RELAY()
        return 1

    # --------------------------------------------------------------- REQINIT
    def REQINIT(self) -> bool:
        """Why: drop garbage and answer keepalives before spending any work on them."""
        if KSR.kx.get_msglen() > MAX_MSG_BYTES:
            _reply(513, "Message Too Large", "reqinit.too_large", size=KSR.kx.get_msglen(),
                   src=KSR.kx.get_srcip())
            return True
        if KSR.maxfwd.process_maxfwd(10) < 0:
            _reply(483, "Too Many Hops", "reqinit.maxfwd")
            return True
        ua = KSR.kx.get_ua() or ""
        if ua and authguard.is_scanner(ua):
            _log("info", "reqinit.scanner", src=KSR.kx.get_srcip(), ua=ua, outcome="dropped")
            return True
        if self._flooding():
            return True
        if KSR.sanity.sanity_check(17895, 7) < 0:
            _log("warn", "reqinit.sanity", method=_msg.method, src=KSR.kx.get_srcip(),
                 outcome="rejected")
            return True
        if _msg.method == "OPTIONS" and KSR.is_myself_ruri() and not KSR.kx.get_ruser():
            _reply(200, "Keepalive", "reqinit.options")
            return True
        return False

    def _flooding(self) -> bool:
        """Per source IP:port, not IP: a contact centre's agents share one NAT address."""
        if self.cfg.flood_limit <= 0:
            return False
        src = f"{KSR.kx.get_srcip()}:{KSR.kx.get_srcport()}"
        if KSR.htable.sht_get(FLOOD_BAN, src):
            return True
        if _msg.method != "REGISTER" or self.AUTH():
            return False
        if KSR.htable.sht_inc(FLOOD_WINDOW, src) > self.cfg.flood_limit:
            KSR.htable.sht_seti(FLOOD_BAN, src, 1)
            _log("warn", "reqinit.flood_blocked", src=src, limit=self.cfg.flood_limit,
                 outcome="blocked_60s")
            return True
        return False

    # ------------------------------------------------------------- NATDETECT
    def NATDETECT(self) -> None:
        """Why: phones sit behind NAT and WebSockets; reach them over the very
        connection they used, whatever their Contact claims (*.invalid)."""
        KSR.force_rport()
        # Only phones are NATed by design; aliasing a PBX on a private network
        # would be harmless but misleading in its dialogs.
        if _msg.ws and KSR.hdr.is_present("Contact") > 0:
            KSR.nathelper.add_contact_alias()

    # ------------------------------------------------------------- WITHINDLG
    def WITHINDLG(self) -> bool:
        """Why: every in-dialog request (NOTIFY talk/hold, re-INVITE, BYE ...) must
        follow the Record-Route set to the other side, media renegotiated on the way."""
        if KSR.siputils.has_totag() < 0:
            return False
        routes = _pv("$(hdr(Route)[*])")
        if KSR.rr.loose_route() > 0:
            self.DLGURI()
            if self._dialog_target(routes):  # kemi/reroute.py: phones that reconnected
                self._dialog_relay()
        elif not routes and self.AUTH():
            KSR.setflag(FL_PEER)  # handed over by the node holding the dialog and media
            if self.RECONNECT(may_hand_over=False):
                self._dialog_relay()
        elif _msg.method == "ACK":
            if KSR.tm.t_check_trans() > 0:
                self.RELAY()
        else:
            _reply(404, "Not here", "withindlg.no_route")
        return True

    def DLGURI(self) -> None:
        """Why: a phone's Contact carries ;alias=ip~port~ws (added by NATDETECT):
        turn it back into the destination of its WebSocket connection."""
        if KSR.siputils.uri_param_any("alias") > 0:
            KSR.nathelper.handle_ruri_alias()

    # ------------------------------------------------------------------ AUTH
    def AUTH(self) -> bool:
        """Why: the PBX authenticates agents, not us; what we decide is which way a
        request goes. Only the PBX (or an allowed peer) reaches agents; phones,
        WebRTC or plain SIP, only ever reach the PBX, which challenges them."""
        return not _msg.ws and KSR.kx.get_srcip() in self.trusted

    @staticmethod
    def _targets_agent() -> bool:
        """Is this request addressed to an agent (a DN at the gateway or a phone contact)?"""
        if KSR.siputils.uri_param_any("alias") > 0:
            return True
        return bool(KSR.kx.get_ruser()) and KSR.is_myself_ruri()

    # ------------------------------------------------------------ AUTH_LIMIT
    def AUTH_LIMIT(self) -> bool:
        """Why: whatever a phone starts outside a dialog goes to the PBX, which
        challenges it; a source that keeps failing is stopped here, before the PBX
        sees more guesses. Returns False when a reply was sent."""
        user = KSR.kx.get_fuser() or ""
        had_credentials = self._checked_input("From", user)
        if had_credentials is None:
            return False
        src = self._client_ip()
        try:
            binding, bans = self.store.lookup(user, src)
        except StoreError as exc:
            # Calls go on while Redis is away; only the failure limits lapse.
            metrics.REDIS_ERRORS.inc()
            _log("warn", "auth.redis_down", method=_msg.method, user=user, src=src,
                 outcome="unchecked", error=exc)
            return True
        # The Contact only tells a registered phone apart (authguard.registered_phone).
        contact = None
        if binding is not None:
            contact = next(iter(bindings.parse_contacts(_pv("$(hdr(Contact)[*])"))), None)
        return self._auth_allowed(user, src, binding, bans, had_credentials, contact)

    def _auth_allowed(self, user: str, src: str, binding: Binding | None, bans: authguard.Bans,
                      had_credentials: bool, contact: bindings.ContactSpec | None) -> bool:
        """403 for a banned source; else, unless it is the registered phone (which
        also passes a ban), remember who asked: the reply route counts refusals."""
        scope = authguard.verdict(_msg.method, src, binding, bans, contact)
        if scope is not None:
            metrics.AUTH_BLOCKED.labels(scope).inc()
            _reply(403, "Too Many Failed Attempts", "auth.blocked", src=src, user=user, scope=scope)
            return False
        if authguard.registered_phone(src, binding, contact):
            return True
        KSR.pv.sets(AVP_AUTH, f"{1 if had_credentials else 0} {src} {user}")
        KSR.setflag(FL_AUTH_TRACK)
        return True

    def _checked_input(self, which: str, user: str) -> bool | None:
        """400 for a bad DN (the To/From user) or malformed Digest credentials (no
        password guess: the PBX need not see them); None then. Else: any credentials?"""
        if not bindings.valid_user(user):
            problem = bindings.user_problem(user)
            _reply(400, f"Bad {which} user ({problem})", "auth.bad_user", header=which,
                   user=user[:80], length=len(user), problem=problem, src=self._client_ip())
            return None
        headers = []
        for name, count in _CREDENTIAL_COUNTS:
            n = KSR.pv.get(count)
            if n:
                headers += [(name, _pv(f"$(hdr({name})[{i}])")) for i in range(int(n))]
        found, bad = authguard.credentials(headers) if headers else (False, None)
        if bad is not None:
            _reply(400, f"Malformed {bad[0]}", "auth.bad_credentials", header=bad[0],
                   problem=bad[1], src=self._client_ip())
            return None
        return found

    def _auth_reply(self, status: int, method: str) -> None:
        """A final refusal (401/403/407) of a phone's request: count the PBX's refusal
        of its credentials."""
        tracked = _pv(AVP_AUTH)
        if not tracked:
            return                    # already counted (a retransmitted final reply)
        KSR.pv.unset(AVP_AUTH)
        cred, src, user = tracked.split(" ", 2)
        header = {401: "WWW-Authenticate", 407: "Proxy-Authenticate"}.get(status)
        challenge = _pv(f"$(hdr({header})[*])") if header else ""
        if not authguard.is_failure(status, cred == "1", challenge):
            return
        metrics.AUTH_FAILURES.inc()
        try:
            failure = self.store.auth_failure(self.limits, src, user)
        except StoreError as exc:
            metrics.REDIS_ERRORS.inc()
            _log("err", "auth.redis_write_failed", method=method, src=src, user=user, error=exc)
            return
        _log("info", "auth.failed", method=method, src=src, user=user, status=status,
             failures=failure.dn_count, src_failures=failure.ip_count)
        for ban in failure.new_bans:
            _log("warn", "auth.banned", src=ban.src, user=ban.user or "*", failures=ban.failures,
                 scope=ban.scope, ban_s=self.limits.ban)

    # ------------------------------------------------------------- REGISTRAR
    def REGISTRAR(self) -> None:
        """Why: the PBX is the registrar and authenticates; the gateway forwards
        REGISTER with a Path to itself and mirrors the granted binding into Redis."""
        user = KSR.kx.get_tuser() or ""
        had_credentials = self._checked_input("To", user)
        if had_credentials is None:
            return
        contacts = bindings.parse_contacts(_pv("$(hdr(Contact)[*])"))
        ours = contacts[0] if contacts else None
        src = self._client_ip()
        try:
            # One MGET: the binding, the bans (AUTH_LIMIT), and proof Redis answers.
            binding, bans = self.store.lookup(user, src)
        except StoreError as exc:
            metrics.REDIS_ERRORS.inc()
            metrics.REGISTER_FAILURES.labels("redis_unavailable").inc()
            _reply(503, "Registration Store Unavailable", "registrar.redis_down",
                   retry_after=RETRY_AFTER_S, user=user, error=exc)
            return
        if not self._auth_allowed(user, src, binding, bans, had_credentials, ours):
            return
        if src not in self.ws_proxies and KSR.kx.get_srcip() in self.ws_proxies:
            KSR.htable.sht_sets(wsguard.WS_CLIENTS, str(KSR.kx.get_conid()), src)  # kept while registered
        if ours is not None and ours.uri != "*":
            proto = KSR.kx.get_proto()
            draft = Binding(
                user=user,
                contact=ours.uri,
                received=bindings.source_uri(KSR.kx.get_srcip(), KSR.kx.get_srcport(), proto),
                socket=f"{proto}:{KSR.kx.get_rcvip()}:{KSR.kx.get_rcvport()}",
                conid=int(KSR.kx.get_conid() or 0),
                node=self.node,
                call_id=KSR.kx.get_callid(),
                user_agent=KSR.kx.get_ua() or "",
                instance=ours.params.get("+sip.instance", ""),
                src_ip=src,
            )
            # The record's JSON now; the 2xx only adds expiry and time (bindings.record).
            KSR.pv.sets(AVP_BINDING, bindings.draft(user, draft.instance, ours.uri, draft.record_parts()))
            KSR.pv.seti(AVP_REQ_EXPIRES, bindings.requested_expiry(ours, _pv("$hdr(Expires)")))
        elif ours is not None:
            KSR.pv.sets(AVP_BINDING, bindings.draft(user, "", "*", ("", "", "")))
            KSR.pv.seti(AVP_REQ_EXPIRES, 0)
        KSR.path.add_path_received()
        self._select_pbx()   # kemi/pbxroute.py
        _log("info", "registrar.forward", method="REGISTER", user=user, outcome="relay")
        self.RELAY()

    # -------------------------------------------------------------- LOCATION
    def LOCATION(self) -> bool:
        """Why: the PBX addresses an agent by DN (sip:<DN>@gateway) or by the
        contact it learnt through Path; either way find the phone's WebSocket."""
        if KSR.hdr.is_present("Route") > 0:
            KSR.rr.loose_route_preloaded()
        if KSR.siputils.uri_param_any("alias") > 0:
            KSR.nathelper.handle_ruri_alias()
            _log("info", "location.alias", method=_msg.method, outcome="found")
            return True
        user = KSR.kx.get_ruser() or ""
        if not user or not KSR.is_myself_ruri():
            _reply(404, "Not Found", "location.no_user", ruri=KSR.kx.get_ruri())
            return False
        try:
            binding = self.store.get(user)
        except StoreError as exc:
            metrics.REDIS_ERRORS.inc()
            _reply(503, "Location Store Unavailable", "location.redis_down",
                   retry_after=RETRY_AFTER_S, user=user, error=exc)
            return False
        if binding is None:
            _reply(404, "Not Found", "location.not_registered", user=user)
            return False
        if binding.node != self.node:
            # Another gateway node holds this phone's WebSocket: hand the request
            # over unchanged; that node records the route and sets up media.
            KSR.seturi(f"sip:{user}@{binding.node}")
            KSR.setdsturi(f"sip:{binding.node};transport=udp")
            KSR.setflag(FL_PEER)
            _log("info", "location.peer_node", method=_msg.method, user=user, node=binding.node)
            return True
        if "transport=ws" in binding.received and KSR.tcpops.tcp_conid_state(binding.conid) != 1:
            _reply(480, "Temporarily Unavailable", "location.connection_gone",
                   user=user, conid=binding.conid)
            return False
        KSR.seturi(binding.contact)
        KSR.setdsturi(binding.received)
        KSR.rr.add_rr_param(f";{reconnect.RR_CONID}={binding.conid}")  # for RECONNECT
        _log("info", "location.found", method=_msg.method, user=user, dst=binding.received)
        return True

    # ----------------------------------------------------------------- RELAY
    def TO_PBX(self) -> None:
        """Why: everything a phone starts outside a dialog goes to the PBX."""
        if _msg.method == "INVITE":
            self._dlg_call_start("outbound")
        if _msg.method in ("INVITE", "SUBSCRIBE", "REFER"):
            if _msg.ws:
                KSR.rr.add_rr_param(f";{reconnect.RR_CONID}={KSR.kx.get_conid()}")
            KSR.rr.record_route()
        # The destination first: MEDIA_OFFER picks the flags by where it goes.
        self._select_pbx()   # kemi/pbxroute.py: the first PBX up
        if not self.MEDIA_OFFER():
            return
        self.RELAY()

    def RELAY(self) -> None:
        """Why: relay statefully so replies, failures and timeouts come back to us."""
        method = _msg.method
        # Replies worth a look: answers (SDP), a phone's Contact, REGISTER's 2xx, refusals.
        if method in ("INVITE", "SUBSCRIBE", "UPDATE", "REGISTER") or KSR.isflagset(FL_AUTH_TRACK):
            KSR.tm.t_on_reply("ksr_onreply_manage")
        if method == "INVITE" or KSR.isflagset(FL_TO_PBX):
            KSR.tm.t_on_failure("ksr_failure_manage")
        to_phone = self._to_ws()
        if to_phone:
            # A WebSocket cannot be dialled back: if the phone's connection is
            # gone, fail now instead of trying to connect to it.
            KSR.set_forward_no_connect()
        if KSR.tm.t_relay() > 0:
            _log("info", "relay", method=method, dst=KSR.kx.get_duri() or KSR.kx.get_ruri(),
                 outcome="relayed")
        else:
            if to_phone:
                code, reason = 480, "Temporarily Unavailable"
            else:
                code, reason = 503, "Service Unavailable"
            self._media_delete("relay_failed")
            KSR.tm.t_reply(code, reason)
            _log("warn", "relay.failed", method=method, dst=KSR.kx.get_duri(), outcome=code)

    # ----------------------------------------------------------- MEDIA_OFFER
    def MEDIA_OFFER(self) -> bool:
        """Why: every SDP crossing the gateway goes through rtpengine with the
        flags of the side that receives it. Returns False when a reply was sent."""
        if KSR.textops.has_body_type("application/sdp") < 0:
            return True
        receiver = Side.PHONE if self._to_ws() or KSR.isflagset(FL_TO_PEER_PHONE) else Side.PBX
        sender = Side.PHONE if KSR.isflagset(FL_FROM_WS) else Side.PBX
        method = _msg.method
        if method == "ACK" or method == "PRACK":
            op = Op.OFFER if method == "PRACK" and not KSR.isflagset(FL_REQ_SDP) else Op.ANSWER
        else:
            op = Op.OFFER
            KSR.setflag(FL_REQ_SDP)
        flags = media.flag_text(op is Op.OFFER, receiver is Side.PHONE, sender is Side.PHONE, self.cn)
        rc = _rtpengine(op, flags, sender, self.cn)
        if rc > 0:
            KSR.setflag(FL_MEDIA)
            return True
        metrics.RTPENGINE_ERRORS.inc()
        if method == "ACK":
            _log("err", "media.answer_failed", method="ACK", outcome="media_lost")
            return True
        _reply(503, "Media Relay Unavailable", "media.rtpengine_failed",
               op=op.value, receiver=receiver.value)
        return False

    # ---------------------------------------------------------- MANAGE_REPLY
    def ksr_onreply_manage(self, msg: object) -> int:
        """Why: answers (or 3PCC offers in a 200 OK) go through rtpengine toward
        the request's sender; a 2xx to REGISTER becomes the binding in Redis."""
        status = KSR.kx.get_status()
        if status == 100:
            return 1      # tm's business alone (never relayed, no SDP, no Contact)
        _msg.begin(_pv("$rm"), bool(KSR.is_WSX()))
        method = _msg.method
        # The transaction's flags, all at once (tm hands them to the reply route).
        flags = int(KSR.pv.get("$mf") or 0)
        if status in (401, 403, 407) and flags & (1 << FL_AUTH_TRACK):
            self._auth_reply(status, method)
        if method == "REGISTER":
            self._register_reply(status)
            return 1
        if _msg.ws and KSR.hdr.is_present("Contact") > 0:
            KSR.nathelper.add_contact_alias()
        if (100 < status < 300 and not flags & (1 << FL_PEER)
                and KSR.textops.has_body_type("application/sdp") > 0):
            # The reply goes back to whoever sent the request.
            to_phone = bool(flags & (1 << FL_FROM_WS))
            from_phone = _msg.ws or bool(flags & (1 << FL_TO_PEER_PHONE))
            op = Op.ANSWER if flags & (1 << FL_REQ_SDP) else Op.OFFER
            rc = _rtpengine(op, media.flag_text(op is Op.OFFER, to_phone, from_phone, self.cn),
                            Side.PHONE if from_phone else Side.PBX, self.cn)
            if rc < 0:
                metrics.RTPENGINE_ERRORS.inc()
                _log("err", "media.reply_failed", method=method, status=status, op=op.value)
        if 200 <= status < 300 and method == "INVITE":
            self._count_answered(flags)
        return 1

    def _count_answered(self, flags: int) -> None:
        """First 2xx of an initial INVITE: one answered call and its setup time
        (2xx retransmissions find the start time already gone)."""
        t0 = _pv(AVP_INVITE_T0)
        if not t0:
            return
        KSR.pv.unset(AVP_INVITE_T0)
        setup = max(time.time() - float(t0), 0.0)
        direction = "outbound" if flags & (1 << FL_FROM_WS) else "inbound"
        KSR.statistics.update_stat(metrics.CALL_STATS[direction], 1)
        KSR.statistics.update_stat(metrics.setup_stat(setup), 1)
        KSR.statistics.update_stat(metrics.SETUP_SUM_STAT, int(setup * 1e6))

    def _register_reply(self, status: int) -> None:
        if status < 200:
            return
        text = _pv(AVP_BINDING)
        if status >= 300 or not text:
            if status not in (401, 407):
                metrics.REGISTER_FAILURES.labels(str(status) if status >= 300 else "no_contact").inc()
                _log("info", "registrar.reply", method="REGISTER", user=KSR.kx.get_tuser(), outcome=status)
            return
        user, instance, contact, parts = bindings.read_draft(text)
        if contact == "*":
            expires = 0
        else:
            expires = bindings.granted_expiry(_pv("$(hdr(Contact)[*])"), _pv("$hdr(Expires)"), contact,
                                              int(KSR.pv.get(AVP_REQ_EXPIRES) or 0))
        if expires > 0:
            self._turn_header(user, expires)
        try:
            if expires > 0:
                self.store.put_record(user, bindings.record(parts, expires), expires, contact, instance)
            else:
                current = self.store.get(user)
                if current is not None and (contact == "*" or current.contact == contact):
                    self.store.delete(user)
        except StoreError as exc:
            metrics.REDIS_ERRORS.inc()
            metrics.REGISTER_FAILURES.labels("redis_write_failed").inc()
            _log("err", "registrar.redis_write_failed", method="REGISTER", user=user,
                 outcome="binding_not_saved", error=exc)
            return
        _log("info", "registrar.saved", method="REGISTER", user=user, expires=expires, outcome=status)

    def _turn_header(self, user: str, expires: int) -> None:
        """Why: TURN credentials only for an agent the PBX has just authenticated,
        in the 200 OK it gets (turn.x_turn: valid for the registration plus a minute)."""
        if self.cfg.turn_secret and self.cfg.turn_uris:
            try:
                KSR.hdr.append(turn.x_turn(self.cfg.turn_secret.encode(), user, expires,
                                           self.cfg.turn_ttl, self.cfg.turn_uris, time.time()))
            except ValueError as exc:
                _log("warn", "turn.not_issued", method="REGISTER", user=user, error=exc)

    # -------------------------------------------------------- MANAGE_FAILURE
    def ksr_failure_manage(self, msg: object) -> int:
        """Why: a dark PBX, or one answering 5xx, hands over to the next (pbxroute.py); a call
        that failed for good, was cancelled or timed out leaves no session in rtpengine."""
        _msg.begin(KSR.kx.get_method(), bool(KSR.is_WSX()))
        if self._pbx_failover():
            return 1
        status = KSR.tm.t_get_status_code()
        if KSR.siputils.has_totag() > 0 and status not in media.DIALOG_ENDING:
            # A refused re-INVITE (488, 491 glare...) leaves the call as it was
            # (RFC 3261 14.1): its media stays; only 408/481 end the dialog.
            _log("info", "media.kept", method="INVITE", status=status, why="reinvite_failed")
            return 1
        self._media_delete("failure")
        return 1

    # ------------------------------------------------------------ websocket
    def ksr_xhttp_event(self, msg: object, evname: str = "") -> int:
        """Why: the WebSocket port also answers plain HTTP; upgrades become SIP
        WebSockets only for allowed origins."""
        KSR.statistics.update_stat(metrics.HTTP_STAT, 1)   # not SIP: kemi/metrics.py
        if "websocket" in _pv("$hdr(Upgrade)").lower():
            origin = _pv("$hdr(Origin)")
            if self.cfg.ws_origins and origin not in self.cfg.ws_origins:
                KSR.xhttp.xhttp_reply(403, "Forbidden", "text/plain", "origin not allowed\n")
                _log("warn", "ws.origin_refused", origin=origin, src=KSR.kx.get_srcip(), call_id=None)
                return 1
            if self._upgrade_ws():  # kemi/wsguard.py: node and per-address limits, handshake
                self._remember_client()
            return 1
        self.HTTP()
        return 1

    def HTTP(self) -> None:
        """Why: operators scrape /metrics and probe /health on the same port."""
        method, path = KSR.kx.get_method(), _pv("$hu").split("?", 1)[0]
        refusal = health.http_refusal(method, path)
        if refusal is not None:
            self._http(*refusal)
        elif path == "/metrics":
            KSR.xhttp.xhttp_reply(200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                                  metrics.render(self.live).decode())
        else:
            # Outside MONITORING_CIDR nginx asks for the short form (health.VIEW_HEADER).
            view = _pv(f"$hdr({health.VIEW_HEADER})")
            ok, body = health.report(self.store, self.engines, self.node, view, self.pbx_states())
            self._http(200 if ok else 503, "OK" if ok else "Service Unavailable", body)

    @staticmethod
    def _http(code: int, reason: str, body: dict) -> None:
        KSR.xhttp.xhttp_reply(code, reason, "application/json", json.dumps(body) + "\n")

    def ksr_websocket_event(self, msg: object, evname: str = "") -> int:
        # $ws_conid: the connection's id in websocket:closed ($conid is gone by then).
        conid = KSR.pv.get("$ws_conid") if evname == "websocket:closed" else KSR.kx.get_conid()
        _log("info", "ws.event", name=evname, conid=conid, call_id=None)
        if evname == "websocket:closed" and self.ws_proxies and conid is not None:
            KSR.htable.sht_rm(wsguard.WS_CLIENTS, str(conid))
        return 1

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _from_ws() -> bool:
        return bool(KSR.is_WSX())

    @staticmethod
    def _to_ws() -> bool:
        """Is the next hop a phone's WebSocket? (decided by routing: $du or R-URI)"""
        target = (KSR.kx.get_duri() or KSR.kx.get_ruri() or "").lower()
        return "transport=ws" in target

    def ksr_reconnect_continue(self, msg: object) -> int:
        """kemi/reroute.py's continue route, the resumed request read first."""
        _msg.begin(KSR.kx.get_method(), bool(KSR.is_WSX()))
        return Reroute.ksr_reconnect_continue(self, msg)

    def _media_delete(self, why: str) -> None:
        if KSR.isflagset(FL_MEDIA) or _msg.method in ("BYE", "CANCEL"):
            self._call_quality(answered=why == "bye")
            if KSR.rtpengine.rtpengine_delete("") < 0:
                KSR.rtpengine.rtpengine_delete("")
            _log("info", "media.delete", why=why)
