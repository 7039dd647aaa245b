"""Pure ASGI middleware: protect any ASGI app (Starlette, FastAPI, others).

::

    from bbverify.asgi import PipelineAuthMiddleware

    app = PipelineAuthMiddleware(app, verifier=verifier, exclude_paths=["/healthz"])

Every HTTP request and WebSocket handshake needs a valid token, except on
excluded paths; lifespan events pass straight through; any other scope type
(a newer protocol the middleware cannot verify) is refused with an exception,
as the ASGI specification asks, so it never reaches the app. On success the claims
are in ``scope["bbverify.claims"]``, and ``scope["user"]`` / ``scope["auth"]``
are set the way Starlette's ``AuthenticationMiddleware`` sets them, so
``request.user``, ``request.auth`` and ``@requires("pipeline")`` work.

Verification awaits the key fetch (:meth:`bbverify.Verifier.averify`), so the
event loop never blocks and concurrent requests share one fetch. This module
imports no framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any

from .bearer import DEFAULT_REALM, ErrorResponse
from .claims import PipelineClaims
from .context import RequestContext
from .errors import ConfigurationError, VerificationError
from .guard import ErrorHandler, Guard, Refusal
from .identity import PipelineUser
from .paths import routing_path
from .policies import Rule
from .proxies import UNIX_SOCKET_PEER, TrustedProxiesSpec
from .scopes import scopes_for
from .verifier import Verifier

__all__ = [
    "WS_POLICY_VIOLATION",
    "ASGIApp",
    "Message",
    "PipelineAuthMiddleware",
    "PipelineCredentials",
    "PipelineUser",
    "Receive",
    "Scope",
    "Send",
    "auth_headers",
    "peer_address",
    "scope_path",
    "scope_request",
    "scopes_for",
    "send_error",
    "set_scope_claims",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: WebSocket close code for "policy violation" (RFC 6455 section 7.4.1).
WS_POLICY_VIOLATION = 1008


class PipelineCredentials:
    """The scopes granted, shaped like Starlette's ``AuthCredentials``."""

    __slots__ = ("scopes",)

    def __init__(self, scopes: Sequence[str]) -> None:
        self.scopes = list(scopes)


def set_scope_claims(scope: Scope, claims: PipelineClaims, guard: Guard, client: str | None) -> None:
    """Record a verified request in an ASGI scope (every ASGI adapter), as Starlette would.

    The guard's keys (:meth:`bbverify.guard.Guard.store`), plus
    ``scope["user"]`` (a :class:`~bbverify.identity.PipelineUser`) and
    ``scope["auth"]`` (the scopes granted), where Starlette's
    ``AuthenticationMiddleware`` puts them.
    """
    guard.store(scope, claims, client)
    scope["user"] = PipelineUser(claims)
    scope["auth"] = PipelineCredentials(scopes_for(claims))


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lowercase bytes) in an ASGI scope, in order."""
    return [v for k, v in scope.get("headers") or () if k.lower() == name]


def auth_headers(scope: Scope) -> tuple[list[bytes], list[bytes]]:
    """The ``Authorization`` and ``X-Forwarded-For`` values of a scope, in order.

    One pass over the headers, since every protected request needs both.
    """
    authorization: list[bytes] = []
    forwarded_for: list[bytes] = []
    for k, v in scope.get("headers") or ():
        name = k.lower()
        if name == b"authorization":
            authorization.append(v)
        elif name == b"x-forwarded-for":
            forwarded_for.append(v)
    return authorization, forwarded_for


def peer_address(scope: Scope) -> str | None:
    """The socket peer's host from ``scope["client"]``, if the server gives one.

    A connection over a Unix socket has no peer address: the ASGI spec gives
    ``server`` as ``[path, None]`` there and servers leave ``client`` out
    (uvicorn ``--uds``), so the peer is :data:`~bbverify.http.UNIX_SOCKET_PEER`,
    which only ``trusted_proxies=["unix", ...]`` trusts. That holds even when
    ``client`` is set: on a Unix socket it can only come from a header
    (uvicorn ``--forwarded-allow-ips='*'`` copies the leftmost, client-written
    ``X-Forwarded-For`` entry there), never from the socket.
    """
    server = scope.get("server")
    if server is None or (isinstance(server, list | tuple) and len(server) == 2 and server[1] is None):
        return UNIX_SOCKET_PEER
    client = scope.get("client")
    if client and isinstance(client[0], str) and client[0]:
        return client[0]
    return None


def scope_request(guard: Guard, scope: Scope, path: str | None = None) -> tuple[list[bytes], RequestContext]:
    """The ``Authorization`` lines and the one :class:`~bbverify.context.RequestContext` of an ASGI request.

    The context holds the client address under ``guard``'s trusted proxies,
    the method (``"GET"`` for a WebSocket handshake) and ``path`` (default:
    :func:`scope_path`).
    """
    authorization, forwarded_for = auth_headers(scope)
    method = scope.get("method", "GET") if scope.get("type") == "http" else "GET"
    path = scope_path(scope) if path is None else path
    return authorization, guard.context(peer_address(scope), forwarded_for, method, path)


def scope_path(scope: Scope) -> str:
    """The path the wrapped app routes on (``path`` minus ``root_path``; see ``routing_path``)."""
    return routing_path(scope.get("path"), scope.get("root_path"))


async def send_error(refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer an HTTP request with ``refusal`` (the ASGI side of the one ``send_error`` contract).

    Sends ``refusal.native`` when ``on_error`` chose an ASGI app (a Starlette
    ``Response``), else the refusal's status, headers and body.
    """
    if callable(refusal.native):
        await refusal.native(scope, receive, send)
        return
    await send_http(refusal, send, "http.response")


async def send_http(response: ErrorResponse, send: Send, prefix: str) -> None:
    """Send ``response`` as ``{prefix}.start`` and ``{prefix}.body`` messages (with ``content-length``)."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": f"{prefix}.start", "status": response.status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": response.body, "more_body": False})


class PipelineAuthMiddleware:
    """ASGI middleware that requires a valid pipeline token on every request.

    Args:
        app: the ASGI application to protect.
        verifier: the :class:`~bbverify.Verifier` that decides.
        exclude_paths: paths served without a token, for example
            ``["/healthz"]``; matched exactly against the path the wrapped
            app routes on (``scope["path"]`` minus ``scope["root_path"]``, so
            under a Starlette ``Mount("/v1", app=...)`` or
            ``uvicorn --root-path /v1`` it is ``/healthz``, as ``PATH_INFO``
            is in WSGI).
        exclude_prefixes: path prefixes served without a token.
        trusted_proxies: ``None`` (the socket peer is the client), a hop
            count, or a list of proxy CIDRs; see :func:`bbverify.http.client_ip`.
        policies: extra rules for every request this middleware protects.
        policy: the verifier's named policy for these requests (``None``:
            its default policy, if any); checked now.
        realm: the ``realm`` of ``WWW-Authenticate``.
        on_error: ``on_error(error)`` returning an
            :class:`~bbverify.http.ErrorResponse` or an ASGI app (a Starlette
            ``Response``) to send instead of the default answer.
        websocket_denial: ``"close"`` (default) closes a refused WebSocket
            handshake with code 1008; ``"http"`` sends the full HTTP refusal
            (401/403/503 with headers and JSON) when the server supports the
            ``websocket.http.response`` extension, else closes with 1008.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: Verifier,
        exclude_paths: Iterable[str] | None = None,
        exclude_prefixes: Iterable[str] | None = None,
        trusted_proxies: TrustedProxiesSpec = None,
        policies: Rule | Sequence[Rule] | None = None,
        realm: str = DEFAULT_REALM,
        on_error: ErrorHandler | None = None,
        websocket_denial: str = "close",
        policy: str | None = None,
    ) -> None:
        self.app = app
        self.guard = Guard(
            verifier,
            policies,
            exclude_paths=exclude_paths,
            exclude_prefixes=exclude_prefixes,
            trusted_proxies=trusted_proxies,
            realm=realm,
            on_error=on_error,
            policy=policy,
        )
        if websocket_denial not in ("close", "http"):
            raise ConfigurationError("must be 'close' or 'http'", key="websocket_denial")
        self.websocket_denial = websocket_denial

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            if kind == "lifespan":  # start-up and shutdown carry no request to verify
                await self.app(scope, receive, send)
                return
            # A connection type this middleware does not know (a server's newer
            # protocol, e.g. "webtransport") would reach the app with no token checked.
            # The ASGI spec asks applications to reject such scopes with an exception;
            # the server then closes the connection without the app seeing it.
            raise RuntimeError(
                f"bbverify refuses ASGI scope type {str(kind)[:40]!r}: only 'http' and "
                "'websocket' are verified, and only 'lifespan' passes through"
            )
        path = scope_path(scope)
        if self.guard.is_excluded(path):
            await self.app(scope, receive, send)
            return
        guard = self.guard
        authorization, context = scope_request(guard, scope, path)
        try:
            claims = await guard.averify(authorization, context=context)
        except VerificationError as exc:
            if kind == "http":
                await send_error(guard.refusal(exc), scope, receive, send)
            else:
                await self._refuse_websocket(exc, scope, receive, send)
            return
        set_scope_claims(scope, claims, guard, context.client_ip)
        await self.app(scope, receive, send)

    async def _refuse_websocket(
        self, error: VerificationError, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # The handshake must be answered after websocket.connect arrives.
        message = await receive()
        if message.get("type") != "websocket.connect":
            return  # the client is already gone
        extensions = scope.get("extensions") or {}
        if self.websocket_denial == "http" and "websocket.http.response" in extensions:
            await send_http(self.guard.refusal(error), send, "websocket.http.response")
            return
        # The stable error code as the close reason, so a client (or a server
        # log) sees why; a close frame's reason fits in 123 bytes (RFC 6455 5.5).
        reason = error.code.encode("ascii", "replace")[:123].decode("ascii")
        await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": reason})
