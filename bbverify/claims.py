"""The verified claims of a step token as :class:`PipelineClaims`, UUIDs spelled one way.

Bitbucket writes UUID claims with braces (``{1de489be-...}``); people paste
them with or without braces, in any case. :func:`normalize_uuid` turns any of
those spellings into the one form Bitbucket uses, so a configured UUID and a
token claim compare equal exactly when they name the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .errors import ConfigurationError, ErrorCode, InvalidToken

__all__ = ["PipelineClaims", "normalize_uuid", "try_normalize_uuid"]

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
