"""The request side every HTTP adapter shares: bearer token, client IP and RFC 6750 answers.

The framework adapters (:mod:`bbverify.asgi`, :mod:`bbverify.wsgi`,
:mod:`bbverify.flask`, :mod:`bbverify.fastapi`, :mod:`bbverify.starlette`)
only translate their framework's request into the plain values used here and
the :class:`ErrorResponse` built here back into their framework's answer.
Decisions about tokens stay in :class:`bbverify.Verifier`; this module decides
only what the HTTP layer must (which header holds the token, which address is
the client, and how a refusal is spelled on the wire).

Error answers follow RFC 6750:

* no token (:class:`MissingToken`): 401, ``WWW-Authenticate: Bearer realm="..."``
  with no error attribute;
* malformed request (:class:`InvalidRequest`): 400, ``error="invalid_request"``;
* bad token (``InvalidToken``): 401, ``error="invalid_token"``;
* a rule denied (``PolicyDenied``): 403, ``error="insufficient_scope"``;
* keys unavailable (``KeysUnavailable``): 503 with ``Retry-After``.

The body is always JSON ``{"error": ..., "code": ..., "message": ...}``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .audit import Decision, emit
from .claims import PipelineClaims
from .errors import (
    ConfigurationError,
    ErrorCode,
    InvalidRequest,
    KeysUnavailable,
    MissingToken,
    PolicyDenied,
    VerificationError,
)
from .ipranges import catch_all_versions, parse_cidr
from .policies import Rule, as_rules
from .verifier import Verifier

__all__ = [
    "CLAIMS_KEY",
    "CLIENT_IP_KEY",
    "DEFAULT_REALM",
    "KNOWN_SCOPES",
    "POLICY_KEY",
    "UNIX_SOCKET_PEER",
    "VERIFIER_KEY",
    "ErrorHandler",
    "ErrorResponse",
    "Guard",
    "InvalidRequest",
    "MissingToken",
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

_log = logging.getLogger("bbverify")

#: Where adapters put the verified claims (ASGI scope, WSGI environ).
CLAIMS_KEY = "bbverify.claims"
#: Where adapters put the client address the rules saw (for the app's own logs).
CLIENT_IP_KEY = "bbverify.client_ip"
#: Where adapters note which Verifier produced ``CLAIMS_KEY``.
VERIFIER_KEY = "bbverify.verifier"
#: Where adapters note the named policy (after the default) that ``CLAIMS_KEY`` passed.
POLICY_KEY = "bbverify.policy"
DEFAULT_REALM = "bbverify"
#: The peer adapters report for a connection over a Unix socket (no address).
#: Only a ``trusted_proxies`` list naming ``"unix"`` trusts it as a proxy.
UNIX_SOCKET_PEER = "unix"


def wsgi_peer(remote_addr: object) -> str | None:
    """The socket peer from a WSGI ``REMOTE_ADDR``: an address, :data:`UNIX_SOCKET_PEER`, or ``None``.

    WSGI servers listening on a Unix socket spell the peer several ways, all
    meaning "a local process on the socket", never an IP address:

    * ``""``: gunicorn (``--bind unix:...``; ``accept()`` gives an unnamed peer),
    * ``"<local>"``: Werkzeug's server (``run_simple("unix://...")``,
      ``flask run --host unix://...``),
    * a path (``/run/nginx.sock``) or an abstract name (``@name``, or a
      leading NUL): gunicorn when the connecting process bound its socket.

    Each is the one Unix-socket peer that only ``trusted_proxies=["unix",
    ...]`` trusts. Anything else is returned as it is (parsed later as an IP).
    """
    if not isinstance(remote_addr, str):
        return None
    if not remote_addr or remote_addr == "<local>" or remote_addr[0] in "/@\x00":
        return UNIX_SOCKET_PEER
    return remote_addr

# Cap on X-Forwarded-For entries considered; a longer chain is hostile or broken.
MAX_FORWARDED_ENTRIES = 64
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
# RFC 6750 b64token, [A-Za-z0-9-._~+/]+=*, checked without the regex engine
# (bytes.translate deletes the allowed characters in one C pass): it runs on
# every request over a ~1.3 kB token.
_B64TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
# RFC 6750 section 3: error_description and realm use %x20-21 / %x23-5B / %x5D-7E.
_UNSAFE_HEADER_CHARS = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_MAX_DESCRIPTION = 200


# -- bearer token ------------------------------------------------------------------


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
                "the Authorization header is malformed", code=ErrorCode.MALFORMED_AUTHORIZATION
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
        raise InvalidRequest(
            "the Bearer token has characters a token cannot have", code=ErrorCode.MALFORMED_AUTHORIZATION
        )
    return credentials


# ", <scheme> <credentials>" after a first credential: a second header line joined to the first.
_JOINED_CREDENTIALS = re.compile(r",[ \t]*[A-Za-z0-9!#$%&'*+\-.^_`|~]+[ \t]+\S")


# -- client address ------------------------------------------------------------


_NORMALIZED: dict[str, str | None] = {}
_NORMALIZED_MAX = 1024
_UNSEEN = object()


def normalize_ip(value: str | bytes | None) -> str | None:
    """Canonical text of one address as proxies write it, or ``None`` if it is not one.

    See :func:`_normalize_ip`. Results for text are memoised: parsing with
    :mod:`ipaddress` costs more than verifying a cached token, and the same
    few peers and proxies send every request. The cap bounds the memo
    whatever addresses arrive.
    """
    if not isinstance(value, str):
        return _normalize_ip(value)
    hit = _NORMALIZED.get(value, _UNSEEN)
    if hit is not _UNSEEN:
        return hit  # type: ignore[return-value]
    result = _normalize_ip(value)
    if len(_NORMALIZED) >= _NORMALIZED_MAX:
        _NORMALIZED.clear()
    _NORMALIZED[value] = result
    return result


def _normalize_ip(value: str | bytes | None) -> str | None:
    """Canonical text of one address as proxies write it, or ``None`` if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:8080``, ``2001:db8::1``, ``[2001:db8::1]``
    and ``[2001:db8::1]:8080``. An IPv4-mapped IPv6 address
    (``::ffff:1.2.3.4``) becomes the IPv4 address, so IPv4 rules apply to it.
    An address with a zone id (``fe80::1%eth0``) gives ``None``, the same rule
    as :func:`bbverify.ipranges.parse_client_ip` applies: a scoped address
    names a host only on one interface, so no range can admit it. Anything
    else (``unknown``, obfuscated names, junk) gives ``None``; this function
    never raises.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    text = value.strip(' \t"')
    if not text or len(text) > 100 or not text.isascii():
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not (port.isascii() and port.isdigit()):
            return None
        text = host
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """Which proxies in front of the application may be believed about the client.

    Build it with :meth:`parse`. Either ``hops`` (how many proxies stand in
    front of the app, the socket peer being the last) or ``networks`` (the
    proxies' address ranges) and ``unix`` (a peer on a Unix socket is a
    proxy) are set, never both.
    """

    hops: int = 0
    networks: tuple[_Network, ...] = field(default=())
    unix: bool = False
    # Memo of _trusted: parsing an address costs more than verifying a cached
    # token, and the same few proxies send every request. Bounded below.
    _memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False, hash=False)

    @classmethod
    def parse(cls, value: TrustedProxiesSpec) -> TrustedProxies | None:
        """Accept ``None``, a hop count, a list of CIDRs, or a string of either.

        Strings are read as configuration: ``"2"`` is two hops and
        ``"10.0.0.0/8, 192.168.0.0/16"`` is a CIDR list. The entry ``"unix"``
        in a list trusts a peer on a Unix socket (a proxy such as nginx in
        front of ``uvicorn --uds``). Raises
        :class:`~bbverify.errors.ConfigurationError` on anything else,
        including a CIDR with host bits set (``10.0.0.7/8``: the intent is
        ambiguous) and any set of CIDRs that together cover every IPv4 or
        every IPv6 address (any caller could then choose its own address).
        """
        if value is None or isinstance(value, TrustedProxies):
            return value
        if isinstance(value, bool):
            raise ConfigurationError(
                "must be a hop count or a list of CIDRs, not a bool", key="trusted_proxies"
            )
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            # Only ASCII digits are a hop count: str.isdigit() also takes "²" (int() fails)
            # and "٣" (int() reads 3), neither of which an operator means as a count.
            if text.isascii() and text.isdigit():
                value = int(text)
            elif text.isdigit():
                raise ConfigurationError(
                    f"hop count {text!r} must be written in ASCII digits 0-9", key="trusted_proxies"
                )
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, int):
            if not 0 <= value <= MAX_FORWARDED_ENTRIES:
                raise ConfigurationError(
                    f"hop count must be between 0 and {MAX_FORWARDED_ENTRIES}", key="trusted_proxies"
                )
            return cls(hops=value) if value else None
        if not isinstance(value, Iterable):
            raise ConfigurationError("must be a hop count or a list of CIDRs", key="trusted_proxies")
        networks: list[_Network] = []
        unix = False
        for i, cidr in enumerate(value):
            if isinstance(cidr, str) and cidr.strip().lower() == UNIX_SOCKET_PEER:
                unix = True
                continue
            # The same strict parser as IPRanges: host bits, zone ids and junk are refused.
            networks.append(parse_cidr(cidr, key=f"trusted_proxies[{i}]"))
        # Covering everything is refused whatever its shape (0.0.0.0/1 + 128.0.0.0/1):
        # trusting every address as a proxy lets any caller choose its own IP.
        for version in catch_all_versions(networks):
            raise ConfigurationError(
                f"these ranges together trust every IPv{version} address as a proxy, so any "
                "caller could set its own IP; list your proxies' addresses, or give a hop count",
                key="trusted_proxies",
            )
        if not networks and not unix:
            return None
        return cls(networks=tuple(networks), unix=unix)

    def _trusted(self, address: str) -> bool:
        memo = self._memo
        hit = memo.get(address)
        if hit is not None:
            return hit
        ip = ipaddress.ip_address(address)
        result = any(ip.version == net.version and ip in net for net in self.networks)
        if len(memo) >= _NORMALIZED_MAX:
            memo.clear()
        memo[address] = result
        return result

    def resolve(self, peer: str | bytes | None, forwarded_for: Sequence[str | bytes]) -> str | None:
        """The client address behind these proxies (see :func:`client_ip`)."""
        peer_ip = normalize_ip(peer)
        entries: list[str] = []
        for line in forwarded_for:
            # Non-ASCII entries survive the split and are judged (as junk) one by one.
            text = line.decode("latin-1") if isinstance(line, bytes) else line
            if not isinstance(text, str):
                return None
            entries.extend(part for part in (p.strip() for p in text.split(",")) if part)
        if len(entries) > MAX_FORWARDED_ENTRIES:
            return None
        if self.hops:
            # Hop counting never looks at the peer (the last proxy), so a peer
            # without an address (a Unix socket) changes nothing.
            if len(entries) < self.hops:
                # Fewer entries than proxies: the request did not come the way
                # the deployment says it must, so no address can be believed.
                return None
            return normalize_ip(entries[-self.hops])
        if peer == UNIX_SOCKET_PEER and self.unix:
            candidate: str | None = None  # the peer is the proxy, but has no address to fall back to
        elif peer_ip is None:
            return None
        elif not self._trusted(peer_ip):
            return peer_ip  # not from a proxy: the header is the client's own claim
        else:
            candidate = peer_ip
        for entry in reversed(entries):
            address = normalize_ip(entry)
            if address is None:
                return None
            candidate = address
            if not self._trusted(address):
                return address
        # Every hop is a trusted proxy: the request started inside, at the leftmost one.
        return candidate


TrustedProxiesSpec = int | str | Sequence[str] | TrustedProxies | None


def client_ip(
    peer: str | bytes | None,
    forwarded_for: Sequence[str | bytes] = (),
    trusted_proxies: TrustedProxies | None = None,
) -> str | None:
    """The client address for IP rules; ``None`` when it cannot be known.

    * Without trusted proxies, the socket peer; ``X-Forwarded-For`` is ignored.
    * With a hop count ``N``: the ``N``-th ``X-Forwarded-For`` entry from the
      right (each of the ``N`` proxies appended the address it saw; the
      socket peer is the last proxy). Fewer than ``N`` entries gives ``None``.
    * With CIDRs: walk ``[X-Forwarded-For entries..., peer]`` from the right,
      skipping trusted addresses; the first untrusted one is the client. If
      the peer itself is not trusted, it is the client.

    A junk entry where the client should be gives ``None``, so IP rules deny.
    Several ``X-Forwarded-For`` lines are joined in order. Never raises.
    """
    if trusted_proxies is None:
        return normalize_ip(peer)
    try:
        return trusted_proxies.resolve(peer, forwarded_for)
    except Exception:
        return None


# -- scopes ------------------------------------------------------------------------

#: The scopes a verified token can hold, as Starlette ``@requires`` and FastAPI
#: ``Security(..., scopes=[...])`` name them: every verified token has
#: ``pipeline``; tokens of deployment steps (``deploymentEnvironmentUuid``
#: present) also have ``deployment``.
KNOWN_SCOPES = ("pipeline", "deployment")


def scopes_for(claims: PipelineClaims) -> list[str]:
    """``["pipeline"]``, plus ``"deployment"`` for tokens of deployment steps."""
    return ["pipeline", "deployment"] if claims.is_deployment else ["pipeline"]


def check_scope_names(scopes: Iterable[str], key: str = "scopes") -> tuple[str, ...]:
    """``scopes`` as a tuple, or :class:`ConfigurationError` for a name not in :data:`KNOWN_SCOPES`.

    A misspelt scope would otherwise never be granted (every request
    refused) or, worse, be ignored; it is a configuration mistake.
    """
    if isinstance(scopes, str):
        scopes = [scopes]
    out = tuple(scopes)
    for i, scope in enumerate(out):
        if scope not in KNOWN_SCOPES:
            raise ConfigurationError(
                f"unknown scope {scope!r}; bbverify grants {', '.join(KNOWN_SCOPES)}", key=f"{key}[{i}]"
            )
    return out


def check_scopes(
    claims: PipelineClaims, required: Iterable[str], carrier: Mapping[str, object] | None = None
) -> None:
    """Raise :class:`~bbverify.errors.PolicyDenied` (403, code ``insufficient_scope``)
    when ``claims`` lack one of the ``required`` scopes (RFC 6750 section 3.1).

    ``carrier`` is the request's ASGI scope or WSGI environ: the refusal is
    then audited like the verifier's own, through the verifier that
    produced the claims, with the request's method and path.
    """
    try:
        _check_scopes(claims, required)
    except PolicyDenied as exc:
        verifier = carrier.get(VERIFIER_KEY) if carrier is not None else None
        if carrier is not None and isinstance(verifier, Verifier):
            method = carrier.get("method", carrier.get("REQUEST_METHOD"))
            path = carrier.get("path") if "path" in carrier else wsgi_path(carrier.get("PATH_INFO"))
            root = carrier.get("root_path")
            decision = Decision.build(
                claims,
                request_client_ip(carrier),
                exc,
                method=method if isinstance(method, str) else None,
                path=routing_path(
                    path if isinstance(path, str) else None, root if isinstance(root, str) else None
                ),
            )
            emit(decision, verifier.on_decision)
        raise


def _check_scopes(claims: PipelineClaims, required: Iterable[str]) -> None:
    granted = scopes_for(claims)
    for scope in required:
        if scope not in granted:
            raise PolicyDenied(
                f"this resource needs the {scope!r} scope (a token of a deployment step)"
                if scope == "deployment"
                else f"this resource needs the {scope!r} scope",
                code=ErrorCode.INSUFFICIENT_SCOPE,
                rule=f"scope:{scope}",
            )


# -- what the request routes on, and where results live ----------------------------


def routing_path(path: str | None, root_path: str | None = None) -> str:
    """The path the wrapped application routes on.

    WSGI: ``PATH_INFO`` decoded by :func:`wsgi_path` (a dispatcher moves
    its prefix to ``SCRIPT_NAME``), so call it with ``root_path=None``. ASGI: ``path`` holds
    the full path and ``root_path`` the part consumed by mounts and the
    server's ``--root-path`` (ASGI HTTP scope spec; Starlette's ``Mount``
    since 0.35 extends ``root_path`` and leaves ``path`` whole), so the
    application routes on ``path`` minus a leading ``root_path``. An empty
    result is ``"/"``. Exclusions and audit records use this path, so an
    ASGI and a WSGI deployment of the same configuration decide alike.
    """
    text = path if isinstance(path, str) and path else "/"
    # The same cut as Starlette's router (starlette._utils.get_route_path):
    # only at a segment boundary, so "/v10" is not under "/v1".
    if root_path and isinstance(root_path, str) and text.startswith(root_path):
        rest = text[len(root_path) :]
        if not rest or rest.startswith("/"):
            text = rest or "/"
    return text


def wsgi_path(path_info: object) -> str:
    """``PATH_INFO`` decoded the PEP 3333 way: the server's bytes as latin-1, read as UTF-8.

    A WSGI server passes the URL-decoded path bytes as a latin-1 "native
    string" (PEP 3333, "Unicode Issues"), so ``/café`` arrives as ``/cafÃ©``.
    ASGI servers hand over the decoded text (uvicorn decodes UTF-8, invalid
    bytes become U+FFFD), and Werkzeug's ``request.path`` does the same as
    here, so exclusions and audit paths agree across ASGI, WSGI and Flask.
    A value that is not a latin-1 string (a server that already decoded it)
    is used as it is. Returns the path for :func:`routing_path`.
    """
    if not isinstance(path_info, str) or not path_info:
        return "/"
    if path_info.isascii():
        return path_info
    try:
        raw = path_info.encode("latin-1")
    except UnicodeEncodeError:
        return path_info
    return raw.decode("utf-8", errors="replace")


def request_claims(carrier: object) -> PipelineClaims | None:
    """The verified claims an adapter stored for a request, or ``None``.

    ``carrier`` is what the framework hands the application: an ASGI scope,
    a WSGI environ, or any object with a ``scope`` (Starlette/FastAPI
    ``Request``) or ``environ`` (Flask/Werkzeug ``request``) mapping. Every
    adapter stores the claims under :data:`CLAIMS_KEY`.
    """
    mapping = _carrier_mapping(carrier)
    claims = mapping.get(CLAIMS_KEY) if mapping is not None else None
    return claims if isinstance(claims, PipelineClaims) else None


def request_client_ip(carrier: object) -> str | None:
    """The client address the rules saw for a request (``str``), or ``None``.

    ``carrier`` as for :func:`request_claims`. Every adapter stores the
    address under :data:`CLIENT_IP_KEY` when it verified the request.
    """
    mapping = _carrier_mapping(carrier)
    value = mapping.get(CLIENT_IP_KEY) if mapping is not None else None
    return value if isinstance(value, str) else None


def _carrier_mapping(carrier: object) -> Mapping[str, object] | None:
    if isinstance(carrier, Mapping):
        return carrier
    for attribute in ("scope", "environ"):
        value = getattr(carrier, attribute, None)
        if isinstance(value, Mapping):
            return value
    return None


# -- error answers ---------------------------------------------------------------


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


#: A hook that turns an error into the response to send (see :class:`Guard`).
ErrorHandler = Callable[[VerificationError], object]

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


# -- the shared request flow ------------------------------------------------------


def _check_paths(paths: Iterable[str] | None, key: str) -> frozenset[str]:
    if paths is None:
        return frozenset()
    if isinstance(paths, str):
        paths = [paths]
    out = set()
    for p in paths:
        if not isinstance(p, str) or not p.startswith("/"):
            raise ConfigurationError(f"{p!r} must be a path starting with '/'", key=key)
        out.add(p)
    return frozenset(out)


class Guard:
    """The request flow every adapter runs; one per middleware, decorator or dependency.

    Args:
        verifier: the :class:`~bbverify.Verifier` that decides.
        policies: rules added to the verifier's own for requests this guard
            protects (per-route rules).
        exclude_paths: paths served without a token (exact match).
        exclude_prefixes: path prefixes served without a token (``"/public/"``
            opens everything below it; mind the trailing slash). ``"/"`` is
            refused (:class:`ConfigurationError`): it would open every path.
        trusted_proxies: ``None`` (default: the socket peer is the client), a
            hop count, or proxy CIDRs; see :func:`client_ip`.
        realm: the ``realm`` of ``WWW-Authenticate``.
        on_error: ``on_error(error)`` returns the answer to send instead of the
            default: an :class:`ErrorResponse`, or whatever the framework
            accepts (an ASGI app such as a Starlette ``Response``, a Flask
            response value). Returning ``None`` keeps the default answer.
        policy: the verifier's named policy for requests this guard protects
            (``None``: the verifier's default policy, if any). Checked here,
            so a misspelt name fails at start-up (``ConfigurationError``).
    """

    def __init__(
        self,
        verifier: Verifier,
        policies: Rule | Sequence[Rule] | None = None,
        *,
        exclude_paths: Iterable[str] | None = None,
        exclude_prefixes: Iterable[str] | None = None,
        trusted_proxies: TrustedProxiesSpec = None,
        realm: str = DEFAULT_REALM,
        on_error: ErrorHandler | None = None,
        policy: str | None = None,
    ) -> None:
        if not isinstance(verifier, Verifier):
            raise ConfigurationError(f"{verifier!r} is not a bbverify.Verifier", key="verifier")
        self.verifier = verifier
        verifier.check_policy(policy)
        self.policy = policy
        #: The named policy this guard's requests pass (``policy``, else the verifier's default).
        self.applied_policy = policy if policy is not None else verifier.default_policy
        self.policies: tuple[Rule, ...] = as_rules(policies)
        for i, rule in enumerate(self.policies):
            if not callable(rule):
                raise ConfigurationError(f"{rule!r} is not a rule (a callable)", key=f"route_rules[{i}]")
        self.exclude_paths = _check_paths(exclude_paths, "exclude_paths")
        self.exclude_prefixes = tuple(sorted(_check_paths(exclude_prefixes, "exclude_prefixes")))
        if "/" in self.exclude_prefixes:
            # Every path starts with "/": the guard would protect nothing, silently.
            raise ConfigurationError(
                "'/' would serve every path without a token; list the public paths or prefixes "
                "(or do not install the middleware)",
                key="exclude_prefixes",
            )
        self.trusted_proxies = TrustedProxies.parse(trusted_proxies)
        if not isinstance(realm, str) or quote_header_value(realm, 100) != realm or not realm:
            raise ConfigurationError("must be printable ASCII without quotes or backslashes", key="realm")
        self.realm = realm
        if on_error is not None and not callable(on_error):
            raise ConfigurationError("must be a callable", key="on_error")
        self.on_error = on_error

    def is_excluded(self, path: str) -> bool:
        """True when ``path`` is served without a token."""
        return path in self.exclude_paths or any(path.startswith(p) for p in self.exclude_prefixes)

    def client_ip(self, peer: str | bytes | None, forwarded_for: Sequence[str | bytes]) -> str | None:
        """The client address under this guard's proxy settings."""
        return client_ip(peer, forwarded_for, self.trusted_proxies)

    def token(
        self,
        authorization: Sequence[str | bytes],
        client: str | None,
        method: str | None = None,
        path: str | None = None,
    ) -> str:
        """The bearer token; a refusal is audited like the verifier's own."""
        try:
            return bearer_token(authorization)
        except VerificationError as exc:
            decision = Decision.build(None, client, exc, method=method, path=path, policy=self.applied_policy)
            emit(decision, self.verifier.on_decision)
            raise

    def verify(
        self,
        authorization: Sequence[str | bytes],
        *,
        client: str | None,
        method: str | None,
        path: str | None,
    ) -> PipelineClaims:
        """Parse the header and verify the token (blocking; for WSGI and Flask)."""
        token = self.token(authorization, client, method, path)
        return self.verifier.verify(
            token,
            client_ip=client,
            policy=self.policy,
            policies=self.policies or None,
            method=method,
            path=path,
        )

    async def averify(
        self,
        authorization: Sequence[str | bytes],
        *,
        client: str | None,
        method: str | None,
        path: str | None,
    ) -> PipelineClaims:
        """As :meth:`verify`, awaiting any key fetch (for ASGI)."""
        token = self.token(authorization, client, method, path)
        return await self.verifier.averify(
            token,
            client_ip=client,
            policy=self.policy,
            policies=self.policies or None,
            method=method,
            path=path,
        )

    def reusable(self, claims: object, verifier: object, policy: object = None) -> PipelineClaims | None:
        """Claims an outer middleware already verified, if they settle this request.

        They do when the same verifier produced them under the same named
        policy (``policy``, as recorded under :data:`POLICY_KEY`) and this
        guard adds no rules of its own; otherwise the request is verified
        again (cheap: the verifier caches the token).
        """
        if (
            isinstance(claims, PipelineClaims)
            and verifier is self.verifier
            and not self.policies
            and policy == self.applied_policy
        ):
            return claims
        return None

    def error_response(self, error: VerificationError) -> ErrorResponse:
        """The default answer for ``error`` under this guard's realm."""
        return error_response(error, self.realm)

    def refusal(self, error: VerificationError) -> tuple[ErrorResponse, object | None]:
        """The answer for ``error``: ``(response, native)``.

        ``response`` is the :class:`ErrorResponse` to send: what ``on_error``
        returned if that was one, else the default. ``native`` is a
        framework-native answer ``on_error`` returned instead (an ASGI or WSGI
        app, a Flask response value), for the adapter to use if it can; else
        ``None``.
        """
        custom = self.custom_error(error)
        if isinstance(custom, ErrorResponse):
            return custom, None
        return self.error_response(error), custom

    def custom_error(self, error: VerificationError) -> object | None:
        """What ``on_error`` returns for ``error`` (``None`` when unset or on failure)."""
        if self.on_error is None:
            return None
        try:
            return self.on_error(error)
        except Exception:
            _log.exception("on_error hook raised; sending the default answer")
            return None
