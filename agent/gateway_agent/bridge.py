"""The WWE softphone-connector bridge: HTTPS on AGENT_LISTEN, driving the web phone.

WWE 8.5 talks to a local "softphone connector" over HTTPS. This bridge speaks
that API (v1 and v2) and turns each request into a command for the one phone
page (static/, JsSIP) connected to it over a WebSocket (/phone/ws). The page
is the source of truth for registration and calls: it pushes a snapshot of its
state on every change, which the bridge keeps, answers GETs from, and turns
into the events WWE reads with /Ping.

One agent, one page: a newer page replaces an older one (the old one is told
and stops). CORS is granted only to AGENT_ORIGINS; a request carrying any other
Origin is refused (403), so no other web site can drive the agent's phone.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from aiohttp import WSMsgType, web

from gateway_agent import versions
from gateway_agent.settings import Settings

log = logging.getLogger("agent")

# The page, its style, and the JsSIP bundle built at package time (agent/build.py).
STATIC_DIR = versions.STATIC_DIR
COMMAND_TIMEOUT_S = 10.0
PING_EVENTS_MAX = 200

DN_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
SERVER_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(:[0-9]{1,5})?$")
TARGET_RE = re.compile(r"^(sips?:)?[A-Za-z0-9_.!~*'()&=+$,;?/%#-]{1,64}(@[A-Za-z0-9.\[\]:-]{1,255})?$")
TONES_RE = re.compile(r"^[0-9A-Da-d*#,]{1,64}$")


class BadRequest(Exception):
    """400 with a JSON reason."""


class Conflict(Exception):
    """409: the phone cannot do that in its current state."""


class NoPage(Exception):
    """503: no phone page is connected."""


# --------------------------------------------------------------- validation
def _body_value(body: Any) -> dict:
    """WWE wraps parameters as {"value": {...}}; accept the bare object too."""
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object")
    value = body["value"] if "value" in body else body
    if not isinstance(value, dict):
        raise BadRequest('"value" must be a JSON object')
    return value


def _str(d: dict, key: str, pattern: re.Pattern | None = None, required: bool = False,
         what: str | None = None) -> Optional[str]:
    v = d.get(key)
    if v is None or v == "":
        if required:
            raise BadRequest(f'missing "{key}"')
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise BadRequest(f'"{key}" must be a string')
    v = v.strip()
    if pattern is not None and not pattern.match(v):
        raise BadRequest(f'"{key}": {v!r} is not a valid {what or key}')
    return v


def _first(body: dict, key: str) -> Any:
    v = body.get(key)
    if isinstance(v, list):
        if not v:
            raise BadRequest(f'"{key}" is empty')
        return v[0]
    return v


@dataclass
class Registration:
    """What the page registers: the agent's DN on the SIP server WWE names."""
    dn: str
    server: str
    password: str = ""
    display_name: str = ""
    expires: int = 600

    @property
    def domain(self) -> str:
        host = self.server
        if host.startswith("["):
            return host[: host.index("]") + 1]
        return host.split(":", 1)[0]


@dataclass
class Endpoint:
    """The bridge's state: settings from WWE plus the page's last snapshot."""
    cfg: Settings
    options: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    ping_period: int = 30
    wanted: Optional[Registration] = None
    page: Optional[web.WebSocketResponse] = None
    page_state: dict = field(default_factory=dict)
    events: deque = field(default_factory=lambda: deque(maxlen=PING_EVENTS_MAX))
    started: float = field(default_factory=time.time)
    _pending: dict = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    # ---------------------------------------------------------- settings
    def setting(self, *names: str, default: Any = None) -> Any:
        """An endpoint parameter, then a WWE option (plain or sipendpoint.-prefixed)."""
        for name in names:
            for src in (self.params, self.options):
                for key in (name, f"sipendpoint.{name}"):
                    if key in src and src[key] not in (None, ""):
                        return src[key]
        return default

    def register_args(self) -> dict:
        reg = self.wanted
        assert reg is not None
        dtmf = str(self.setting("dtmf-method", "dtmf_method", default="rfc2833")).lower()
        auto = str(self.setting("auto-answer", "auto_answer", default="false")).lower()
        return {
            "dn": reg.dn,
            "domain": reg.domain,
            "registrar": f"sip:{reg.server}",
            "password": reg.password,
            "display_name": reg.display_name,
            "expires": reg.expires,
            "gateway_ws": self.cfg.gateway_ws,
            "dtmf": "info" if dtmf in ("info", "sip-info") else "rfc2833",
            "auto_answer": auto in ("1", "true", "yes"),
        }

    # ---------------------------------------------------------- status
    @property
    def registration(self) -> str:
        if self.page is None:
            return "no_page"
        return str(self.page_state.get("registration", "unregistered"))

    @property
    def calls(self) -> list[dict]:
        return list(self.page_state.get("calls", [])) if self.page is not None else []

    def endpoint_status(self) -> str:
        return {
            "no_page": "EndpointStatus_NoPhonePage",
            "registered": "EndpointStatus_Ready",
            "registering": "EndpointStatus_Registering",
            "failed": "EndpointStatus_RegistrationFailed",
            "disconnected": "EndpointStatus_GatewayUnreachable",
        }.get(self.registration, "EndpointStatus_NotRegistered")

    def event(self, kind: str, **fields: Any) -> None:
        item = {"time": round(time.time(), 3), "event": kind, **fields}
        self.events.append(item)
        log.info("event=%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))

    def find_call(self, uuid: Optional[str]) -> dict:
        calls = self.calls
        if uuid in (None, "", "current"):
            live = [c for c in calls if c.get("state") != "ended"]
            if not live:
                raise Conflict("no call")
            return live[-1]
        for c in calls:
            if c.get("uuid") == uuid:
                return c
        raise web.HTTPNotFound(text=json.dumps({"error": f"no call {uuid}"}),
                               content_type="application/json")

    # ---------------------------------------------------------- the page
    async def command(self, cmd: str, **args: Any) -> dict:
        page = self.page
        if page is None or page.closed:
            raise NoPage()
        cid = next(self._ids)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            await page.send_json({"id": cid, "cmd": cmd, "args": args})
            reply = await asyncio.wait_for(fut, COMMAND_TIMEOUT_S)
        finally:
            self._pending.pop(cid, None)
        if not reply.get("ok"):
            raise Conflict(reply.get("error") or f"{cmd} failed")
        return reply.get("result") or {}

    def on_reply(self, msg: dict) -> None:
        fut = self._pending.get(msg.get("reply"))
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def on_state(self, state: dict) -> None:
        old = self.page_state
        self.page_state = state
        if old.get("registration") != state.get("registration"):
            self.event("registration", state=state.get("registration"), dn=state.get("dn"),
                       cause=state.get("registration_cause"))
        before = {c.get("uuid"): c.get("state") for c in old.get("calls", [])}
        for c in state.get("calls", []):
            if before.get(c.get("uuid")) != c.get("state"):
                self.event("call", uuid=c.get("uuid"), state=c.get("state"),
                           direction=c.get("direction"), peer=c.get("peer"), cause=c.get("cause"))

    def drop_page(self, page: web.WebSocketResponse) -> None:
        if self.page is page:
            self.page = None
            self.page_state = {}
            self.event("page", state="closed")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result({"ok": False, "error": "the phone page closed"})


# ------------------------------------------------------------------ app
def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _error(status: int, reason: str) -> web.Response:
    return _json({"error": reason}, status)


async def _read_json(request: web.Request, required: bool = True) -> Any:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadRequest("empty body: expected JSON")
        return {}
    if len(raw) > 64 * 1024:
        raise BadRequest("body too large")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc


def build_app(cfg: Settings) -> web.Application:
    api = _Api(cfg, Endpoint(cfg))
    app = web.Application(middlewares=[api.errors_and_cors], client_max_size=64 * 1024)
    app["endpoint"] = api.ep
    app.on_shutdown.append(api.on_shutdown)
    api.add_routes(app.router)
    return app


class _Api:
    """The bridge's HTTP API over one Endpoint: the phone page and its WebSocket,
    WWE 8.5's v1 calls, v2, call control. A method per route; add_routes lists them."""

    def __init__(self, cfg: Settings, ep: Endpoint) -> None:
        self.cfg = cfg
        self.ep = ep
        self.allowed = set(cfg.origins)
        self.self_origins = set(cfg.self_origins)
        self.versions = versions.collect()

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/phone", self.phone_page)
        r.add_get("/phone/", self.phone_page)
        r.add_get("/phone/ws", self.phone_ws)
        r.add_get("/phone/{name}", self.phone_asset)
        # v1 (WWE 8.5)
        for path, handler in (("/GetDnSIP", self.get_dn_sip),
                              ("/GetIsEndpointActive", self.get_is_endpoint_active),
                              ("/GetSIPEndpointParameters", self.get_endpoint_params), ("/Ping", self.ping)):
            r.add_get(path, handler)
        for path, handler in (("/SetOptions", self.set_options),
                              ("/SetSIPEndpointParameters", self.set_endpoint_params),
                              ("/RegisterDn", self.register_dn), ("/RegisterDn/", self.register_dn),
                              ("/SetPingPeriod", self.set_ping_period)):
            r.add_post(path, handler)
        # v2
        r.add_post("/register", self.v2_register)
        r.add_delete("/register", self.v2_unregister)
        r.add_get("/session", self.v2_get_session)
        r.add_delete("/session", self.v2_delete_session)
        r.add_post("/audio", self.v2_audio)
        r.add_delete("/calls", self.v2_delete_calls)
        # call control
        r.add_get("/calls", self.list_calls)
        r.add_post("/calls", self.make_call)
        r.add_post("/calls/make", self.make_call)
        for action, cmd in (("answer", "answer"), ("hangup", "hangup"), ("hold", "hold"),
                            ("retrieve", "retrieve"), ("dtmf", "dtmf")):
            # {uuid} may be "current": the agent's live call.
            r.add_post(f"/calls/{{uuid}}/{action}", self.call_action(cmd))
        r.add_delete("/calls/{uuid}", self.call_action("hangup"))
        r.add_get("/health", self.health)
        r.add_get("/", self.root)

    @web.middleware
    async def errors_and_cors(self, request: web.Request, handler: Callable[[web.Request], Awaitable]):
        origin = request.headers.get("Origin")
        cors = origin is not None and origin in self.allowed
        if origin is not None and not cors and origin not in self.self_origins:
            log.warning("refused origin=%s path=%s", origin, request.path)
            return _error(403, f"origin {origin} is not allowed (AGENT_ORIGINS)")
        if request.method == "OPTIONS":
            if not cors:
                return _error(403, "CORS preflight from an origin that is not allowed")
            resp = web.Response(status=204)
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Content-Type")
            resp.headers["Access-Control-Max-Age"] = "600"
            if request.headers.get("Access-Control-Request-Private-Network") == "true":
                # Chrome's Private Network Access: WWE (public) calling 127.0.0.1.
                resp.headers["Access-Control-Allow-Private-Network"] = "true"
        else:
            resp = await self._handle(request, handler)
        if cors:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
        return resp

    async def _handle(self, request: web.Request, handler: Callable[[web.Request], Awaitable]):
        """The handler's answer, its exceptions as JSON errors."""
        try:
            return await handler(request)
        except BadRequest as exc:
            return _error(400, str(exc))
        except Conflict as exc:
            return _error(409, str(exc))
        except NoPage:
            return _error(503, f"the phone page is not open: open {self.cfg.page_url}")
        except asyncio.TimeoutError:
            return _error(504, "the phone page did not answer in time")
        except web.HTTPException as exc:
            if exc.content_type == "application/json" or exc.status < 400:
                raise
            return _error(exc.status, exc.reason)

    async def on_shutdown(self, _app: web.Application) -> None:
        if self.ep.page is not None:
            await self.ep.page.close(code=1001, message=b"bridge stopping")

    # ------------------------------------------------------------ page
    async def phone_page(self, request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(STATIC_DIR / "phone.html")
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; connect-src 'self' wss: ws:; media-src 'self' blob: mediastream:; "
            "style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        return resp

    async def phone_asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC_DIR / name if name in ("phone.css", "phone.js", "phone.js.map") else None
        if path is None or not path.exists():
            raise web.HTTPNotFound(reason=f"no asset {name}")
        resp = web.FileResponse(path)
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    async def phone_ws(self, request: web.Request) -> web.StreamResponse:
        ep = self.ep
        origin = request.headers.get("Origin")
        if origin not in self.self_origins:
            return _error(403, "only the phone page served here may connect")
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=256 * 1024)
        await ws.prepare(request)
        old = ep.page
        if old is not None:
            ep.drop_page(old)
            await old.close(code=4001, message=b"replaced by a newer phone page")
        ep.page = ws
        ep.event("page", state="open")
        await ws.send_json({"cmd": "hello", "args": {"gateway_ws": self.cfg.gateway_ws}})
        if ep.wanted is not None:
            await ws.send_json({"cmd": "register", "args": ep.register_args()})
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                if "reply" in data:
                    ep.on_reply(data)
                elif data.get("type") == "state" and isinstance(data.get("state"), dict):
                    ep.on_state(data["state"])
                elif data.get("type") == "log":
                    log.info("page: %s", str(data.get("text", ""))[:500])
        finally:
            ep.drop_page(ws)
        return ws

    # ------------------------------------------------------------ helpers
    async def start_registration(self, reg: Registration) -> None:
        ep = self.ep
        ep.wanted = reg
        ep.event("register_requested", dn=reg.dn, server=reg.server)
        if ep.page is not None:
            await ep.command("register", **ep.register_args())

    def registration_from(self, body: dict) -> Registration:
        ep = self.ep
        dn = _str({"dn": _first(body, "users") if "users" in body else body.get("user", body.get("dn"))},
                  "dn", DN_RE, required=True, what="DN")
        server = _str({"server": _first(body, "addresses") if "addresses" in body else body.get("server")},
                      "server", SERVER_RE, required=True, what="SIP server address (host[:port])")
        password = body.get("password")
        if password is None and isinstance(body.get("passwords"), list) and body["passwords"]:
            password = body["passwords"][0]
        if password is None:
            password = ep.setting("password", default="")
        if not isinstance(password, str):
            raise BadRequest('"password" must be a string')
        display = ep.setting("display-name", "display_name", default="")
        expires = ep.setting("expires", "register-expires", default=600)
        try:
            expires = int(expires)
        except (TypeError, ValueError) as exc:
            raise BadRequest("expires must be a number of seconds") from exc
        if not 60 <= expires <= 86400:
            raise BadRequest("expires must be between 60 and 86400 seconds")
        return Registration(dn, server, password, str(display)[:64], expires)

    # ------------------------------------------------------------ v1 (WWE 8.5)
    async def get_dn_sip(self, request: web.Request) -> web.Response:
        ep = self.ep
        dn = ep.page_state.get("dn") or (ep.wanted.dn if ep.wanted else "")
        return _json({"GetDnSIPResult": dn or ""})

    async def set_options(self, request: web.Request) -> web.Response:
        value = _body_value(await _read_json(request))
        self.ep.options.update(value)
        return _json({"SetOptionsResult": True})

    async def set_endpoint_params(self, request: web.Request) -> web.Response:
        value = _body_value(await _read_json(request))
        self.ep.params.update(value)
        return _json({"SetSIPEndpointParametersResult": True})

    async def register_dn(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        for key in ("addresses", "users"):
            if not isinstance(body.get(key), list) or not body[key]:
                raise BadRequest(f'"{key}" must be a non-empty list')
        await self.start_registration(self.registration_from(body))
        return _json({"RegisterDnResult": True})

    async def get_is_endpoint_active(self, request: web.Request) -> web.Response:
        return _json({"GetIsEndpointActiveResult": self.ep.registration == "registered"})

    async def get_endpoint_params(self, request: web.Request) -> web.Response:
        ep = self.ep
        return _json({"GetSIPEndpointParametersResult": {
            "EndpointStatus": ep.endpoint_status(),
            "DN": ep.page_state.get("dn") or (ep.wanted.dn if ep.wanted else ""),
            "Server": ep.wanted.server if ep.wanted else "",
            "Gateway": self.cfg.gateway_ws,
            "Registration": ep.registration,
            "Calls": [{"uuid": c.get("uuid"), "state": c.get("state")} for c in ep.calls],
            "PhonePageOpen": ep.page is not None,
            "Parameters": {k: v for k, v in ep.params.items() if "password" not in k.lower()},
        }})

    async def set_ping_period(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        value = body.get("value", body.get("period")) if isinstance(body, dict) else body
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 3600:
            raise BadRequest("ping period must be a number of seconds between 1 and 3600")
        self.ep.ping_period = int(value)
        return _json({"SetPingPeriodResult": True})

    async def ping(self, request: web.Request) -> web.Response:
        ep = self.ep
        items = [{"event": "status", "status": ep.endpoint_status(), "time": round(time.time(), 3)}]
        items += list(ep.events)
        ep.events.clear()
        return _json({"PingResult": items})

    # ------------------------------------------------------------ v2
    async def v2_register(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        conns = body.get("connections")
        if conns is not None:
            if not isinstance(conns, list) or not conns or not isinstance(conns[0], dict):
                raise BadRequest('"connections" must be a non-empty list of objects')
            body = {**body, **conns[0]}
        await self.start_registration(self.registration_from(body))
        return _json({"status": "registering"})

    async def v2_unregister(self, request: web.Request) -> web.Response:
        self.ep.wanted = None
        if self.ep.page is not None:
            await self.ep.command("unregister")
        return _json({"status": "unregistered"})

    def session_info(self) -> dict:
        ep = self.ep
        audio = ep.page_state.get("audio", {})
        reg = ep.wanted
        return {
            "status": ep.endpoint_status(),
            "devices": {
                "microphone": {"name": audio.get("microphone", ""), "muted": bool(audio.get("mic_muted")),
                               "volume": 100},
                "speaker": {"name": "browser", "muted": bool(audio.get("speaker_muted")),
                            "volume": int(audio.get("speaker_volume", 100))},
                "headset_used": False,
            },
            "phone": {
                "calls": [{"uuid": c.get("uuid"), "state": str(c.get("state", "")).upper(),
                           "direction": c.get("direction"), "peer": c.get("peer"),
                           "call_id": c.get("call_id")} for c in ep.calls],
                "rtt_ms": ep.page_state.get("rtt_ms"),
            },
            "connectivities": {
                "protocol": "wss" if self.cfg.gateway_ws.startswith("wss") else "ws",
                "connections": [{"server": reg.server, "user": reg.dn,
                                 "state": ep.registration.upper()}] if reg else [],
            },
        }

    async def v2_get_session(self, request: web.Request) -> web.Response:
        return _json(self.session_info())

    async def v2_delete_session(self, request: web.Request) -> web.Response:
        ep = self.ep
        ep.wanted = None
        ep.options.clear()
        ep.params.clear()
        if ep.page is not None:
            await ep.command("unregister")
        return _json({"status": "closed"})

    async def v2_audio(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        devices = body.get("devices", body)
        if not isinstance(devices, dict):
            raise BadRequest('"devices" must be an object')
        args: dict[str, Any] = {}
        mic, spk = devices.get("microphone") or {}, devices.get("speaker") or {}
        if not isinstance(mic, dict) or not isinstance(spk, dict):
            raise BadRequest('"microphone" and "speaker" must be objects')
        if "muted" in mic:
            args["mic_muted"] = bool(mic["muted"])
        if "muted" in spk:
            args["speaker_muted"] = bool(spk["muted"])
        if "volume" in spk:
            vol = spk["volume"]
            if isinstance(vol, bool) or not isinstance(vol, (int, float)) or not 0 <= vol <= 100:
                raise BadRequest("speaker volume must be 0..100")
            args["speaker_volume"] = int(vol)
        if not args:
            raise BadRequest("nothing to change: give microphone.muted, speaker.muted or speaker.volume")
        await self.ep.command("audio", **args)
        return _json(self.session_info()["devices"])

    async def v2_delete_calls(self, request: web.Request) -> web.Response:
        result = await self.ep.command("hangup_all")
        return _json({"released": result.get("released", 0)})

    # ------------------------------------------------------------ call control
    async def list_calls(self, request: web.Request) -> web.Response:
        return _json({"calls": self.ep.calls})

    async def make_call(self, request: web.Request) -> web.Response:
        ep = self.ep
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        target = _str(body, "to", TARGET_RE, required=True, what="destination (a number or SIP URI)")
        if ep.registration != "registered":
            if ep.page is None:
                raise NoPage()
            raise Conflict(f"the phone is not registered ({ep.registration})")
        result = await ep.command("make", target=target)
        return _json(result, 201)

    def call_action(self, cmd: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        ep = self.ep

        async def handler(request: web.Request) -> web.Response:
            args: dict[str, Any] = {}
            if cmd == "dtmf":
                body = await _read_json(request)
                if not isinstance(body, dict):
                    raise BadRequest("expected a JSON object")
                args["tones"] = _str(body, "tones", TONES_RE, required=True, what="DTMF string")
            call = ep.find_call(request.match_info.get("uuid"))
            result = await ep.command(cmd, uuid=call["uuid"], **args)
            return _json({"uuid": call["uuid"], **result})
        return handler

    async def health(self, request: web.Request) -> web.Response:
        ep = self.ep
        return _json({
            "status": "ok",
            "page": ep.page is not None,
            "registration": ep.registration,
            "endpoint_status": ep.endpoint_status(),
            "calls": len([c for c in ep.calls if c.get("state") != "ended"]),
            "gateway_ws": self.cfg.gateway_ws,
            "uptime_s": round(time.time() - ep.started, 1),
            "versions": self.versions,
        })

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/phone")
