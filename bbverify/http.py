"""The HTTP adapter contract in one import: re-exports of the modules every adapter shares.

The framework adapters (:mod:`bbverify.asgi`, :mod:`bbverify.wsgi`,
:mod:`bbverify.flask`, :mod:`bbverify.fastapi`, :mod:`bbverify.starlette`,
:mod:`bbverify.django`, :mod:`bbverify.drf`) translate their framework's
request into plain values and a :class:`Refusal` back into their framework's
answer. The work lives in one module per concern:

* :mod:`bbverify.bearer`: RFC 6750 on the wire (the bearer token in, the
  challenge and JSON body of a refusal out);
* :mod:`bbverify.proxies`: the client address behind trusted proxies;
* :mod:`bbverify.guard`: the flow every adapter runs (exclusions, client,
  verification, one :class:`Refusal` type);
* :mod:`bbverify.identity`: where a verified request's claims and client
  address live, and :class:`~bbverify.identity.PipelineUser`;
* :mod:`bbverify.paths`: the path a request routes on;
* :mod:`bbverify.scopes`: the ``pipeline`` / ``deployment`` scopes.

Error answers follow RFC 6750: no token (:class:`MissingToken`) is 401 with
``WWW-Authenticate: Bearer realm="..."`` and no error attribute; a malformed
request (:class:`InvalidRequest`) 400 ``invalid_request``; a bad token 401
``invalid_token``; a denial 403 ``insufficient_scope``; keys unavailable 503
with ``Retry-After``. The body is always JSON ``{"error": ..., "code": ...,
"message": ...}``.
"""

from __future__ import annotations

from .bearer import (
    DEFAULT_REALM,
    ErrorResponse,
    bearer_token,
    error_response,
    quote_header_value,
    reason_phrase,
    rfc6750_error,
)
from .errors import InvalidRequest, MissingToken
from .guard import ErrorHandler, Guard, Refusal
from .identity import (
    CLAIMS_KEY,
    CLIENT_IP_KEY,
    POLICY_KEY,
    VERIFIER_KEY,
    PipelineUser,
    request_claims,
    request_client_ip,
)
from .paths import routing_path, wsgi_path
from .proxies import (
    MAX_FORWARDED_ENTRIES,
    UNIX_SOCKET_PEER,
    TrustedProxies,
    TrustedProxiesSpec,
    client_ip,
    normalize_ip,
    wsgi_peer,
)
from .scopes import KNOWN_SCOPES, check_scope_names, check_scopes, scopes_for

__all__ = [
    "CLAIMS_KEY",
    "CLIENT_IP_KEY",
    "DEFAULT_REALM",
    "KNOWN_SCOPES",
    "MAX_FORWARDED_ENTRIES",
    "POLICY_KEY",
    "UNIX_SOCKET_PEER",
    "VERIFIER_KEY",
    "ErrorHandler",
    "ErrorResponse",
    "Guard",
    "InvalidRequest",
    "MissingToken",
    "PipelineUser",
    "Refusal",
    "TrustedProxies",
    "TrustedProxiesSpec",
    "bearer_token",
    "check_scope_names",
    "check_scopes",
    "client_ip",
    "error_response",
    "normalize_ip",
    "quote_header_value",
    "reason_phrase",
    "request_claims",
    "request_client_ip",
    "rfc6750_error",
    "routing_path",
    "scopes_for",
    "wsgi_path",
    "wsgi_peer",
]
