"""RFC 6750 on the wire: the bearer token in, the refusal's challenge and body out.

Reads the token from ``Authorization`` header lines (RFC 6750 section 2.1,
``b64token``) and spells a refusal as RFC 6750 section 3 says: the status,
``WWW-Authenticate: Bearer realm=..., error=...`` and bbverify's JSON body
``{"error": ..., "code": ..., "message": ...}``. Nothing here decides about a
token; :class:`bbverify.Verifier` does.

* no token (:class:`~bbverify.errors.MissingToken`): 401, ``WWW-Authenticate:
  Bearer realm="..."`` with no error attribute;
* malformed request (:class:`~bbverify.errors.InvalidRequest`): 400,
  ``error="invalid_request"``;
* bad token (``InvalidToken``): 401, ``error="invalid_token"``;
* a rule denied (``PolicyDenied``): 403, ``error="insufficient_scope"``;
* keys unavailable (``KeysUnavailable``): 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import (
    ConfigurationError,
    ErrorCode,
    InvalidRequest,
    KeysUnavailable,
    MissingToken,
    PolicyDenied,
    VerificationError,
)
from .token import pasting_mistake

__all__ = [
    "DEFAULT_REALM",
    "ErrorResponse",
    "bearer_token",
    "check_realm",
    "error_response",
    "quote_header_value",
    "reason_phrase",
    "rfc6750_error",
]

DEFAULT_REALM = "bbverify"
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
# RFC 6750 b64token, [A-Za-z0-9-._~+/]+=*, checked without the regex engine
# (bytes.translate deletes the allowed characters in one C pass): it runs on
# every request over a ~1.3 kB token.
_B64TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
# RFC 6750 section 3: error_description and realm use %x20-21 / %x23-5B / %x5D-7E.
_UNSAFE_HEADER_CHARS = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_MAX_DESCRIPTION = 200


def check_realm(realm: object, key: str = "realm") -> str:
    """``realm`` if it can be the ``realm`` of ``WWW-Authenticate``; else :class:`ConfigurationError`.

    The one realm check of every adapter: a non-empty ``str`` of at most 100
    printable ASCII characters without ``"`` or ``\\`` (RFC 6750 section 3).
    An empty or non-``str`` realm is an error (``key``, default ``"realm"``),
    never quietly replaced by :data:`DEFAULT_REALM`.
    """
    if not isinstance(realm, str) or not realm or quote_header_value(realm, 100) != realm:
        raise ConfigurationError("must be printable ASCII without quotes or backslashes", key=key)
    return realm


def _as_text(value: str | bytes) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    return value if value.isascii() else None


def _plain_bearer(value: str | bytes) -> str | None:
    """The token of a well-formed ``Bearer <token>`` line, else ``None``.

    The fast path for the usual request: one slice, one strip and one alphabet
    pass over the token (which also proves it ASCII). ``None`` sends the caller
    down the general path, which words the refusal.
    """
    raw = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
    if raw[:7].lower() != b"bearer ":
        return None
    token = raw[7:].strip(b" \t")
    body = token.rstrip(b"=")
    if not body or body.translate(None, _B64TOKEN_CHARS):
        return None
    return token.decode("ascii")


def bearer_token(authorization: Sequence[str | bytes]) -> str:
    """Return the bearer token from the request's ``Authorization`` header values.

    ``authorization`` holds every ``Authorization`` header line, in order
    (empty when there is none). The scheme is case-insensitive. Raises
    :class:`MissingToken` when there is no bearer credential and
    :class:`InvalidRequest` when the header is malformed; never anything else.
    """
    if len(authorization) == 1:
        token = _plain_bearer(authorization[0])
        if token is not None:
            return token
    if len(authorization) == 0:
        raise MissingToken("the request has no Authorization header", code=ErrorCode.MISSING_TOKEN)
    if len(authorization) > 1:
        raise InvalidRequest(
            "the request has more than one Authorization header", code=ErrorCode.MULTIPLE_AUTHORIZATION
        )
    text = _as_text(authorization[0])
    if text is None:
        raise InvalidRequest("the Authorization header is not ASCII", code=ErrorCode.MALFORMED_AUTHORIZATION)
    text = text.strip(" \t")
    scheme, _, credentials = text.partition(" ")
    if not scheme:
        raise InvalidRequest("the Authorization header is empty", code=ErrorCode.MALFORMED_AUTHORIZATION)
    if scheme.lower() != "bearer":
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+", scheme):
            raise InvalidRequest(
                "the Authorization header is malformed" + _scheme_hint(scheme),
                code=ErrorCode.MALFORMED_AUTHORIZATION,
            )
        raise MissingToken("the Authorization scheme is not Bearer", code=ErrorCode.UNSUPPORTED_SCHEME)
    credentials = credentials.strip(" \t")
    if not credentials:
        raise InvalidRequest(
            "the Bearer token is empty (in Bitbucket Pipelines, set 'oidc: true' on the step "
            "and send $BITBUCKET_STEP_OIDC_TOKEN)",
            code=ErrorCode.EMPTY_TOKEN,
        )
    body = credentials.rstrip("=")  # b64token: allowed characters, then optional '=' padding
    if not body or body.encode("ascii").translate(None, _B64TOKEN_CHARS):
        if _JOINED_CREDENTIALS.search(credentials):
            # WSGI servers and Django join repeated header lines with ", " (RFC 9110
            # 5.3), so two Authorization lines arrive as one: say what it was.
            raise InvalidRequest(
                "the request has more than one Authorization header (joined by the server)",
                code=ErrorCode.MULTIPLE_AUTHORIZATION,
            )
        raise InvalidRequest(_bad_credentials(credentials), code=ErrorCode.MALFORMED_AUTHORIZATION)
    return credentials


def _scheme_hint(scheme: str) -> str:
    """Why a first word that is no auth-scheme (RFC 9110 11.4 token) is wrong, for the usual slips."""
    word = scheme.lower().rstrip(":")
    if word == "authorization":
        return " (its value repeats the header name): send 'Authorization: Bearer <token>'"
    if word == "bearer":
        return " (a colon after 'Bearer'): send 'Bearer <token>', separated by a space"
    return ""


def _bad_credentials(credentials: str) -> str:
    """The refusal for credentials that are not a b64token (RFC 6750 section 2.1).

    The usual pasting mistakes are named (the scheme given twice, quotes, a
    newline, an unexpanded variable; :func:`bbverify.token.pasting_mistake`),
    so the user learns the fix; the credentials themselves are never repeated.
    """
    if credentials[:7].lower() == "bearer ":
        return "the Authorization header gives the Bearer scheme twice: send 'Bearer <token>' once"
    mistake = pasting_mistake(credentials)
    if mistake is not None:
        return "the Bearer token " + mistake
    return "the Bearer token has characters a token cannot have"


# ", <scheme> <credentials>" after a first credential: a second header line joined to the first.
_JOINED_CREDENTIALS = re.compile(r",[ \t]*[A-Za-z0-9!#$%&'*+\-.^_`|~]+[ \t]+\S")


def quote_header_value(text: str, limit: int = _MAX_DESCRIPTION) -> str:
    """``text`` made safe inside a quoted-string of ``WWW-Authenticate``.

    Characters RFC 6750 does not allow there (quotes, backslashes, CR, LF,
    controls, non-ASCII) become spaces, and the result is cut to ``limit``.
    """
    cleaned = _UNSAFE_HEADER_CHARS.sub(" ", text)
    cleaned = " ".join(cleaned.split())
    return cleaned[:limit].rstrip()


@dataclass(frozen=True)
class ErrorResponse:
    """A refusal, independent of any framework: status, headers and body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), if any."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable"}


def reason_phrase(status: int) -> str:
    """The reason phrase for a status line (WSGI needs one)."""
    return _REASONS.get(status, "Error")


def rfc6750_error(error: VerificationError) -> str | None:
    """The RFC 6750 ``error`` attribute for ``error`` (``None``: no attribute)."""
    if isinstance(error, MissingToken):
        return None
    if isinstance(error, InvalidRequest):
        return "invalid_request"
    if isinstance(error, PolicyDenied) or error.status_code == 403:
        return "insufficient_scope"
    if isinstance(error, KeysUnavailable):
        return None
    return "invalid_token"


def error_response(error: VerificationError, realm: str = DEFAULT_REALM) -> ErrorResponse:
    """The RFC 6750 answer for ``error`` (see the table in the module docs)."""
    status = error.status_code if 400 <= error.status_code <= 599 else 401
    attr = rfc6750_error(error)
    headers: list[tuple[str, str]] = [
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-store"),
    ]
    if isinstance(error, KeysUnavailable):
        headers.append(("Retry-After", str(max(1, int(error.retry_after)))))
        body_error = "temporarily_unavailable"
    else:
        challenge = f'Bearer realm="{quote_header_value(realm, 100)}"'
        if attr is not None:
            challenge += f', error="{attr}", error_description="{quote_header_value(error.message)}"'
        headers.append(("WWW-Authenticate", challenge))
        body_error = attr or "unauthorized"
    body = json.dumps({"error": body_error, "code": str(error.code), "message": str(error.message)})
    return ErrorResponse(status, tuple(headers), body.encode("ascii"))

