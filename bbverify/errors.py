"""Errors raised by bbverify.

Every failure that leaves :meth:`bbverify.Verifier.verify` is a
:class:`VerificationError`. Each carries:

* ``code``: a stable, machine-readable string (safe to switch on, log, and
  put in metrics); the table in the README lists them all,
* ``message``: a sentence for humans, never containing the token,
* ``status_code``: the HTTP status an adapter answers with.

Configuration mistakes are different: they are found when a ``Verifier`` or a
rule is built, and raise :class:`ConfigurationError` at start-up, never at the
first request.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "InvalidToken",
    "KeysUnavailable",
    "PolicyDenied",
    "RouteDenied",
    "VerificationError",
]


class VerificationError(Exception):
    """Base class of every error ``verify()`` can raise."""

    #: Default machine code for this class; instances may carry a finer one.
    default_code: str = "invalid_token"
    #: HTTP status an adapter maps this error to.
    status_code: int = 401

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidToken(VerificationError):
    """The token is not a genuine, current token for this service (HTTP 401).

    Codes: ``malformed``, ``token_too_large``, ``unsupported_algorithm``,
    ``unsupported_header``, ``bad_signature``, ``unknown_key``, ``expired``,
    ``not_yet_valid``, ``issuer_mismatch``, ``audience_mismatch``,
    ``missing_claim``, ``invalid_claim``, ``subject_mismatch``,
    ``workspace_mismatch``.
    """

    default_code = "malformed"
    status_code = 401


class PolicyDenied(VerificationError):
    """The token is genuine but a rule refuses this request (HTTP 403).

    ``rule`` names the rule that denied (for operators and audit logs).
    Codes: ``policy_denied``, ``policy_error``, each rule's own (see the
    README), and ``insufficient_scope`` (an adapter's scope check, such as
    ``bbverify.starlette.requires("deployment")``, with ``rule``
    ``scope:<name>``).
    """

    default_code = "policy_denied"
    status_code = 403

    def __init__(self, message: str, *, code: str | None = None, rule: str | None = None) -> None:
        super().__init__(message, code=code)
        self.rule = rule or "policy"

    def __repr__(self) -> str:
        return f"PolicyDenied(code={self.code!r}, rule={self.rule!r}, message={self.message!r})"


class RouteDenied(VerificationError):
    """The gateway (``bbverify serve``) found no usable route for the original request (HTTP 403).

    Raised by :mod:`bbverify.routes`, never by :meth:`bbverify.Verifier.verify`.
    Codes: ``unmatched_route`` (no route matches and the configuration does
    not open unmatched requests), ``ambiguous_route`` (equally specific routes
    disagree), ``unnormalizable_request`` (the original method, host or path
    cannot be normalised without guessing: ``%2F``, ``..`` above the root,
    bad escapes), ``missing_original_request`` (the proxy did not send the
    headers naming the original request).
    """

    default_code = "unmatched_route"
    status_code = 403


class KeysUnavailable(VerificationError):
    """No usable signing keys could be had from the issuer (HTTP 503).

    ``retry_after`` is a hint in whole seconds for the ``Retry-After`` header.
    """

    default_code = "keys_unavailable"
    status_code = 503

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class ConfigurationError(ValueError):
    """A Verifier, rule or adapter was configured wrongly.

    ``key`` names the offending setting (for example ``BBVERIFY_AUDIENCE`` or
    ``policies[2].cidrs``) so that a start-up failure points at the fix.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)
