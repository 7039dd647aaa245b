"""``bbverify serve``: a forward-auth gateway that reverse proxies ask before forwarding.

A pure ASGI application (run by uvicorn; see :mod:`bbverify.cli`). Each check
names an ORIGINAL request; the gateway reads its method, host and path the
way the configured ``protocol`` delivers them, picks a route
(:mod:`bbverify.routes`), verifies the bearer token against that route's
named policy, and answers:

* 200 with identity headers (workspace, repository, environment, branch,
  pipeline, step; names configurable) to admit; every identity header is
  always sent, empty when the claim is absent, so a proxy that copies them
  overwrites whatever the client sent;
* 401 with ``WWW-Authenticate: Bearer ...`` or 403, with bbverify's JSON body
  (:func:`bbverify.http.error_response`) to refuse; a malformed
  ``Authorization`` header, which adapters answer 400, is answered 401 here
  because nginx turns anything but 2xx/401/403 into a 500;
* 503 with ``Retry-After`` when keys are unavailable: never an admission
  (docs/gateway.md lists what each proxy then shows).

Protocols (``[bbverify.serve] protocol``), which also decide which headers
are believed:

* ``"nginx"`` (``auth_request``): ``X-Original-Method``, ``X-Original-URI``
  (nginx's ``$request_uri``: raw, with the query) and ``X-Original-Host``,
  set by the documented snippet; checks arrive on ``/auth``;
* ``"forwarded"`` (Traefik ForwardAuth, Caddy ``forward_auth``):
  ``X-Forwarded-Method``, ``X-Forwarded-Uri``, ``X-Forwarded-Host``; checks
  arrive on ``/auth``;
* ``"envoy"`` (``ext_authz`` HTTP service): the check's own method, its raw
  path after ``envoy_path_prefix`` (Envoy's ``path_prefix``) and its
  ``Host``, which Envoy copies from the original request.

Each of those headers must appear exactly once. ``X-Forwarded-For`` is
believed only as ``trusted_proxies`` says, exactly as in the adapters
(:func:`bbverify.http.client_ip`).

Operations: ``/healthz`` (the process answers), ``/readyz`` (200 once the
key set of every configured workspace is loaded, else 503), ``/metrics``
(Prometheus text from :mod:`bbverify.metrics`). Every check is logged as one
JSON line on the ``bbverify.gateway.access`` logger; decisions go to the
``bbverify.audit`` logger as everywhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .asgi import Receive, Scope, Send, peer_address
from .audit import record
from .bearer import DEFAULT_REALM, ErrorResponse, error_response
from .claims import PipelineClaims
from .config import load_toml_table, verifier_from_layers, verifier_from_mapping
from .context import RequestContext
from .errors import (
    ConfigurationError,
    ErrorCode,
    InvalidRequest,
    InvalidToken,
    RouteDenied,
    VerificationError,
)
from .guard import Guard
from .metrics import VerifierMetrics, key_sources
from .proxies import TrustedProxiesSpec
from .routes import RouteMatch, RouteTable
from .tables import check_keys
from .verifier import Verifier

__all__ = [
    "DEFAULT_IDENTITY_HEADERS",
    "PROTOCOLS",
    "Gateway",
    "GatewaySettings",
    "gateway_from_mapping",
    "gateway_from_toml",
    "serve_settings",
    "split_serve",
]

PROTOCOLS = ("nginx", "forwarded", "envoy")
#: One JSON line per check; decisions go to ``bbverify.audit`` as everywhere else.
ACCESS_LOGGER = logging.getLogger("bbverify.gateway.access")
_log = logging.getLogger("bbverify.gateway")
#: Claim (as in ``PipelineClaims.summary()``) -> response header naming it.
DEFAULT_IDENTITY_HEADERS: Mapping[str, str] = {
    "workspace": "X-Bbverify-Workspace",
    "repository": "X-Bbverify-Repository",
    "environment": "X-Bbverify-Environment",
    "branch": "X-Bbverify-Branch",
    "pipeline": "X-Bbverify-Pipeline",
    "step": "X-Bbverify-Step",
}
AUTH_PATH = "/auth"
#: Refusals carry their JSON body in this header too, for nginx (see docs/gateway.md).
ERROR_HEADER = "X-Bbverify-Error"
_MAX_ERROR_HEADER = 1024
# RFC 3986 pchar, "/" and "%": what a well-formed path holds and stays as it is.
_URI_SAFE = "/%:@!$&'()*+,;=-._~"
OPS_PATHS = ("/healthz", "/readyz", "/metrics")
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_ORIGINAL_HEADERS = {
    "nginx": (b"x-original-method", b"x-original-host", b"x-original-uri"),
    "forwarded": (b"x-forwarded-method", b"x-forwarded-host", b"x-forwarded-uri"),
}
_SERVE_KEYS = frozenset(
    {
        "protocol",
        "envoy_path_prefix",
        "trusted_proxies",
        "unmatched",
        "case_insensitive_paths",
        "realm",
        "identity_headers",
        "routes",
        "host",
        "port",
        "workers",
        "access_log",
        "allow_override_headers",
    }
)
#: Headers some upstream frameworks read as the request's method or path
#: (Rack/Express method-override, Symfony, IIS URL rewrite). The gateway routes
#: on the proxy's method and path, so a check that carries one is refused
#: unless ``allow_override_headers`` says the upstream ignores them.
OVERRIDE_HEADERS = (
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
    b"x-original-url",
    b"x-rewrite-url",
)


@dataclass(frozen=True)
class GatewaySettings:
    """The checked ``[bbverify.serve]`` table (see docs/gateway.md for each key)."""

    protocol: str
    routes: RouteTable
    envoy_path_prefix: str | None = None
    trusted_proxies: TrustedProxiesSpec = None
    realm: str = DEFAULT_REALM
    identity_headers: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_IDENTITY_HEADERS))
    host: str = "127.0.0.1"
    port: int = 9180
    workers: int = 1
    access_log: bool = True
    allow_override_headers: bool = False


def _expect(value: Any, kind: type, key: str, what: str) -> Any:
    # bool is an int subclass; 'true' is not a port.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigurationError(f"must be {what}", key=key)
    return value


def serve_settings(table: Mapping[str, Any], *, key: str = "serve") -> GatewaySettings:
    """Check a ``serve`` table and build :class:`GatewaySettings`.

    Raises :class:`~bbverify.errors.ConfigurationError` naming the key as
    spelled (``serve.routes[1].path_prefix``) for any mistake, unknown keys
    included.
    """
    if not isinstance(table, Mapping):
        raise ConfigurationError("must be a table ([bbverify.serve])", key=key)
    check_keys(table, _SERVE_KEYS, lambda name: f"{key}.{name}")
    if "protocol" not in table:
        raise ConfigurationError(f"is required: one of {', '.join(PROTOCOLS)}", key=f"{key}.protocol")
    protocol = table["protocol"]
    if protocol not in PROTOCOLS:
        raise ConfigurationError(f"must be one of {', '.join(PROTOCOLS)}", key=f"{key}.protocol")
    prefix = table.get("envoy_path_prefix")
    if protocol == "envoy":
        _expect(prefix, str, f"{key}.envoy_path_prefix", "Envoy's path_prefix, such as '/check'")
        assert isinstance(prefix, str)
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix) or prefix in OPS_PATHS:
            raise ConfigurationError(
                "must be a path such as '/check' (no trailing '/', not an operations path)",
                key=f"{key}.envoy_path_prefix",
            )
    elif prefix is not None:
        raise ConfigurationError("applies only to protocol = 'envoy'", key=f"{key}.envoy_path_prefix")
    routes = table.get("routes", [])
    unmatched = _expect(table.get("unmatched", "deny"), str, f"{key}.unmatched", "a string")
    case = _expect(
        table.get("case_insensitive_paths", False), bool, f"{key}.case_insensitive_paths", "a bool"
    )
    route_table = RouteTable(routes, unmatched=unmatched, case_insensitive_paths=case, key=key)
    if not route_table.routes and unmatched == "deny":
        raise ConfigurationError(
            "no routes and unmatched = 'deny' would refuse everything; add [[bbverify.serve.routes]]",
            key=f"{key}.routes",
        )
    headers = dict(DEFAULT_IDENTITY_HEADERS)
    raw_headers = table.get("identity_headers", {})
    _expect(raw_headers, Mapping, f"{key}.identity_headers", "a table")
    for claim, name in raw_headers.items():
        where = f"{key}.identity_headers.{claim}"
        if claim not in DEFAULT_IDENTITY_HEADERS:
            raise ConfigurationError(
                f"unknown identity {claim!r}; known: {', '.join(DEFAULT_IDENTITY_HEADERS)}", key=where
            )
        if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
            raise ConfigurationError("must be a header name (letters, digits, '-')", key=where)
        headers[claim] = name
    lowered = [h.lower() for h in headers.values()]
    if len(set(lowered)) != len(lowered):
        raise ConfigurationError("two identities share one header name", key=f"{key}.identity_headers")
    if {"authorization", "host", "content-length", "www-authenticate", ERROR_HEADER.lower()} & set(lowered):
        raise ConfigurationError("must not reuse a standard header", key=f"{key}.identity_headers")
    host = _expect(table.get("host", "127.0.0.1"), str, f"{key}.host", "an address")
    port = _expect(table.get("port", 9180), int, f"{key}.port", "a port number")
    if not 0 <= port < 65536:
        raise ConfigurationError("must be a port number", key=f"{key}.port")
    workers = _expect(table.get("workers", 1), int, f"{key}.workers", "a number of processes")
    if not 1 <= workers <= 64:
        raise ConfigurationError("must be between 1 and 64", key=f"{key}.workers")
    realm = _expect(table.get("realm", DEFAULT_REALM), str, f"{key}.realm", "a string")
    access_log = _expect(table.get("access_log", True), bool, f"{key}.access_log", "true or false")
    allow_override = _expect(
        table.get("allow_override_headers", False), bool, f"{key}.allow_override_headers", "true or false"
    )
    return GatewaySettings(
        protocol=protocol,
        routes=route_table,
        envoy_path_prefix=prefix,
        trusted_proxies=table.get("trusted_proxies"),
        realm=realm,
        identity_headers=headers,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        allow_override_headers=allow_override,
    )


def _header_value(value: str | None) -> str:
    # Claim values come from the token: anything outside printable ASCII (a
    # Unicode branch name, CR/LF) is percent-encoded, so no header is forged or split.
    if value is None:
        return ""
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return "".join(c if c.isascii() and c.isprintable() and c != "%" else _pct(c) for c in value)


def _pct(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8"))


class Gateway:
    """The forward-auth ASGI application.

    Args:
        verifier: decides (its base rules always apply; routes add named policies).
        settings: the checked ``[bbverify.serve]`` table.
        metrics: where decisions and latencies are counted (a fresh
            :class:`~bbverify.metrics.VerifierMetrics` on the global registry
            by default).

    Raises :class:`~bbverify.errors.ConfigurationError` if a route names a
    policy the verifier does not have.
    """

    def __init__(
        self, verifier: Verifier, settings: GatewaySettings, *, metrics: VerifierMetrics | None = None
    ) -> None:
        self.settings = settings
        self.guard = Guard(verifier, trusted_proxies=settings.trusted_proxies, realm=settings.realm)
        self.verifier = verifier
        for route in settings.routes.routes:
            # A misspelt policy name stops the start, naming the route.
            verifier.check_policy(route.policy, key=f"serve.{route.name}.policy")
            if route.policy is None and not route.public and verifier.default_policy is None:
                # Fail closed: without a default policy the base rules alone would
                # admit every genuine token of the workspace. A route that means
                # that must say so with a policy written for it.
                raise ConfigurationError(
                    "names no policy and no default_policy is configured; name a policy "
                    "(or set default_policy)",
                    key=f"serve.{route.name}.policy",
                )
        if settings.routes.unmatched == "default_policy" and verifier.default_policy is None:
            raise ConfigurationError(
                "is 'default_policy' but no default_policy is configured", key="serve.unmatched"
            )
        self.metrics = metrics if metrics is not None else VerifierMetrics()
        self.metrics.watch(verifier)
        self._identity = tuple(
            (claim, name.lower().encode("ascii")) for claim, name in settings.identity_headers.items()
        )
        self._empty_identity = [(name, b"") for _, name in self._identity]
        self._warming: asyncio.Task[None] | None = None
        self._identity_memo: dict[int, tuple[PipelineClaims, list[tuple[bytes, bytes]]]] = {}

    # -- ASGI -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return  # WebSockets are not forward-auth checks; closing the scope refuses them
        path = scope.get("path") or "/"
        if path == "/healthz":
            await _send(send, 200, [(b"content-type", b"text/plain")], b"ok\n")
        elif path == "/readyz":
            await self._readyz(send)
        elif path == "/metrics":
            await self._metrics(send)
        else:
            await self._check(scope, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Warm in the background: /readyz reports when it has worked.
                self._warm()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._warming is not None:
                    self._warming.cancel()
                _mark_process_dead()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _warm(self) -> None:
        if self._warming is not None and not self._warming.done():
            return
        self._warming = asyncio.get_running_loop().create_task(self._warm_up())

    async def _warm_up(self) -> None:
        try:
            # warm_up waits at most the key set's own timeout; it runs on a thread,
            # never on the loop.
            await asyncio.to_thread(self.verifier.warm_up)
        except Exception as exc:
            _log.warning("key set not loaded yet: %s", exc)

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """Whether every key set is loaded, and per issuer.

        A key source that cannot say (it has no ``status()``) counts as not
        loaded: readiness that cannot be shown is not claimed.
        """
        per: dict[str, bool] = {}
        for issuer, source in key_sources(self.verifier):
            status_of = getattr(source, "status", None)
            try:
                per[issuer] = bool(status_of()["loaded"]) if callable(status_of) else False
            except Exception:
                _log.exception("key source status failed for %s", issuer)
                per[issuer] = False
        return all(per.values()), per

    def key_stores(self) -> dict[str, str]:
        """Per issuer with a shared key store, its state from ``status()`` (see :mod:`bbverify.keys`)."""
        states: dict[str, str] = {}
        for issuer, source in key_sources(self.verifier):
            status_of = getattr(source, "status", None)
            try:
                state = status_of().get("key_store") if callable(status_of) else None
            except Exception:
                _log.exception("key source status failed for %s", issuer)
                continue
            if state is not None:
                states[issuer] = str(state)
        return states

    async def _readyz(self, send: Send) -> None:
        ok, per = self.ready()
        if not ok:
            # Report, and start at most the fetch a check would start now: a
            # forced fetch here (warm_up) would let probes, or anyone who can
            # reach the port, bypass the backoff while the issuer fails.
            for _, source in key_sources(self.verifier):
                refresh = getattr(source, "refresh_if_due", None)
                if callable(refresh):
                    try:
                        refresh()
                    except Exception:
                        _log.exception("starting a key set refresh failed")
        report: dict[str, Any] = {"ready": ok, "key_sets": per}
        stores = self.key_stores()
        if stores:
            # Shown, not judged: without its store a worker still verifies,
            # on its own budget; "misconfigured" needs an operator.
            report["key_stores"] = stores
        body = json.dumps(report).encode()
        await _send(send, 200 if ok else 503, [(b"content-type", b"application/json")], body)

    async def _metrics(self, send: Send) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self.metrics.state)  # key sets and caches: this worker's view
            # Reads every worker's metric file: off the event loop.
            body = await asyncio.to_thread(generate_latest, registry)
        else:
            body = generate_latest(self.metrics.registry or REGISTRY)
        await _send(send, 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], body)

    # -- the check ---------------------------------------------------------------

    def _original(self, scope: Scope, headers: dict[bytes, list[bytes]]) -> tuple[str, str | None, str]:
        """``(method, host, target)`` of the original request, from the trusted headers only."""
        protocol = self.settings.protocol
        if protocol == "envoy":
            prefix = self.settings.envoy_path_prefix or ""
            raw = scope.get("raw_path") or b""
            text = raw.decode("latin-1")
            if not (text == prefix or text.startswith(prefix + "/")):
                raise RouteDenied(
                    "the check did not arrive under envoy_path_prefix",
                    code=ErrorCode.MISSING_ORIGINAL_REQUEST,
                )
            target = text[len(prefix) :] or "/"
            hosts = headers.get(b"host", [])
            if len(hosts) > 1:
                raise RouteDenied(
                    "the check carries more than one Host", code=ErrorCode.MISSING_ORIGINAL_REQUEST
                )
            return str(scope.get("method", "")), hosts[0].decode("latin-1") if hosts else None, target
        if (scope.get("path") or "/") != AUTH_PATH:
            raise RouteDenied(f"checks are asked on {AUTH_PATH}", code=ErrorCode.MISSING_ORIGINAL_REQUEST)
        names = _ORIGINAL_HEADERS[protocol]
        values: list[str | None] = []
        for name in names:
            found = headers.get(name, [])
            if len(found) > 1:
                raise RouteDenied(
                    f"the check carries more than one {name.decode()}",
                    code=ErrorCode.MISSING_ORIGINAL_REQUEST,
                )
            values.append(found[0].decode("latin-1") if found else None)
        method, host, target = values
        if method is None or target is None:
            raise RouteDenied(
                f"the proxy did not send {names[0].decode()} and {names[2].decode()}",
                code=ErrorCode.MISSING_ORIGINAL_REQUEST,
            )
        return method, host, target

    async def _check(self, scope: Scope, send: Send) -> None:
        start = time.perf_counter()
        headers: dict[bytes, list[bytes]] = {}
        for k, v in scope.get("headers") or ():
            headers.setdefault(k.lower(), []).append(v)
        guard = self.guard
        address = guard.client_address(peer_address(scope), headers.get(b"x-forwarded-for", []))
        client = None if address is None else str(address)
        claims: PipelineClaims | None = None
        match: RouteMatch | None = None
        method = host = target = None
        audited = False
        try:
            method, host, target = self._original(scope, headers)
            if not self.settings.allow_override_headers:
                for name in OVERRIDE_HEADERS:
                    if name in headers:
                        raise RouteDenied(
                            f"the original request carries {name.decode()}, which the upstream may "
                            "act on instead of the routed method or path",
                            code=ErrorCode.UNNORMALIZABLE_REQUEST,
                        )
            match = self.settings.routes.match(method, host, target)
            if not match.public:
                context = RequestContext(address, 0.0, match.method, match.path)
                # From here on a refusal is audited where it is decided: the token step
                # and the verifier record it under the route's policy (None: the default).
                audited = True
                token = guard.token(headers.get(b"authorization", []), context, policy=match.policy)
                claims = await self.verifier.averify(token, context=context, policy=match.policy)
        except Exception as caught:
            exc = caught if isinstance(caught, VerificationError) else self._internal(caught)
            if not (audited and isinstance(caught, VerificationError)):
                # The verifier never saw it (a route denial, an internal error): audit it
                # once here like the verifier's own refusals. The path as the proxy sent it
                # (it did not normalise), quoted so that spaces or controls in it cannot
                # fake fields of the audit line.
                path = quote((target or "").split("?", 1)[0][:512], safe=_URI_SAFE) or None
                said = quote(method[:32], safe=_URI_SAFE) if method else None
                unseen = RequestContext(address, 0.0, said, path)
                if match is None:
                    record(exc, unseen, self.verifier.on_decision)  # no route: no policy applies
                else:
                    self.verifier.record_refusal(exc, unseen, policy=match.policy)
            response = self._refusal(exc)
            elapsed = time.perf_counter() - start
            if match is not None and not match.public:
                self.metrics.observe(elapsed)
            await _send(send, response.status, _encode(response.headers), response.body)
            self._access(method, host, target, match, response.status, exc.code, None, client, elapsed)
            return
        elapsed = time.perf_counter() - start
        out = [(b"content-type", b"text/plain"), (b"cache-control", b"no-store")]
        if claims is None:
            out.extend(self._empty_identity)
        else:
            self.metrics.observe(elapsed)
            out.extend(self._identity_headers(claims))
        await _send(send, 200, out, b"")
        self._access(method, host, target, match, 200, "ok", claims, client, elapsed)

    def _identity_headers(self, claims: PipelineClaims) -> list[tuple[bytes, bytes]]:
        # The verifier hands back the same claims object for a cached token, so
        # the encoded headers are kept per object (checked by identity, not id
        # alone, since ids are reused); the cap bounds the memo.
        hit = self._identity_memo.get(id(claims))
        if hit is not None and hit[0] is claims:
            return hit[1]
        summary = claims.summary()
        headers = [
            (name, _header_value(summary.get(claim)).encode("ascii")) for claim, name in self._identity
        ]
        if len(self._identity_memo) >= 1024:
            self._identity_memo.clear()
        self._identity_memo[id(claims)] = (claims, headers)
        return headers

    @staticmethod
    def _internal(exc: Exception) -> VerificationError:
        # A bug here must refuse, never admit, and never answer 500 (a proxy
        # shows that as its own error page): refuse like the verifier does.
        _log.exception("unexpected error while checking a request; refusing it")
        return InvalidToken(
            f"the request could not be checked ({type(exc).__name__})", code=ErrorCode.VERIFICATION_FAILED
        )

    def _refusal(self, exc: VerificationError) -> ErrorResponse:
        response = error_response(exc, self.settings.realm)
        # nginx's auth_request drops the subrequest's body; the documented
        # snippet answers with this header instead (error_page + return).
        headers = (*response.headers, (ERROR_HEADER, _error_header(response.body)))
        status = response.status
        if isinstance(exc, InvalidRequest):
            # nginx turns a 400 from auth_request into a 500; keep the refusal a refusal.
            status = 401
        # KeysUnavailable stays 503: it never admits; docs/gateway.md says what each proxy shows.
        return ErrorResponse(status, headers, response.body)

    def _access(
        self,
        method: str | None,
        host: str | None,
        target: str | None,
        match: RouteMatch | None,
        status: int,
        code: str,
        claims: PipelineClaims | None,
        client: str | None,
        elapsed: float,
    ) -> None:
        if not self.settings.access_log or not ACCESS_LOGGER.isEnabledFor(logging.INFO):
            return
        record = {
            "method": method,
            "host": host,
            # The path without its query: queries may carry secrets.
            "path": (target or "").split("?", 1)[0][:512] or None,
            "route": match.name if match is not None else None,
            "policy": match.policy if match is not None else None,
            "status": status,
            "code": code,
            "client_ip": client,
            "duration_ms": round(elapsed * 1000, 3),
            **(claims.summary() if claims is not None else {}),
        }
        ACCESS_LOGGER.info(json.dumps(record, ensure_ascii=True))


def _error_header(body: bytes) -> str:
    """``body`` (bbverify's JSON) as a header value of at most ``_MAX_ERROR_HEADER`` characters.

    json.dumps output is ASCII without CR/LF, so it is a safe header value.
    A long one is shortened by cutting its MESSAGE before serialising, never
    the JSON itself (a cut inside a ``\\u`` escape is not JSON).
    """
    text = body.decode("ascii")
    if len(text) <= _MAX_ERROR_HEADER:
        return text
    document = json.loads(text)
    message = str(document.get("message", ""))
    # Each character of the message takes at most 12 characters once escaped
    # (a surrogate pair); halving bounds the loop at about 20 rounds.
    keep = len(message)
    while keep > 0:
        keep //= 2
        document["message"] = message[:keep] + "..."
        text = json.dumps(document)
        if len(text) <= _MAX_ERROR_HEADER:
            return text
    document["message"] = ""
    return json.dumps(document)[:_MAX_ERROR_HEADER]


def _encode(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _mark_process_dead() -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def split_serve(table: Mapping[str, Any]) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """``(verifier table, serve table)`` of a ``[bbverify]`` table."""
    if not isinstance(table, Mapping):
        raise ConfigurationError("must be a table of settings", key="bbverify")
    rest = {k: v for k, v in table.items() if k != "serve"}
    if "serve" not in table:
        raise ConfigurationError("is required for bbverify serve ([bbverify.serve])", key="serve")
    return rest, table["serve"]


def gateway_from_mapping(
    table: Mapping[str, Any], *, metrics: VerifierMetrics | None = None, **overrides: Any
) -> Gateway:
    """A :class:`Gateway` from a ``[bbverify]`` table (verifier settings plus ``serve``).

    ``overrides`` go to :func:`bbverify.config.verifier_from_mapping`.
    Raises :class:`~bbverify.errors.ConfigurationError` for any mistake.
    """
    rest, serve = split_serve(table)
    settings = serve_settings(serve)
    verifier = verifier_from_mapping(rest, **overrides)
    return Gateway(verifier, settings, metrics=metrics)


def gateway_from_toml(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, Any] | None = None,
    metrics: VerifierMetrics | None = None,
    **overrides: Any,
) -> Gateway:
    """A :class:`Gateway` from the ``[bbverify]`` table of a TOML file, with ``BBVERIFY_*`` layered over it.

    The verifier settings are layered exactly as ``bbverify verify --config``
    layers them (:func:`bbverify.config.verifier_from_layers`): each
    ``BBVERIFY_*`` variable of ``environ`` (default ``os.environ``) replaces
    its setting in the file, then ``overrides``; an invalid or misspelt
    variable is a :class:`~bbverify.errors.ConfigurationError` naming it.
    ``[bbverify.serve]`` has no variables.
    """
    rest, serve = split_serve(load_toml_table(path))
    settings = serve_settings(serve)
    verifier = verifier_from_layers(table=rest, environ=environ, **overrides)
    return Gateway(verifier, settings, metrics=metrics)
