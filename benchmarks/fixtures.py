"""Realistic tokens and a realistic rule set for the benchmarks."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bbverify.claims import PipelineClaims
from bbverify.errors import PolicyDenied
from bbverify.policies import RequestContext
from bbverify.testing import FakeIssuer

#: A Bitbucket Pipelines runner address inside one of the allowed ranges below.
CLIENT_IP = "34.199.54.113"
#: A few of the Atlassian egress ranges Bitbucket Pipelines runners use (as an operator would list them).
ALLOWED_CIDRS = (
    "34.199.54.113/32",
    "34.232.25.90/32",
    "35.171.175.212/32",
    "52.202.195.162/32",
    "34.192.0.0/10",
)
MAX_STEP_SECONDS = 7200


def braced() -> str:
    return "{" + str(uuid.uuid4()) + "}"


def mint_tokens(issuer: FakeIssuer, count: int) -> list[str]:
    """Distinct deployment-step tokens shaped like Bitbucket's (about 1.3 kB each)."""
    return [
        issuer.mint(
            environment_uuid=issuer.environment_uuid,
            branch="main",
            extra={"pipelineRunUuid": braced()},
        )
        for _ in range(count)
    ]


def _plain_rules(issuer: FakeIssuer) -> list[Callable[[PipelineClaims, RequestContext], object]]:
    """The same four rules as plain callables (used until bbverify.policies has them)."""
    repos = frozenset({issuer.repository_uuid, braced(), braced()})
    envs = frozenset({issuer.environment_uuid})
    nets = tuple(ipaddress.ip_network(c) for c in ALLOWED_CIDRS)

    def repository_allowed(claims: PipelineClaims, ctx: RequestContext) -> None:
        if claims.repository_uuid.lower() not in repos:
            raise PolicyDenied("repository not allowed", rule="repository")

    def environment_allowed(claims: PipelineClaims, ctx: RequestContext) -> None:
        if claims.deployment_environment_uuid not in envs:
            raise PolicyDenied("environment not allowed", rule="environment")

    def ip_allowed(claims: PipelineClaims, ctx: RequestContext) -> None:
        if ctx.client_ip is None:
            raise PolicyDenied("no client address", rule="ip")
        addr = ipaddress.ip_address(ctx.client_ip)
        if not any(addr in n for n in nets):
            raise PolicyDenied("address not allowed", rule="ip")

    def step_duration(claims: PipelineClaims, ctx: RequestContext) -> None:
        if ctx.now - claims.issued_at.timestamp() > MAX_STEP_SECONDS:
            raise PolicyDenied("step has run too long", rule="duration")

    return [repository_allowed, environment_allowed, ip_allowed, step_duration]


def realistic_rules(issuer: FakeIssuer) -> tuple[Sequence[Any], str]:
    """A repository allow list, an environment rule, an IP range and a step duration.

    Uses bbverify's own rule classes when they exist; returns ``(rules, kind)``.
    """
    try:
        from bbverify.policies import Environments, IPRanges, Repositories, StepDuration  # type: ignore[attr-defined]
    except ImportError:
        return _plain_rules(issuer), "plain callables (bbverify.policies rules missing)"
    rules = [
        Repositories(issuer.repository_uuid, braced(), braced()),
        Environments(issuer.environment_uuid),
        IPRanges(ALLOWED_CIDRS),
        StepDuration(max_minutes=MAX_STEP_SECONDS / 60),
    ]
    return rules, "Repositories, Environments, IPRanges, StepDuration"
