"""Who may use the API, and how often: API keys or JWTs, an origin allow-list, rate limits.

``AccessMiddleware`` wraps the whole application. The API (``/api/*``,
``/metrics``, ``/v1/*``, ``/twilio/*``) and every WebSocket are guarded; anything
else (the static web page) stays public. A refused client gets one clear HTTP answer
and nothing else: no WebSocket is accepted, no session created. Routes that check
their callers themselves (Twilio's signed requests) are asked for no credential.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from sonicgate.config import Settings
from sonicgate.domain import ErrorCode, Principal
from sonicgate.server.ratelimit import Counters, RateLimiter

# The scope key under which the middleware leaves the client's identity for the routes.
CLIENT = "sonicgate.client"
# ... and the credential that proved it, for a route that hands it on (the Twilio
# webhook gives it to the call's stream, which cannot be sent a header).
CREDENTIAL = "sonicgate.credential"
GUARDED = ("/api", "/metrics", "/v1", "/twilio")
MIN_HS256_SECRET = 32  # bytes: RFC 7518 wants an HS256 key as long as the hash


class Refused(Exception):
    def __init__(
        self, status: int, code: ErrorCode, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


OPERATOR_ROLE = "operator"  # a JWT's 'role' claim that makes its holder an operator


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    operator_keys: tuple[str, ...] = field(default=(), repr=False)
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: RSAPublicKey | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    allowed_origins: frozenset[str] = frozenset()
    requests_per_second: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        """Raises ``ValueError`` for an empty key, a weak secret or an unusable public key
        file (rather than serve with less protection than was asked for)."""
        if "" in settings.api_keys or "" in settings.operator_keys:
            raise ValueError("an API key may not be empty")
        if settings.jwt_secret is not None and len(settings.jwt_secret) < MIN_HS256_SECRET:
            raise ValueError(f"the JWT secret must be at least {MIN_HS256_SECRET} bytes")
        public_key = None
        if settings.jwt_public_key_file is not None:
            loaded = load_pem_public_key(settings.jwt_public_key_file.read_bytes())
            if not isinstance(loaded, RSAPublicKey):
                raise ValueError(f"{settings.jwt_public_key_file} is not an RSA public key")
            public_key = loaded
        return cls(
            api_keys=settings.api_keys,
            operator_keys=settings.operator_keys,
            jwt_secret=settings.jwt_secret,
            jwt_public_key=public_key,
            jwt_audience=settings.jwt_audience,
            jwt_issuer=settings.jwt_issuer,
            allowed_origins=frozenset(origin.rstrip("/") for origin in settings.allowed_origins),
            requests_per_second=settings.max_requests_per_second,
        )

    @property
    def auth_on(self) -> bool:
        keys = self.api_keys or self.operator_keys
        return bool(keys) or self.jwt_secret is not None or self.jwt_public_key is not None

    def origin_allowed(self, origin: str | None) -> bool:
        """Only browsers send Origin; other clients are not subject to the list."""
        return origin is None or not self.allowed_origins or origin in self.allowed_origins

    def identify(self, token: str | None, address: str) -> Principal:
        """Who the credential stands for; raises ``Refused``. With access control off,
        the remote ``address`` stands in, unauthenticated."""
        if not self.auth_on:
            return Principal(address)
        if not token:
            raise _unauthorized("a credential is required: 'Authorization: Bearer ...' or ?token=")
        for keys, operator in ((self.api_keys, False), (self.operator_keys, True)):
            # Every key is compared, so the time taken does not tell which one nearly matched.
            if any([hmac.compare_digest(token.encode(), key.encode()) for key in keys]):
                digest = hashlib.sha256(token.encode()).hexdigest()[:16]
                return Principal(f"key:{digest}", authenticated=True, operator=operator)
        return self._verify_jwt(token)

    def _verify_jwt(self, token: str) -> Principal:
        # Each algorithm is tied to its own key here, never chosen by the token's header.
        verifiers: list[tuple[str, str | RSAPublicKey]] = []
        if self.jwt_secret is not None:
            verifiers.append(("HS256", self.jwt_secret))
        if self.jwt_public_key is not None:
            verifiers.append(("RS256", self.jwt_public_key))
        problem = "invalid API key or token"
        for algorithm, key in verifiers:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=self.jwt_audience,
                    issuer=self.jwt_issuer,
                    # A token that never expires, or names nobody, is refused.
                    options={"require": ["exp", "sub"]},
                )
            except jwt.ExpiredSignatureError:
                problem = "the token has expired"
            except jwt.ImmatureSignatureError:
                problem = "the token is not valid yet"
            except jwt.InvalidAudienceError:
                problem = "the token is for another audience"
            except jwt.InvalidIssuerError:
                problem = "the token is from another issuer"
            except jwt.MissingRequiredClaimError as exc:
                problem = f"the token lacks the '{exc.claim}' claim"
            except jwt.InvalidTokenError:
                continue
            else:
                operator = claims.get("role") == OPERATOR_ROLE
                return Principal(f"sub:{claims['sub']}", authenticated=True, operator=operator)
        raise _unauthorized(problem)


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        policy: AccessPolicy,
        max_connections: int = 0,
        self_checked: frozenset[str] = frozenset(),
        counters: Counters | None = None,
    ) -> None:
        """``max_connections``: WebSockets open at once on this node (0: no limit).
        ``self_checked``: paths whose routes check their callers themselves; they stand
        for their remote address until then, and the limits hold as anywhere.
        ``counters``: where the request rate is counted (else in this process)."""
        self.app = app
        self.policy = policy
        self.requests = RateLimiter(policy.requests_per_second, "requests", counters or Counters())
        self.max_connections = max_connections
        self.self_checked = self_checked
        self.connections = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        # Out of every URL, guarded or not: the access log prints this very scope's query.
        token = _take_credential(scope)
        if not _guarded(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        token = _bearer(headers) or token
        try:
            if not self.policy.origin_allowed(headers.get("origin")):
                raise Refused(403, ErrorCode.FORBIDDEN_ORIGIN, "this origin may not use the API")
            if _path(scope) in self.self_checked:
                principal = Principal(_remote(scope))
            else:
                principal = await self._identify(token, _remote(scope))
            await self._throttle(principal.id)
            if scope["type"] == "websocket" and 0 < self.max_connections <= self.connections:
                raise Refused(
                    503, ErrorCode.SERVER_FULL, "too many connections; try again shortly", 1
                )
        except Refused as refusal:
            await _refuse(scope, receive, send, refusal)
            return
        scope[CLIENT] = principal
        if principal.authenticated:
            scope[CREDENTIAL] = token
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        self.connections += 1  # until the connection's handler returns
        try:
            await self.app(scope, receive, send)
        finally:
            self.connections -= 1

    async def _identify(self, token: str | None, address: str) -> Principal:
        try:
            return self.policy.identify(token, address)
        except Refused:
            # Failed attempts count against the address: no fast guessing.
            await self._throttle(address)
            raise

    async def _throttle(self, client: str) -> None:
        if (wait := await self.requests.take(client)) is not None:
            raise Refused(429, ErrorCode.RATE_LIMITED, "too many requests; slow down", wait)


def principal_of(scope: Scope) -> Principal:
    """The identity ``AccessMiddleware`` gave this request or connection."""
    principal = scope[CLIENT]
    assert isinstance(principal, Principal)
    return principal


def _guarded(scope: Scope) -> bool:
    if scope["type"] == "websocket":
        return True
    path = _path(scope)
    return any(path == prefix or path.startswith(prefix + "/") for prefix in GUARDED)


def _path(scope: Scope) -> str:
    return str(scope["path"]).removeprefix(scope.get("root_path", ""))


def _take_credential(scope: Scope) -> str | None:
    """Takes ``?token=`` out of the query (browsers cannot set headers on a WebSocket),
    in place, so that no log line ever shows it; returns it."""
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    in_query = [value for name, value in pairs if name == "token"]
    if in_query:
        kept = [(name, value) for name, value in pairs if name != "token"]
        scope["query_string"] = urlencode(kept).encode("latin-1")
    return in_query[0] if in_query else None


def _bearer(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _remote(scope: Scope) -> str:
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"


def _unauthorized(message: str) -> Refused:
    return Refused(401, ErrorCode.UNAUTHORIZED, message)


def refusal_response(refusal: Refused) -> JSONResponse:
    headers: dict[str, str] = {}
    if refusal.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(math.ceil(refusal.retry_after))
    return JSONResponse({"error": refusal.message, "code": refusal.code}, refusal.status, headers)


async def deny(websocket: WebSocket, refusal: Refused) -> None:
    """Refuse a WebSocket's handshake with an HTTP answer."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        # uvicorn 0.54's default WebSocket protocol (websockets-sansio) then logs a spurious
        # "ASGI callable returned without completing handshake."; the client is unaffected.
        await websocket.send_denial_response(refusal_response(refusal))
    else:  # a server without the denial extension: the closest thing is a policy close
        await websocket.close(1008, f"{refusal.code}: {refusal.message}"[:120])


async def _refuse(scope: Scope, receive: Receive, send: Send, refusal: Refused) -> None:
    if scope["type"] == "http":
        await refusal_response(refusal)(scope, receive, send)
    else:
        await deny(WebSocket(scope, receive, send), refusal)
