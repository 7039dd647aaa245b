"""A fake Bitbucket Pipelines issuer, for tests and offline demos.

:class:`FakeIssuer` generates RSA keys, serves the discovery document and
``keys.json`` on a real HTTP server on 127.0.0.1, and mints tokens shaped
like Bitbucket's (braced UUIDs, both ``sub`` forms, string or array ``aud``).
It can rotate keys and be told to fail in the ways real issuers fail::

    from bbverify.testing import FakeIssuer

    with FakeIssuer() as issuer:
        verifier = issuer.verifier()
        token = issuer.mint(environment_uuid=issuer.environment_uuid)
        claims = verifier.verify(token)

With pytest, the ``bbverify_issuer`` fixture (installed with the package)
gives a started issuer that stops after the test.

Nothing here is for production: the private keys live in memory and the
server speaks plain HTTP on loopback only.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .verifier import Verifier

__all__ = [
    "FAILURE_MODES",
    "TOKEN_KINDS",
    "FakeIssuer",
    "IssuerRequest",
    "RateLimit",
    "SigningKey",
    "b64url",
    "generate_rsa_key",
    "sign_rs256",
]

#: Ways the fake issuer can be told to misbehave (see :meth:`FakeIssuer.fail`).
FAILURE_MODES = (
    "down",  # connection closed without an answer
    "500",  # HTTP 500
    "404",  # HTTP 404
    "garbage",  # 200 with a body that is not JSON
    "empty",  # 200 with {"keys": []}
    "slow",  # answers after `delay` seconds
    "hang",  # sends headers, then nothing for `delay` seconds
    "drip",  # sends the body one byte every `delay` seconds
    "huge",  # 200 with a body of several megabytes
    "redirect",  # 302 to another host
)


#: Ready-made tokens :meth:`FakeIssuer.mint_kind` gives (and ``GET /mint/<kind>`` serves
#: when the issuer is built with ``mint_endpoint=True``, as ``bbverify fake-issuer`` does).
TOKEN_KINDS = (
    "valid",  # a build step of the issuer's repository, on main
    "deployment",  # a deployment step to the issuer's environment
    "expired",  # lived its lifetime, ended an hour ago
    "wrong-audience",  # aud is not the workspace's
    "other-repository",  # a build step of another repository of the same workspace
)


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWS uses it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A new RSA private key with the usual exponent 65537."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def sign_rs256(key: rsa.RSAPrivateKey, signing_input: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-256 over ``signing_input``."""
    return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    """One key of the fake issuer: its ``kid`` and RSA private key."""

    kid: str
    private_key: rsa.RSAPrivateKey

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK, the way Bitbucket publishes it."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": _int_b64(numbers.n),
            "e": _int_b64(numbers.e),
        }

    def public_pem(self) -> bytes:
        """The public key in PEM (SubjectPublicKeyInfo)."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class IssuerRequest:
    """One request the fake issuer received: when (its clock), from whom, what, and its answer.

    ``early`` is true when the client had been told by a ``Retry-After`` not
    to ask again before this time.
    """

    at: float
    client: str
    path: str
    status: int
    early: bool


class RateLimit:
    """A rolling per-client request limit, like Bitbucket's anonymous one (60 an hour per IP).

    Every request from a client counts, answered or refused. Beyond ``limit``
    requests within ``window`` seconds the answer is 429 with ``Retry-After``
    (seconds, or an HTTP date when ``http_date``) naming when the oldest
    request leaves the window. ``clock`` (seconds since the epoch) may be
    accelerated for simulations.
    """

    def __init__(
        self,
        limit: int = 60,
        window: float = 3600.0,
        *,
        clock: Callable[[], float] = time.time,
        http_date: bool = False,
    ) -> None:
        self.limit, self.window, self.clock, self.http_date = limit, float(window), clock, http_date
        self._seen: dict[str, collections.deque[float]] = {}
        self._retry_until: dict[str, float] = {}

    def admit(self, client: str, now: float) -> tuple[bool, str | None, bool]:
        """``(allowed, retry_after_header, early)`` for a request from ``client`` at ``now``."""
        early = now < self._retry_until.get(client, float("-inf"))
        seen = self._seen.setdefault(client, collections.deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        seen.append(now)
        if len(seen) <= self.limit:
            return True, None, early
        wait = max(1, int(seen[-self.limit - 1] + self.window - now) + 1)
        until = now + wait
        self._retry_until[client] = max(self._retry_until.get(client, until), until)
        header = formatdate(until, usegmt=True) if self.http_date else str(wait)
        if self.http_date:
            # An HTTP date has whole seconds; the client may come back at that second.
            self._retry_until[client] = float(int(until))
        return False, header, early


def _braced() -> str:
    return "{" + str(uuid.uuid4()) + "}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        issuer = self.server.issuer
        path = self.path.split("?", 1)[0]
        if issuer.mint_endpoint and path.startswith("/mint/"):
            kind = path[len("/mint/") :]
            if kind not in TOKEN_KINDS:
                self._send(404, json.dumps({"error": "unknown kind", "kinds": list(TOKEN_KINDS)}).encode())
                return
            # The bare token, no trailing newline: a client reading the body as it is
            # (requests, urllib) must get exactly what verify() accepts.
            self._send(200, issuer.mint_kind(kind).encode(), {"Content-Type": "text/plain"})
            return
        limit = issuer.rate_limit
        if limit is not None:
            with issuer._lock:
                now = limit.clock()
                allowed, retry_after, early = limit.admit(self.client_address[0], now)
                issuer.requests.append(
                    IssuerRequest(now, self.client_address[0], path, 200 if allowed else 429, early)
                )
            if not allowed:
                assert retry_after is not None
                self._send(429, b'{"error":"rate limited"}', {"Retry-After": retry_after})
                return
        if path == issuer.path_prefix + "/.well-known/openid-configuration":
            issuer._count("discovery")
            body = json.dumps(issuer.discovery_document()).encode()
        elif path == issuer.path_prefix + "/keys.json":
            issuer._count("jwks")
            if issuer._failure is not None and self._misbehave(*issuer._failure):
                return
            body = json.dumps(issuer.jwks()).encode()
            headers = issuer.cache_headers(body)
            if headers and self.headers.get("If-None-Match") == headers["ETag"]:
                issuer._count("not_modified")
                self._send(304, b"", headers)
                return
            self._send(200, body, headers)
            return
        else:
            self._send(404, b'{"error":"not found"}')
            return
        self._send(200, body)

    def _send(self, status: int, body: bytes, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        if "Content-Type" not in (extra or {}):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _misbehave(self, mode: str, delay: float) -> bool:
        """Answer according to the failure mode; False means answer normally."""
        stop = self.server.stopping
        if mode == "down":
            self.close_connection = True
            self.connection.close()
            return True
        if mode in ("500", "404"):
            self._send(int(mode), b"oops")
            return True
        if mode == "garbage":
            self._send(200, b"<html>not json</html>")
            return True
        if mode == "empty":
            self._send(200, b'{"keys": []}')
            return True
        if mode == "huge":
            self._send(200, b'{"keys": [' + b" " * (4 * 1024 * 1024) + b"]}")
            return True
        if mode == "redirect":
            self._send(302, b"", {"Location": "https://evil.example/keys.json"})
            return True
        if mode == "slow":
            stop.wait(delay)
            return False
        body = json.dumps(self.server.issuer.jwks()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        try:
            if mode == "hang":
                stop.wait(delay)
                self.wfile.write(body)
            elif mode == "drip":
                for i in range(len(body)):
                    if stop.wait(delay):
                        break
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
        except OSError:
            pass  # the client gave up, as it should
        self.close_connection = True
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, issuer: FakeIssuer, host: str, port: int) -> None:
        self.issuer = issuer
        self.stopping = threading.Event()
        super().__init__((host, port), _Handler)


class FakeIssuer:
    """A Bitbucket-shaped OIDC issuer on a loopback HTTP server.

    Args:
        workspace: workspace slug used in the issuer path.
        workspace_uuid: braced UUID for ``workspaceUuid`` (random by default).
        keys: how many signing keys to publish (the first signs by default).
        key_bits: RSA modulus size.
        host: the loopback address to listen on (127.0.0.1 by default).
        port: the port (0, a free port, by default).
        mint_endpoint: also serve ``GET /mint/<kind>`` (see :data:`TOKEN_KINDS`),
            for trying a running app by hand. Off by default.
    """

    def __init__(
        self,
        workspace: str = "demo-workspace",
        *,
        workspace_uuid: str | None = None,
        keys: int = 1,
        key_bits: int = 2048,
        host: str = "127.0.0.1",
        port: int = 0,
        mint_endpoint: bool = False,
    ) -> None:
        self.workspace = workspace
        self.mint_endpoint = mint_endpoint
        self.workspace_uuid = workspace_uuid or _braced()
        self.repository_uuid = _braced()
        self.environment_uuid = _braced()
        self._host, self._port = host, port
        self._key_bits = key_bits
        self._lock = threading.Lock()
        # A random kid prefix keeps two fake issuers from ever sharing a kid.
        self._kid_prefix = uuid.uuid4().hex[:8]
        self._next_kid = 1
        self._keys: list[SigningKey] = [self._new_key() for _ in range(keys)]
        self._retired_key = self._keys[0] if self._keys else self._new_key()
        self._extra_jwks: list[dict[str, Any]] = []
        self._failure: tuple[str, float] | None = None
        self._counts: dict[str, int] = {"jwks": 0, "discovery": 0, "not_modified": 0}
        #: A :class:`RateLimit` to enforce on every request, or ``None``.
        self.rate_limit: RateLimit | None = None
        #: Every request received while :attr:`rate_limit` is set.
        self.requests: list[IssuerRequest] = []
        #: ``Cache-Control`` for ``keys.json`` (``None``: no caching headers,
        #: no ``ETag``); with a value, ``If-None-Match`` is answered with 304.
        self.cache_control: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> FakeIssuer:
        """Start serving (idempotent); returns self."""
        if self._server is None:
            self._server = _Server(self, self._host, self._port)
            self._port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is not None:
            server.stopping.set()
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the server must be started)."""
        if self._server is None:
            raise RuntimeError("FakeIssuer is not started")
        return f"http://{self._host}:{self._port}"

    @property
    def path_prefix(self) -> str:
        return f"/2.0/workspaces/{self.workspace}/pipelines-config/identity/oidc"

    @property
    def issuer(self) -> str:
        """The issuer URL, shaped like Bitbucket's but on loopback."""
        return self.base_url + self.path_prefix

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/keys.json"

    @property
    def audience(self) -> str:
        """Bitbucket's default audience for this workspace (no braces)."""
        return "ari:cloud:bitbucket::workspace/" + self.workspace_uuid.strip("{}")

    def discovery_document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss"],
        }

    def verifier(self, **options: Any) -> Verifier:
        """A :class:`~bbverify.Verifier` for this issuer; ``options`` override."""
        options.setdefault("issuer", self.issuer)
        options.setdefault("audience", self.audience)
        return Verifier(**options)

    # -- keys -------------------------------------------------------------------

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs by default (the newest published one)."""
        with self._lock:
            return self._keys[-1] if self._keys else self._retired_key

    @property
    def keys(self) -> list[SigningKey]:
        with self._lock:
            return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        """The published key set."""
        with self._lock:
            return {"keys": [k.public_jwk() for k in self._keys] + list(self._extra_jwks)}

    def cache_headers(self, body: bytes) -> dict[str, str]:
        """``Cache-Control`` and an ``ETag`` for a ``keys.json`` body, when :attr:`cache_control` is set."""
        if self.cache_control is None:
            return {}
        return {
            "Cache-Control": self.cache_control,
            "ETag": '"' + hashlib.sha256(body).hexdigest()[:16] + '"',
        }

    def limit_requests(
        self,
        limit: int = 60,
        window: float = 3600.0,
        *,
        clock: Callable[[], float] = time.time,
        http_date: bool = False,
    ) -> RateLimit:
        """Enforce a rolling per-client limit (see :class:`RateLimit`) and record every request."""
        self.rate_limit = RateLimit(limit, window, clock=clock, http_date=http_date)
        return self.rate_limit

    def rotate(self, *, keep_old: bool = True, key: SigningKey | None = None) -> SigningKey:
        """Publish a new key (``key``, or a fresh one) that signs from now on.

        The other keys stay published unless ``keep_old`` is false.
        """
        with self._lock:
            new = key or self._new_key()
            if not keep_old:
                self._retired_key = self._keys[-1] if self._keys else new
                self._keys = []
            self._keys.append(new)
            return new

    def _new_key(self) -> SigningKey:
        key = SigningKey(
            kid=f"{self._kid_prefix}-{self._next_kid}", private_key=generate_rsa_key(self._key_bits)
        )
        self._next_kid += 1
        return key

    def remove_key(self, kid: str) -> None:
        """Stop publishing ``kid`` (tokens it signs then fail after a refresh)."""
        with self._lock:
            for k in self._keys:
                if k.kid == kid:
                    self._retired_key = k
            self._keys = [k for k in self._keys if k.kid != kid]

    def add_jwk(self, jwk: Mapping[str, Any]) -> None:
        """Publish an extra raw JWK (weak keys, duplicates, junk) as given."""
        with self._lock:
            self._extra_jwks.append(dict(jwk))

    # -- failures ---------------------------------------------------------------

    def fail(self, mode: str, delay: float = 1.0) -> None:
        """Make ``keys.json`` misbehave; see :data:`FAILURE_MODES`."""
        if mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; choose from {FAILURE_MODES}")
        self._failure = (mode, delay)

    def recover(self) -> None:
        """Serve ``keys.json`` normally again."""
        self._failure = None

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    @property
    def jwks_requests(self) -> int:
        """How many times ``keys.json`` was requested."""
        return self._counts["jwks"]

    @property
    def discovery_requests(self) -> int:
        return self._counts["discovery"]

    @property
    def not_modified_answers(self) -> int:
        """How many ``keys.json`` requests were answered 304 Not Modified."""
        return self._counts["not_modified"]

    # -- tokens -----------------------------------------------------------------

    def claims(
        self,
        *,
        repository_uuid: str | None = None,
        environment_uuid: str | None = None,
        step_uuid: str | None = None,
        pipeline_uuid: str | None = None,
        branch: str | None = "main",
        audience: str | Sequence[str] | None = None,
        lifetime: float = 3600.0,
        issued_at: float | None = None,
        extra: Mapping[str, Any] | None = None,
        drop: Iterable[str] = (),
    ) -> dict[str, Any]:
        """A Bitbucket-shaped payload; ``extra`` overrides or adds claims."""
        iat = int(time.time() if issued_at is None else issued_at)
        repo = repository_uuid or self.repository_uuid
        step = step_uuid or _braced()
        payload: dict[str, Any] = {
            "sub": f"{repo}:{environment_uuid}:{step}" if environment_uuid else f"{repo}:{step}",
            "aud": self.audience
            if audience is None
            else (audience if isinstance(audience, str) else list(audience)),
            "stepUuid": step,
            "iss": self.issuer,
            "repositoryUuid": repo,
            "branchName": branch,
            "exp": int(iat + lifetime),
            "iat": iat,
            "pipelineUuid": pipeline_uuid or _braced(),
            "workspaceUuid": self.workspace_uuid,
        }
        if environment_uuid:
            payload["deploymentEnvironmentUuid"] = environment_uuid
        if branch is None:
            del payload["branchName"]
        payload.update(extra or {})
        for name in drop:
            payload.pop(name, None)
        return payload

    def mint(
        self,
        *,
        header: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
        **claim_options: Any,
    ) -> str:
        """A signed token; ``claim_options`` go to :meth:`claims`, ``header`` overrides."""
        return self.sign(self.claims(**claim_options), header=header, key=key)

    def mint_kind(self, kind: str) -> str:
        """A ready-made token of one of :data:`TOKEN_KINDS` (``ValueError`` for another name)."""
        if kind == "valid":
            return self.mint()
        if kind == "deployment":
            return self.mint(environment_uuid=self.environment_uuid)
        if kind == "expired":
            return self.mint(issued_at=time.time() - 7200, lifetime=3600)
        if kind == "wrong-audience":
            return self.mint(audience="ari:cloud:bitbucket::workspace/" + str(uuid.uuid4()))
        if kind == "other-repository":
            return self.mint(repository_uuid=_braced())
        raise ValueError(f"unknown token kind {kind!r}; choose from {TOKEN_KINDS}")

    def curl_lines(
        self,
        base_url: str,
        *,
        path: str = "/whoami",
        deploy_path: str | None = None,
        deploy_refusal: str = "403 environment_required",
    ) -> list[str]:
        """``curl`` command lines to try an app protected against this issuer by hand.

        First the accepted ones (a build-step token on ``path``; a deployment
        token, POSTed to ``deploy_path`` when given), then refusals, each
        ending with the status and code it should get (``# 401 expired``;
        ``deploy_refusal`` for a build-step token POSTed to ``deploy_path``).
        Used by the examples' ``--fake`` mode.
        """

        def bearer(token: str) -> str:
            return f'-H "Authorization: Bearer {token}" '

        build = self.mint_kind("valid")
        lines = [f"curl {bearer(build)}{base_url}{path}"]
        if deploy_path is not None:
            lines.append(f"curl -X POST {bearer(self.mint_kind('deployment'))}{base_url}{deploy_path}")
        lines += [
            f"curl -i {base_url}{path}   # 401 missing_token",
            f"curl -i {bearer(self.mint_kind('expired'))}{base_url}{path}   # 401 expired",
            f"curl -i {bearer(self.mint_kind('wrong-audience'))}{base_url}{path}   # 401 audience_mismatch",
            f"curl -i {bearer(build[:-8] + 'AAAAAAAA')}{base_url}{path}   # 401 bad_signature",
        ]
        if deploy_path is not None:
            refused = f"curl -i -X POST {bearer(build)}{base_url}{deploy_path}"
            lines.append(f"{refused}   # {deploy_refusal}")
        return lines

    def sign(
        self,
        payload: Mapping[str, Any] | bytes,
        *,
        header: Mapping[str, Any] | bytes | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """Sign any payload (a mapping, or raw bytes used as they are) with RS256."""
        key = key or self.signing_key
        if isinstance(header, bytes):
            header_bytes = header
        else:
            h: dict[str, Any] = {"kid": key.kid, "typ": "JWT", "alg": "RS256"}
            h.update(header or {})
            header_bytes = json.dumps({k: v for k, v in h.items() if v is not None}).encode()
        payload_bytes = payload if isinstance(payload, bytes) else json.dumps(dict(payload)).encode()
        signing_input = f"{b64url(header_bytes)}.{b64url(payload_bytes)}".encode()
        return signing_input.decode() + "." + b64url(sign_rs256(key.private_key, signing_input))
