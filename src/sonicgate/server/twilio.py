"""Phone calls through Twilio: the call webhook and the Media Streams WebSocket.

``POST /twilio/voice`` answers Twilio's call webhook with TwiML that connects the
call to ``wss://<public host>/twilio/media``; there the call becomes a session like
any other, in the dialect of ``protocol/twilio.py``. The webhook URL's query may
choose ``engine``, ``voice``, ``language`` and ``systemPrompt``: they reach the
stream as its parameters.

Twilio cannot send our bearer tokens, so these routes check their callers
themselves (AccessMiddleware asks them for no credential):

- With a Twilio auth token, every request must carry Twilio's ``X-Twilio-Signature``
  (see ``twilio_signature``): the webhook's POST, and the stream's WebSocket handshake,
  which Twilio signs as a request for the wss:// URL with no parameters. Otherwise
  the answer is a 403 and nothing else. The handshake's signature covers a URL that
  is the same for every call, so it proves nothing about the call; the webhook
  therefore seals the call it answered (its CallSid, AccountSid and parameters, with
  the token) into the stream's ``grant`` parameter, and the stream's first message,
  ``start``, must carry that seal for its own call, or the socket closes (1008)
  before any session exists. The call belongs to ``twilio:<AccountSid>``.
- Without one, with access control on, the webhook needs the usual credential
  (``?token=`` in its URL: Twilio sets no headers) and hands it to the stream as
  its ``token`` parameter (a stream URL may carry no query); ``start`` must carry a
  valid one, and the call belongs to its holder.
- With neither, anyone may call, as anyone may use the other endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit
from xml.etree.ElementTree import Element, SubElement, tostring

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from sonicgate.bus.base import SESSION_EVENT, BusEvent
from sonicgate.config import Settings
from sonicgate.domain import ErrorCode, Principal, utc_now
from sonicgate.protocol.base import JsonObject, ProtocolError, parse_json
from sonicgate.protocol.twilio import (
    GRANT_PARAMETER,
    OUTBOUND,
    STREAM_PARAMETERS,
    TOKEN_PARAMETER,
    CallStart,
    Playout,
    TwilioDialect,
    read_start,
)
from sonicgate.server.access import (
    CLIENT,
    CREDENTIAL,
    AccessPolicy,
    Refused,
    deny,
    principal_of,
    refusal_response,
)
from sonicgate.server.ratelimit import Counters, RateLimiter
from sonicgate.server.stream import ClientConnection, ConnectionLimits
from sonicgate.sessions.manager import SessionManager

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
MAX_WEBHOOK_BYTES = 64 * 1024  # a call webhook's form is a few hundred bytes
START_WITHIN = 10.0  # seconds from the handshake to Twilio's start message
MAX_BEFORE_START = 10  # messages: Twilio sends connected, then start
# Every call streams 50 media messages a second, whoever owns it: a call has a
# message budget of its own, twice that (marks and keypresses come on top).
CALL_MESSAGES_PER_SECOND = 100.0
POLICY_CLOSE = 1008
DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}
WEBSOCKET_SCHEMES = {"https": "wss", "http": "ws"}
GRANT_CONTEXT = b"sonicgate call grant\n"  # keeps the token's HMACs for us apart from Twilio's
BAD_SIGNATURE = Refused(403, ErrorCode.FORBIDDEN, "bad or missing X-Twilio-Signature")


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's ``X-Twilio-Signature``: HMAC-SHA1, keyed by the account's auth token, of
    the URL Twilio requested followed by every POST parameter's name and value, sorted
    by name, all run together; in base64."""
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signed(auth_token: str, url: str, params: list[tuple[str, str]], signature: str | None) -> bool:
    """Whether ``signature`` is Twilio's for this request. As Twilio's own validators
    do, the URL counts with and without its scheme's default port (proxies differ)."""
    if not signature:
        return False
    return any(
        [  # every candidate is compared: the time taken tells nothing
            hmac.compare_digest(
                twilio_signature(auth_token, candidate, params).encode(), signature.encode()
            )
            for candidate in _port_variants(url)
        ]
    )


def _port_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    default = DEFAULT_PORTS.get(parts.scheme)
    if default is None or parts.port not in (None, default):
        return [url]
    host = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return [parts._replace(netloc=netloc).geturl() for netloc in (host, f"{host}:{default}")]


def call_grant(auth_token: str, call_sid: str, account_sid: str, parameters: dict[str, str]) -> str:
    """The webhook's seal on the call it answered: what the stream's start must show."""
    sealed = json.dumps([call_sid, account_sid, sorted(parameters.items())]).encode()
    digest = hmac.new(auth_token.encode(), GRANT_CONTEXT + sealed, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")


def twiml(stream_url: str, parameters: dict[str, str]) -> str:
    """``<Connect><Stream>``: a bidirectional stream of the call to ``stream_url``."""
    response = Element("Response")
    stream = SubElement(SubElement(response, "Connect"), "Stream", url=stream_url)
    for name, value in parameters.items():
        SubElement(stream, "Parameter", name=name, value=value)
    return '<?xml version="1.0" encoding="UTF-8"?>' + tostring(response, encoding="unicode")


class CallConnection(ClientConnection):
    """A call's connection. Twilio takes media, mark and clear only (anything else is
    a protocol error on its side), so the rest stays off the wire: an error is logged
    and published on /api/events (``ClientConnection`` counts it in /metrics). An
    error on a call that has no session (it could not open, or it ended) hangs up:
    Twilio then goes on with the TwiML after ``<Connect>``, if any."""

    @property
    def _budget(self) -> str:
        return self.id  # every call has a budget of its own

    async def send(self, message: JsonObject) -> None:
        kind = message.get("event")
        if kind in OUTBOUND:
            await super().send(message)
        elif kind == "error":
            await self._report(message)

    async def _report(self, error: JsonObject) -> None:
        code, text = error["code"], error["message"]
        log.info("call error %s: %s", code, text)
        session = self._session
        if session is None:
            await self._close(POLICY_CLOSE, f"{code}: {text}"[:120])
            return
        record = session.record
        event = {"event": "error", "code": code, "message": text}
        await self._manager.services.bus.publish(
            BusEvent(SESSION_EVENT, record.sessionId, record.userId, event, utc_now(), record.owner)
        )


class TwilioRoutes:
    def __init__(
        self,
        settings: Settings,
        policy: AccessPolicy,
        manager: SessionManager,
        limits: ConnectionLimits,
    ) -> None:
        self._auth_token = settings.twilio_auth_token
        self._public_url = URL(settings.public_url) if settings.public_url else None
        self._policy = policy
        self._manager = manager
        self._limits = limits
        rate = settings.max_messages_per_second  # 0: no limit, for calls too
        call_rate = max(rate, CALL_MESSAGES_PER_SECOND) if rate > 0 else 0.0
        # A call's budget is its own, so it is counted where the call is: in memory.
        self._messages = RateLimiter(call_rate, "call-messages", Counters())

    @property
    def self_checked(self) -> frozenset[str]:
        """The paths AccessMiddleware asks no credential of: the stream's (its caller is
        checked on its start), and the webhook's when Twilio signs it."""
        return frozenset({MEDIA_PATH, VOICE_PATH} if self._auth_token else {MEDIA_PATH})

    def routes(self) -> list[BaseRoute]:
        return [
            Route(VOICE_PATH, self.voice, methods=["POST"]),
            WebSocketRoute(MEDIA_PATH, self.media),
        ]

    async def voice(self, request: Request) -> Response:
        """Twilio's call webhook: TwiML that connects the call to the media stream."""
        form = await _form(request)
        if form is None:
            return Response(status_code=413)
        public = self._public(request.url)
        query = request.query_params
        parameters = {name: value for name in STREAM_PARAMETERS if (value := query.get(name))}
        if self._auth_token is not None:
            signature = request.headers.get("x-twilio-signature")
            if not signed(self._auth_token, str(public), form, signature):
                log.info("refused a call webhook: %s", BAD_SIGNATURE.message)
                return refusal_response(BAD_SIGNATURE)
            call = dict(form)
            grant = call_grant(
                self._auth_token, call.get("CallSid", ""), call.get("AccountSid", ""), parameters
            )
            parameters[GRANT_PARAMETER] = grant
        elif (credential := request.scope.get(CREDENTIAL)) is not None:
            parameters[TOKEN_PARAMETER] = credential
        path = public.path.removesuffix(VOICE_PATH) + MEDIA_PATH
        stream = public.replace(scheme=_websocket_scheme(public.scheme), path=path, query="")
        return Response(twiml(str(stream), parameters), media_type="text/xml")

    async def media(self, websocket: WebSocket) -> None:
        """The call's Media Stream: a session, once its start checks out."""
        if self._auth_token is not None:
            url = self._public(websocket.url)
            signature = websocket.headers.get("x-twilio-signature")
            if not signed(self._auth_token, str(url), [], signature):
                log.info("refused a media stream: %s", BAD_SIGNATURE.message)
                await deny(websocket, BAD_SIGNATURE)
                return
        await websocket.accept()
        call = await self._read_start(websocket)
        if call is None:
            return
        try:
            websocket.scope[CLIENT] = self._caller(call, principal_of(websocket.scope))
        except Refused as refusal:
            await self._hang_up(websocket, ProtocolError(refusal.code, refusal.message))
            return
        playout = Playout(call.stream_sid)
        dialect = TwilioDialect(call, playout)
        connection = CallConnection(
            websocket,
            self._manager,
            self._limits,
            self._messages,
            dialect=dialect,
            opening=dialect.opening(),
        )
        sender = asyncio.create_task(playout.run(connection.send), name=f"playout-{connection.id}")
        try:
            await connection.run()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _read_start(self, websocket: WebSocket) -> CallStart | None:
        """Twilio's ``connected``, then its ``start``; anything else before it is
        dropped. None: the call cannot go on (and was hung up)."""
        try:
            async with asyncio.timeout(START_WITHIN):
                for _ in range(MAX_BEFORE_START):
                    frame = await websocket.receive()
                    if frame["type"] == "websocket.disconnect":
                        return None
                    try:
                        message = parse_json(frame.get("text") or "")
                    except ProtocolError as exc:
                        self._count(exc, "message dropped")
                        continue
                    kind = message.get("event")
                    if kind == "start":
                        return read_start(message)  # one the call cannot go on with raises
                    if kind != "connected":
                        problem = ProtocolError(ErrorCode.OUT_OF_ORDER, f"{kind!r} before 'start'")
                        self._count(problem, "message dropped")
            problem = ProtocolError(
                ErrorCode.NO_START, f"no 'start' in {MAX_BEFORE_START} messages"
            )
        except TimeoutError:
            problem = ProtocolError(ErrorCode.NO_START, f"no 'start' within {START_WITHIN:g} s")
        except ProtocolError as exc:
            problem = exc
        except WebSocketDisconnect:
            return None
        await self._hang_up(websocket, problem)
        return None

    def _caller(self, call: CallStart, remote: Principal) -> Principal:
        """Who the call belongs to, by its start; raises ``Refused``."""
        if self._auth_token is not None:
            expected = call_grant(
                self._auth_token, call.call_sid, call.account_sid, call.parameters
            )
            if call.grant is None or not hmac.compare_digest(
                call.grant.encode(), expected.encode()
            ):
                raise Refused(
                    403, ErrorCode.FORBIDDEN, "the start lacks the webhook's grant for this call"
                )
            return Principal(f"twilio:{call.account_sid}", authenticated=True)
        if self._policy.auth_on:
            return self._policy.identify(call.credential, remote.id)
        return remote

    def _count(self, problem: ProtocolError, outcome: str) -> None:
        """Logged, and counted in /metrics as the connection counts errors."""
        log.info("call %s: %s: %s", outcome, problem.code, problem.message)
        self._manager.services.metrics.errors.labels(problem.code).inc()

    async def _hang_up(self, websocket: WebSocket, problem: ProtocolError) -> None:
        self._count(problem, "hung up")
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(POLICY_CLOSE, f"{problem.code}: {problem.message}"[:120])

    def _public(self, url: URL) -> URL:
        """``url`` as Twilio requested it: on the public URL's scheme, host and path
        prefix when one is set (behind a TLS proxy), else as it came."""
        if self._public_url is None:
            return url
        public = self._public_url
        scheme = (
            public.scheme if url.scheme in ("http", "https") else _websocket_scheme(public.scheme)
        )
        return url.replace(
            scheme=scheme, netloc=public.netloc, path=public.path.rstrip("/") + url.path
        )


def _websocket_scheme(scheme: str) -> str:
    return WEBSOCKET_SCHEMES.get(scheme, scheme)


async def _form(request: Request) -> list[tuple[str, str]] | None:
    """The webhook's POST parameters; None past ``MAX_WEBHOOK_BYTES``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_WEBHOOK_BYTES:
            return None
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
