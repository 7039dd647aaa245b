"""Realistic tokens and a realistic rule set for the benchmarks."""

from __future__ import annotations

import uuid

from bbverify.policies import Environments, IPRanges, Repositories, Rule, StepDuration
from bbverify.testing import FakeIssuer

#: A Bitbucket Pipelines runner address inside one of the allowed ranges below.
CLIENT_IP = "34.199.54.113"
#: Egress ranges as an operator would list them (addresses of Bitbucket Pipelines runners).
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


def realistic_rules(issuer: FakeIssuer) -> tuple[list[Rule], str]:
    """A repository allow list, an environment rule, an IP range and a step duration."""
    rules: list[Rule] = [
        Repositories(issuer.repository_uuid, braced(), braced()),
        Environments(issuer.environment_uuid),
        IPRanges(ALLOWED_CIDRS),
        StepDuration(max_minutes=MAX_STEP_SECONDS / 60),
    ]
    return rules, "Repositories, Environments, IPRanges, StepDuration"
