"""WSGI middleware: protect any WSGI app (Flask, Django, Pyramid, bare WSGI).

::

    from bbverify.wsgi import PipelineAuthMiddleware

    app.wsgi_app = PipelineAuthMiddleware(app.wsgi_app, verifier=verifier, exclude_paths=["/healthz"])

Every request needs a valid token except on excluded paths (matched against
``PATH_INFO`` decoded as PEP 3333 says: latin-1 bytes read as UTF-8, so
``exclude_paths=["/café"]`` matches as it does under ASGI). On success the
claims are in ``environ["bbverify.claims"]``.
The verifier is thread-safe, so the middleware works under threaded servers.
This module imports no framework.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, Unpack

from .bearer import reason_phrase
from .errors import VerificationError
from .guard import Guard, GuardOptions, Refusal
from .paths import routing_path, wsgi_path
from .proxies import wsgi_peer
from .verifier import Verifier

__all__ = ["PipelineAuthMiddleware", "environ_request", "send_error"]

Environ = MutableMapping[str, Any]
StartResponse = Callable[..., Any]
# Loose on purpose: WSGI apps annotate environ as dict, Mapping, WSGIEnvironment...
WSGIApp = Callable[..., Iterable[bytes]]


def environ_request(environ: Mapping[str, Any]) -> tuple[list[str], str | None, list[str]]:
    """``(authorization values, peer address, X-Forwarded-For values)`` from an environ.

    WSGI servers join repeated headers with commas into one value, so several
    ``Authorization`` lines arrive as one malformed value (refused with 400).
    Servers listening on a Unix socket spell ``REMOTE_ADDR`` as ``""``
    (gunicorn), ``"<local>"`` (Werkzeug) or a socket path; the peer is then
    :data:`~bbverify.http.UNIX_SOCKET_PEER` (see :func:`bbverify.http.wsgi_peer`),
    which only ``trusted_proxies=["unix", ...]`` trusts.
    """
    auth = environ.get("HTTP_AUTHORIZATION")
    xff = environ.get("HTTP_X_FORWARDED_FOR")
    return (
        [auth] if isinstance(auth, str) else [],
        wsgi_peer(environ.get("REMOTE_ADDR")),
        [xff] if isinstance(xff, str) else [],
    )


def send_error(refusal: Refusal, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answer a WSGI request with ``refusal`` (the WSGI side of the one ``send_error`` contract).

    Runs ``refusal.native`` when ``on_error`` chose a WSGI app, else starts
    the response with the refusal's status and headers and returns its body.
    """
    if callable(refusal.native):
        return refusal.native(environ, start_response)  # type: ignore[no-any-return]
    headers = [*refusal.headers, ("Content-Length", str(len(refusal.body)))]
    start_response(f"{refusal.status} {reason_phrase(refusal.status)}", headers)
    return [refusal.body]


class PipelineAuthMiddleware:
    """WSGI middleware that requires a valid pipeline token on every request.

    Takes the same arguments as :class:`bbverify.asgi.PipelineAuthMiddleware`
    (except ``websocket_denial``), ``policy`` included. ``on_error(error)`` may return an
    :class:`~bbverify.http.ErrorResponse` or a WSGI app to answer with.
    """

    def __init__(self, app: WSGIApp, *, verifier: Verifier, **options: Unpack[GuardOptions]) -> None:
        self.app = app
        self.guard = Guard(verifier, **options)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # PEP 3333 latin-1 -> UTF-8, as ASGI servers and Werkzeug decode it (f14).
        path = routing_path(wsgi_path(environ.get("PATH_INFO")))
        if self.guard.is_excluded(path):
            return self.app(environ, start_response)
        guard = self.guard
        authorization, peer, forwarded = environ_request(environ)
        context = guard.context(peer, forwarded, environ.get("REQUEST_METHOD"), path)
        try:
            claims = guard.verify(authorization, context=context)
        except VerificationError as exc:
            return send_error(guard.refusal(exc), environ, start_response)
        guard.store(environ, claims, context.client_ip)  # read with bbverify.http.request_claims(environ)
        return self.app(environ, start_response)
