"""The examples of docs/workspaces.md, docs/troubleshooting.md, docs/configuration.md and the
README's workspace and IAM/Vault sections run as they stand, and say what they claim."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbverify import PipelineClaims, PolicyDenied, RequestContext
from bbverify.config import policies_from_mapping, verifier_from_env, verifier_from_mapping
from bbverify.ipranges import SAMPLE_FEED
from bbverify.testing import FakeIssuer

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


def readme_section(start: str, end: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index(start) : text.index(end)]


WORKSPACES_MD = (ROOT / "docs" / "workspaces.md").read_text()
OWN_PYTHON = blocks(WORKSPACES_MD, "python") + blocks(
    readme_section("## Several workspaces, named policies", "## Error codes"), "python"
)


@pytest.mark.parametrize("source", OWN_PYTHON, ids=[f"python{i}" for i in range(len(OWN_PYTHON))])
def test_python_examples_run(source: str) -> None:
    exec(compile(source, "<docs example>", "exec"), {"__name__": "docs_example"})


DOCS = (
    "README.md",
    "docs/configuration.md",
    "docs/policies.md",
    "docs/workspaces.md",
    "docs/troubleshooting.md",
)


def offline(text: str) -> str:
    # The real feed is swapped for the packaged sample, so that loading it at start-up stays offline.
    return text.replace("https://ip-ranges.atlassian.com/", SAMPLE_FEED.as_posix())


def toml_examples() -> list[str]:
    """Every complete example (one with a ``[bbverify]`` table) of the docs."""
    found: list[str] = []
    for path in DOCS:
        found += [
            b for b in blocks((ROOT / path).read_text(), "toml") if re.search(r"^\[bbverify\]$", b, re.M)
        ]
    return found


@pytest.mark.parametrize("source", toml_examples())
def test_toml_examples_build_a_verifier(source: str) -> None:
    verifier = verifier_from_mapping(tomllib.loads(offline(source))["bbverify"])  # keys load lazily
    assert verifier.workspaces


def test_environment_examples_build_a_verifier() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    built = 0
    for body in blocks(text, "sh"):
        env = dict(line.split("=", 1) for line in shlex.split(offline(body), comments=True))
        assert verifier_from_env(env).workspaces
        built += 1
    assert built >= 3


# -- the README's IAM / Vault / bbverify comparison ---------------------------------------------------

NOW = float(int(time.time()))
REPO = "{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}"
ENV = "{bd715740-4d0a-4d35-8c4e-1f0a2b3c4d5e}"
RELEASE_REPO = "{5c0e3f4a-1b2c-4d5e-8f90-a1b2c3d4e5f6}"
OTHER_ENV = "{2f3e4d5c-6b7a-4c8d-9e0f-1a2b3c4d5e6f}"


@pytest.fixture(scope="module")
def acme() -> Iterator[FakeIssuer]:
    with FakeIssuer("acme", workspace_uuid="{0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00}") as issuer:
        yield issuer


def comparison() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    section = readme_section("### The same intent in AWS IAM", "## Configuration")
    aws, vault = (json.loads(b) for b in blocks(section, "json"))
    (toml,) = blocks(section, "toml")
    return aws, vault, tomllib.loads(toml)["bbverify"]


def aws_admits(policy: dict[str, Any], payload: dict[str, Any]) -> bool:
    condition = policy["Statement"][0]["Condition"]
    ((aud_key, aud),) = condition["StringEquals"].items()
    ((sub_key, patterns),) = condition["StringLike"].items()
    assert aud_key.endswith(":aud") and sub_key.endswith(":sub")
    return payload["aud"] == aud and any(fnmatch.fnmatchcase(payload["sub"], p) for p in patterns)


def vault_admits(role: dict[str, Any], payload: dict[str, Any]) -> bool:
    return payload["aud"] in role["bound_audiences"] and all(
        payload.get(k) == v for k, v in role["bound_claims"].items()
    )


@pytest.mark.parametrize(
    ("case", "aws", "vault", "bbverify"),
    [
        ({"repository_uuid": REPO, "environment_uuid": ENV}, True, True, True),
        ({"repository_uuid": REPO, "environment_uuid": OTHER_ENV}, False, False, False),
        ({"repository_uuid": REPO}, False, False, False),  # a build step, no environment
        ({"repository_uuid": RELEASE_REPO, "branch": "release/2.1"}, True, False, True),  # Vault: 2nd role
        ({"repository_uuid": RELEASE_REPO, "branch": "main"}, True, False, False),  # IAM cannot see branches
        ({"repository_uuid": REPO, "environment_uuid": ENV, "lifetime": 3 * 3600}, True, True, False),
    ],
)
def test_readme_comparison_says_what_each_admits(
    acme: FakeIssuer, case: dict[str, Any], aws: bool, vault: bool, bbverify: bool
) -> None:
    aws_policy, vault_role, table = comparison()
    payload = acme.claims(issued_at=NOW, lifetime=case.pop("lifetime", 1500), **case)
    assert aws_admits(aws_policy, payload) is aws
    assert vault_admits(vault_role, payload) is vault
    deploy = policies_from_mapping(table["policies"])["deploy"]
    claims = PipelineClaims.from_payload(payload)
    try:
        deploy(claims, RequestContext("203.0.113.7", NOW + 60))
        admitted = True
    except PolicyDenied:
        admitted = False
    assert admitted is bbverify
