"""Every error class bbverify raises, and the typed set of their codes (:class:`ErrorCode`).

Every failure that leaves :meth:`bbverify.Verifier.verify` is a
:class:`VerificationError`. Each carries:

* ``code``: a stable, machine-readable string (safe to switch on, log, and
  put in metrics); every code bbverify raises is a member of :class:`ErrorCode`
  (a ``StrEnum``, so a member equals its string) and the table in the README
  lists them all,
* ``message``: a sentence for humans, never containing the token,
* ``status_code``: the HTTP status an adapter answers with.

Configuration mistakes are different: they are found when a ``Verifier`` or a
rule is built, and raise :class:`ConfigurationError` at start-up, never at the
first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = [
    "ConfigurationError",
    "ErrorCode",
    "FeedError",
    "FetchError",
    "InvalidRequest",
    "InvalidToken",
    "KeysUnavailable",
    "LookupFailed",
    "MissingToken",
    "PolicyDenied",
    "RouteDenied",
    "StoreUnavailable",
    "UnusableKey",
    "VerificationError",
]


class ErrorCode(StrEnum):
    """The stable codes of :class:`VerificationError` and its subclasses.

    A ``StrEnum`` (Python 3.11): each member equals, hashes and formats as its
    string value, so ``exc.code == ErrorCode.EXPIRED`` and ``exc.code ==
    "expired"`` agree, and JSON bodies, logs and metric labels carry the plain
    string. A custom rule may still deny with a code of its own (any ``str``).
    The README's error-code table lists exactly these members.
    """

    # VerificationError's default; also the RFC 6750 section 3.1 error name.
    INVALID_TOKEN = "invalid_token"  # noqa: S105 (a code's name, not a secret)
    # InvalidToken (401): the token itself.
    MALFORMED = "malformed"
    TOKEN_TOO_LARGE = "token_too_large"  # noqa: S105 (a code's name, not a secret)
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    UNSUPPORTED_HEADER = "unsupported_header"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ISSUER_MISMATCH = "issuer_mismatch"
    AUDIENCE_MISMATCH = "audience_mismatch"
    MISSING_CLAIM = "missing_claim"
    INVALID_CLAIM = "invalid_claim"
    SUBJECT_MISMATCH = "subject_mismatch"
    WORKSPACE_MISMATCH = "workspace_mismatch"
    VERIFICATION_FAILED = "verification_failed"
    # PolicyDenied (403): a rule or a scope check refused.
    POLICY_DENIED = "policy_denied"
    POLICY_ERROR = "policy_error"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    WORKSPACE_NOT_ALLOWED = "workspace_not_allowed"
    REPOSITORY_NOT_ALLOWED = "repository_not_allowed"
    ENVIRONMENT_REQUIRED = "environment_required"
    ENVIRONMENT_NOT_ALLOWED = "environment_not_allowed"
    BRANCH_REQUIRED = "branch_required"
    BRANCH_NOT_ALLOWED = "branch_not_allowed"
    IP_NOT_ALLOWED = "ip_not_allowed"
    CLIENT_IP_UNKNOWN = "client_ip_unknown"
    CLIENT_IP_INVALID = "client_ip_invalid"
    IP_RANGES_UNAVAILABLE = "ip_ranges_unavailable"
    STEP_TOO_LONG = "step_too_long"
    TOKEN_LIFETIME_TOO_LONG = "token_lifetime_too_long"  # noqa: S105 (a code's name, not a secret)
    CLAIM_REQUIRED = "claim_required"
    CLAIM_NOT_ALLOWED = "claim_not_allowed"
    # KeysUnavailable (503).
    KEYS_UNAVAILABLE = "keys_unavailable"
    # RouteDenied (403, the gateway only).
    UNMATCHED_ROUTE = "unmatched_route"
    AMBIGUOUS_ROUTE = "ambiguous_route"
    UNNORMALIZABLE_REQUEST = "unnormalizable_request"
    MISSING_ORIGINAL_REQUEST = "missing_original_request"
    # MissingToken (401, adapters only).
    MISSING_TOKEN = "missing_token"  # noqa: S105 (a code's name, not a secret)
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    # InvalidRequest (400, adapters only).
    MULTIPLE_AUTHORIZATION = "multiple_authorization"
    MALFORMED_AUTHORIZATION = "malformed_authorization"
    EMPTY_TOKEN = "empty_token"  # noqa: S105 (a code's name, not a secret)


class VerificationError(Exception):
    """Base class of every error ``verify()`` can raise."""

    #: Default machine code for this class; instances may carry a finer one.
    default_code: str = ErrorCode.INVALID_TOKEN
    #: HTTP status an adapter maps this error to.
    status_code: int = 401

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={str(self.code)!r}, message={self.message!r})"


class InvalidToken(VerificationError):
    """The token is not a genuine, current token for this service (HTTP 401).

    Codes: ``malformed``, ``token_too_large``, ``unsupported_algorithm``,
    ``unsupported_header``, ``bad_signature``, ``unknown_key``, ``expired``,
    ``not_yet_valid``, ``issuer_mismatch``, ``audience_mismatch``,
    ``missing_claim``, ``invalid_claim``, ``subject_mismatch``,
    ``workspace_mismatch``.
    """

    default_code = ErrorCode.MALFORMED
    status_code = 401


class PolicyDenied(VerificationError):
    """The token is genuine but a rule refuses this request (HTTP 403).

    ``rule`` names the rule that denied (for operators and audit logs).
    Codes: ``policy_denied``, ``policy_error``, each rule's own (see the
    README), and ``insufficient_scope`` (an adapter's scope check, such as
    ``bbverify.starlette.requires("deployment")``, with ``rule``
    ``scope:<name>``).
    """

    default_code = ErrorCode.POLICY_DENIED
    status_code = 403

    def __init__(self, message: str, *, code: str | None = None, rule: str | None = None) -> None:
        super().__init__(message, code=code)
        self.rule = rule or "policy"

    def __repr__(self) -> str:
        return f"PolicyDenied(code={str(self.code)!r}, rule={self.rule!r}, message={self.message!r})"


class RouteDenied(VerificationError):
    """The gateway (``bbverify serve``) found no usable route for the original request (HTTP 403).

    Raised by :mod:`bbverify.routes`, never by :meth:`bbverify.Verifier.verify`.
    Codes: ``unmatched_route`` (no route matches and the configuration does
    not open unmatched requests), ``ambiguous_route`` (equally specific routes
    disagree), ``unnormalizable_request`` (the original method, host or path
    may mean something else to the upstream: dot segments, ``;`` parameters,
    ``//``, ``%2F``, bad escapes, a missing host while routes name hosts, a
    method or URL override header; see docs/gateway.md "Which route"),
    ``missing_original_request`` (the proxy did not send the headers naming
    the original request).
    """

    default_code = ErrorCode.UNMATCHED_ROUTE
    status_code = 403


class MissingToken(VerificationError):
    """The request carries no bearer token (HTTP 401, no ``error`` attribute).

    Raised by adapters (through :mod:`bbverify.http`), never by
    :meth:`bbverify.Verifier.verify`. Codes: ``missing_token``,
    ``unsupported_scheme``. Also importable as ``bbverify.http.MissingToken``.
    """

    default_code = ErrorCode.MISSING_TOKEN
    status_code = 401


class InvalidRequest(VerificationError):
    """The ``Authorization`` header is malformed (HTTP 400, ``invalid_request``).

    Raised by adapters (through :mod:`bbverify.http`), never by
    :meth:`bbverify.Verifier.verify`. Codes: ``multiple_authorization``,
    ``malformed_authorization``, ``empty_token``. Also importable as
    ``bbverify.http.InvalidRequest``.
    """

    default_code = ErrorCode.MALFORMED_AUTHORIZATION
    status_code = 400


class KeysUnavailable(VerificationError):
    """No usable signing keys could be had from the issuer (HTTP 503).

    ``retry_after`` is a hint in whole seconds for the ``Retry-After`` header.
    """

    default_code = ErrorCode.KEYS_UNAVAILABLE
    status_code = 503

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class ConfigurationError(ValueError):
    """A Verifier, rule or adapter was configured wrongly.

    ``key`` names the offending setting (for example ``BBVERIFY_AUDIENCE`` or
    ``policies[2].cidrs``) so that a start-up failure points at the fix.
    ``detail`` is the message without the key (``str(exc)`` is
    ``"{key}: {detail}"``), so that code naming the setting as the user spelled
    it re-raises ``ConfigurationError(exc.detail, key=...)`` and never takes
    the text apart.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}" if key else message)


# -- internal failures -------------------------------------------------------------
# These never leave verify() as such: the key store turns FetchError and
# UnusableKey into KeysUnavailable/InvalidToken or a log line, the IP-range
# rule turns FeedError into a denial, and the CLI reports LookupFailed.


class FetchError(Exception):
    """A fetch failed; the message says why (for logs and 503 descriptions).

    ``status`` is the HTTP status when the server answered (else ``None``) and
    ``headers`` its response headers, so callers can honour ``Retry-After``.
    Raised by :mod:`bbverify.fetch` (also importable as
    ``bbverify.fetch.FetchError``).
    """

    def __init__(
        self, message: str, *, status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers: Mapping[str, str] = headers if headers is not None else {}


class FeedError(ValueError):
    """The IP-range feed could not be used (unreadable, wrong shape, nothing matching).

    Raised by :mod:`bbverify.ipranges` (also importable as
    ``bbverify.ipranges.FeedError``).
    """


class UnusableKey(Exception):
    """A JWK that bbverify will not use; the message says why (for logs).

    Raised by :func:`bbverify.jwk.parse_jwk` (also importable as
    ``bbverify.jwk.UnusableKey``).
    """


class LookupFailed(Exception):
    """Bitbucket refused or failed a lookup; ``status`` is the HTTP status (0: no answer).

    ``retry_after`` is the server's ``Retry-After`` in seconds, if it sent one.
    Raised by :mod:`bbverify.lookup` (also importable as
    ``bbverify.lookup.LookupFailed``).
    """

    def __init__(self, message: str, *, status: int = 0, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class StoreUnavailable(Exception):
    """A shared key store could not answer (I/O error, Redis down or slow).

    Raised by the stores of :mod:`bbverify.stores` (also importable as
    ``bbverify.stores.StoreUnavailable``); the key set falls back to fetching.
    ``permanent`` (bool) is True when retrying cannot help until the
    configuration changes: Redis refused the credentials or the ACL user's
    permissions, or the file store's directory is not this user's to use.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
