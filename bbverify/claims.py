"""The claims layer: one check per claim of a step token, and the verified claims as :class:`PipelineClaims`.

:func:`check_claims` holds a payload to what a genuine Bitbucket Pipelines
token for a workspace carries (``aud``, ``exp``, ``iat``, ``nbf``, the
Bitbucket claims, ``sub``, the workspace pin), one ``_validate_<claim>``
function per claim; :meth:`PipelineClaims.from_payload` then turns the
checked payload into claims, by keyword.

Bitbucket writes UUID claims with braces (``{1de489be-...}``); people paste
them with or without braces, in any case. :func:`normalize_uuid` turns any of
those spellings into the one form Bitbucket uses, so a configured UUID and a
token claim compare equal exactly when they name the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .errors import ConfigurationError, ErrorCode, InvalidToken

__all__ = ["PipelineClaims", "check_claims", "normalize_uuid", "recheck_times", "try_normalize_uuid"]

_UUID_RE = re.compile(r"\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?")


def try_normalize_uuid(value: object) -> str | None:
    """Return ``{lowercase-uuid}`` for a UUID spelled any common way, else ``None``.

    Braces must be balanced: ``{abc...}`` and ``abc...`` are accepted,
    ``{abc...`` is not.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    m = _UUID_RE.fullmatch(text)
    if m is None or (text.startswith("{") != text.endswith("}")):
        return None
    return "{" + m.group(1).lower() + "}"


def normalize_uuid(value: object, *, key: str | None = None) -> str:
    """Return ``{lowercase-uuid}``; raise :class:`ConfigurationError` if not a UUID.

    Meant for configuration: a typo fails at start-up with the setting named.
    """
    norm = try_normalize_uuid(value)
    if norm is None:
        raise ConfigurationError(
            f"{value!r} is not a UUID (expected 8-4-4-4-12 hex digits, braces optional)",
            key=key,
        )
    return norm


MAX_CLAIM_DEPTH = 32


_CONTAINERS = (dict, list)
# Immutable JSON values, by exact type (a subclass could be anything).
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _freeze(value: Any, depth: int = 0) -> Any:
    # Nested JSON is frozen too, so that ``raw`` is read-only all the way down.
    if depth > MAX_CLAIM_DEPTH:
        raise InvalidToken("payload is nested too deeply", code=ErrorCode.MALFORMED)
    if isinstance(value, dict):
        # Copy in C, then replace only the (rare) containers: Bitbucket claims
        # are nearly all strings and numbers, and this runs for every new token.
        frozen = dict(value)
        if _SCALARS.issuperset(map(type, frozen.values())):
            # Checked in C: exact scalar types only, so nothing is left to freeze.
            return MappingProxyType(frozen)
        for k, v in value.items():
            if isinstance(v, _CONTAINERS):
                frozen[k] = _freeze(v, depth + 1)
        return MappingProxyType(frozen)
    if isinstance(value, list):
        return tuple(_freeze(v, depth + 1) if isinstance(v, _CONTAINERS) else v for v in value)
    return value


@dataclass(frozen=True, slots=True)
class PipelineClaims:
    """The verified claims of a Bitbucket Pipelines step token.

    UUID fields keep Bitbucket's spelling (braces included). ``raw`` holds the
    whole payload, read-only, including claims bbverify does not know yet
    (for example ``pipelineRunUuid``).
    """

    workspace_uuid: str
    repository_uuid: str
    pipeline_uuid: str
    step_uuid: str
    deployment_environment_uuid: str | None
    branch_name: str | None
    subject: str
    issuer: str
    audience: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    # Left out of the hash (a mapping is unhashable) so that claims can be set
    # members and cache keys; equality still compares it.
    raw: Mapping[str, Any] = field(hash=False)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> PipelineClaims:
        """Build claims from a payload that the verifier has already checked."""
        aud = payload["aud"]
        # By keyword, so that reordering the fields cannot swap two claims of
        # the same type; it costs about 0.5 us more than positional arguments
        # (benchmarks/README.md, "Measured and not kept").
        return cls(
            workspace_uuid=payload["workspaceUuid"],
            repository_uuid=payload["repositoryUuid"],
            pipeline_uuid=payload["pipelineUuid"],
            step_uuid=payload["stepUuid"],
            deployment_environment_uuid=payload.get("deploymentEnvironmentUuid"),
            branch_name=payload.get("branchName"),
            subject=payload["sub"],
            issuer=payload["iss"],
            audience=(aud,) if isinstance(aud, str) else tuple(aud),
            issued_at=datetime.fromtimestamp(payload["iat"], UTC),
            expires_at=datetime.fromtimestamp(payload["exp"], UTC),
            raw=_freeze(payload),
        )

    @property
    def is_deployment(self) -> bool:
        """True when the token comes from a deployment step."""
        return self.deployment_environment_uuid is not None

    @property
    def pipeline_run_uuid(self) -> str | None:
        """``pipelineRunUuid`` when the token carries it (newer tokens do)."""
        value = self.raw.get("pipelineRunUuid")
        return value if isinstance(value, str) else None

    def summary(self) -> dict[str, str | None]:
        """The identifying fields, for logs and audit records (no secrets)."""
        return {
            "workspace": self.workspace_uuid,
            "repository": self.repository_uuid,
            "environment": self.deployment_environment_uuid,
            "pipeline": self.pipeline_uuid,
            "step": self.step_uuid,
            "branch": self.branch_name,
        }


# -- one check per claim ------------------------------------------------------------

# JSON numbers beyond this are not dates (datetime stops at year 9999).
_MAX_TIMESTAMP = 253402300799
_BITBUCKET_REQUIRED = ("workspaceUuid", "repositoryUuid", "pipelineUuid", "stepUuid")
_REQUIRED_STRINGS = (*_BITBUCKET_REQUIRED, "sub")


def check_claims(
    payload: Mapping[str, Any],
    *,
    audiences: Set[str],
    workspace_uuid: str | None,
    now: float,
    leeway: float,
) -> None:
    """Hold ``payload`` to what a genuine step token for one workspace carries.

    ``audiences`` are the accepted ``aud`` values (one must match, RFC 7519
    section 4.1.3); ``workspace_uuid`` the pinned ``{lowercase-uuid}`` or
    ``None``; ``now`` and ``leeway`` are seconds (since the epoch, and of
    clock skew allowed for ``exp``/``iat``/``nbf``, RFC 7519 sections
    4.1.4-4.1.6). The Bitbucket claims (``workspaceUuid``, ``repositoryUuid``,
    ``pipelineUuid``, ``stepUuid``, ``sub``; Bitbucket's OIDC docs) must be
    non-empty strings and ``sub`` must agree with them. The issuer is not
    checked here: the verifier picks the workspace by exact ``iss`` first.

    Reads the payload in place (no copy). Raises
    :class:`~bbverify.errors.InvalidToken` with the code of the first claim
    that fails, in the order above.
    """
    _validate_aud(payload, audiences)
    _validate_times(payload, now, leeway)
    _validate_bitbucket_claims(payload)
    _validate_sub(payload)
    _validate_workspace(payload, workspace_uuid)


def recheck_times(payload: Mapping[str, Any], *, now: float, leeway: float) -> None:
    """The time checks of :func:`check_claims` alone, again at ``now`` (seconds since the epoch).

    For a payload that passed :func:`check_claims` earlier (before a key
    fetch, say): its other checks depend only on the payload, so only the
    time checks can change their answer. Raises ``InvalidToken``.
    """
    _validate_times(payload, now, leeway)


def _validate_aud(payload: Mapping[str, Any], audiences: Set[str]) -> None:
    aud = payload.get("aud")
    if aud is None:
        raise InvalidToken("claim 'aud' is required", code=ErrorCode.MISSING_CLAIM)
    if type(aud) is str:
        ok = aud in audiences
    elif isinstance(aud, list) and aud and all(type(a) is str for a in aud):
        ok = not audiences.isdisjoint(aud)
    else:
        raise InvalidToken("claim 'aud' must be a string or a list of strings", code=ErrorCode.MALFORMED)
    if not ok:
        expected = " or ".join(repr(a) for a in sorted(audiences))
        raise InvalidToken(
            f"token is not meant for this audience (expected {expected})",
            code=ErrorCode.AUDIENCE_MISMATCH,
        )


def _timestamp(payload: Mapping[str, Any], name: str) -> float:
    if name not in payload:
        raise InvalidToken(f"claim {name!r} is required", code=ErrorCode.MISSING_CLAIM)
    value = payload[name]
    # bool is an int subclass; 'true' is not a time.
    if type(value) not in (int, float) or not (0 <= value <= _MAX_TIMESTAMP):
        raise InvalidToken(f"claim {name!r} must be a NumericDate", code=ErrorCode.MALFORMED)
    return float(value)


def _validate_times(payload: Mapping[str, Any], now: float, leeway: float) -> None:
    # exp and iat are required (Bitbucket always sends both); nbf is checked when present.
    exp = _timestamp(payload, "exp")
    iat = _timestamp(payload, "iat")
    if exp < iat:
        raise InvalidToken("claim 'exp' is before 'iat'", code=ErrorCode.INVALID_CLAIM)
    if now >= exp + leeway:
        raise InvalidToken("token has expired", code=ErrorCode.EXPIRED)
    if iat > now + leeway:
        raise InvalidToken("token was issued in the future", code=ErrorCode.NOT_YET_VALID)
    if "nbf" in payload and _timestamp(payload, "nbf") > now + leeway:
        raise InvalidToken("token is not valid yet (nbf)", code=ErrorCode.NOT_YET_VALID)


def _validate_bitbucket_claims(payload: Mapping[str, Any]) -> None:
    get = payload.get
    for name in _REQUIRED_STRINGS:
        value = get(name)
        # One test for the usual case (the JSON parser makes exact str); the
        # checks below decide, and word the error, for anything else.
        if type(value) is str and value:
            continue
        if value is None:
            raise InvalidToken(f"claim {name!r} is required", code=ErrorCode.MISSING_CLAIM)
        if not isinstance(value, str) or not value:
            raise InvalidToken(f"claim {name!r} must be a non-empty string", code=ErrorCode.MALFORMED)
    for name in ("deploymentEnvironmentUuid", "branchName"):
        if name in payload and not isinstance(payload[name], str):
            raise InvalidToken(f"claim {name!r} must be a string", code=ErrorCode.MALFORMED)


def _validate_sub(payload: Mapping[str, Any]) -> None:
    env = payload.get("deploymentEnvironmentUuid")
    repo, step = payload["repositoryUuid"], payload["stepUuid"]
    expected = f"{repo}:{env}:{step}" if env is not None else f"{repo}:{step}"
    if payload["sub"] != expected:
        # Bitbucket builds sub from these claims; disagreement means the token
        # was not made by Bitbucket the way rules expect.
        raise InvalidToken(
            "claim 'sub' does not agree with repositoryUuid, deploymentEnvironmentUuid and stepUuid",
            code=ErrorCode.SUBJECT_MISMATCH,
        )


def _validate_workspace(payload: Mapping[str, Any], workspace_uuid: str | None) -> None:
    if workspace_uuid is not None and payload["workspaceUuid"].lower() != workspace_uuid:
        raise InvalidToken("token belongs to another workspace", code=ErrorCode.WORKSPACE_MISMATCH)
