"""Named policies: the Verifier API, the claim rules, and policies declared in configuration."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from clock import FakeClock

from bbverify import ConfigurationError, PipelineClaims, PolicyDenied, RequestContext, Verifier
from bbverify.config import (
    policies_from_mapping,
    verifier_from_env,
    verifier_from_mapping,
    verifier_from_toml,
)
from bbverify.policies import (
    Branches,
    ClaimMatches,
    Environments,
    Issuers,
    Repositories,
    all_of,
    any_of,
    not_,
)
from bbverify.testing import FakeIssuer

NOW = float(int(time.time()))
REPO = "{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}"
OTHER_REPO = "{5c0e3f4a-1b2c-4d5e-8f90-a1b2c3d4e5f6}"
ENV = "{bd715740-4d0a-4d35-8c4e-1f0a2b3c4d5e}"


def claims_of(issuer: FakeIssuer, **options: Any) -> PipelineClaims:
    options.setdefault("issued_at", NOW)
    return PipelineClaims.from_payload(issuer.claims(**options))


def ctx(ip: str | None = "203.0.113.7") -> RequestContext:
    return RequestContext(ip, NOW)


def admits(rule: Any, claims: PipelineClaims, context: RequestContext | None = None) -> bool | str:
    try:
        result = rule(claims, context or ctx())
    except PolicyDenied as exc:
        return exc.code
    assert result is None
    return True


# -- Verifier(named_policies=...) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def named_verifier(issuer: FakeIssuer) -> Verifier:
    return issuer.verifier(
        clock=FakeClock(NOW),
        policies=[not_(Branches("blocked"), message="blocked branch")],
        named_policies={
            "build": Repositories(issuer.repository_uuid),
            "deploy": [Environments(issuer.environment_uuid), Branches("main")],
        },
        default_policy="build",
        cooldown=0.0,
    )


def test_policy_is_picked_per_call(issuer: FakeIssuer, named_verifier: Verifier) -> None:
    build = issuer.mint(issued_at=NOW)
    deploy = issuer.mint(issued_at=NOW, environment_uuid=issuer.environment_uuid)
    assert named_verifier.verify(build)  # default policy "build"
    assert named_verifier.verify(build, policy="build")
    with pytest.raises(PolicyDenied) as exc:
        named_verifier.verify(build, policy="deploy")
    assert exc.value.code == "environment_required"
    assert named_verifier.verify(deploy, policy="deploy")
    other = issuer.mint(issued_at=NOW, repository_uuid=OTHER_REPO, environment_uuid=issuer.environment_uuid)
    assert named_verifier.verify(other, policy="deploy")
    with pytest.raises(PolicyDenied) as exc:
        named_verifier.verify(other)  # the default
    assert exc.value.code == "repository_not_allowed"


def test_base_rules_always_apply(issuer: FakeIssuer, named_verifier: Verifier) -> None:
    token = issuer.mint(issued_at=NOW, branch="blocked", environment_uuid=issuer.environment_uuid)
    for policy in (None, "build", "deploy"):
        with pytest.raises(PolicyDenied, match="blocked branch"):
            named_verifier.verify(token, policy=policy)


def test_named_policy_runs_before_per_call_rules(issuer: FakeIssuer, named_verifier: Verifier) -> None:
    token = issuer.mint(issued_at=NOW, branch="dev")
    with pytest.raises(PolicyDenied) as exc:
        named_verifier.verify(token, policies=[Branches("main")])
    assert exc.value.code == "branch_not_allowed"


def test_async_takes_the_policy_too(issuer: FakeIssuer, named_verifier: Verifier) -> None:
    import asyncio

    token = issuer.mint(issued_at=NOW)
    with pytest.raises(PolicyDenied):
        asyncio.run(named_verifier.averify(token, policy="deploy"))
    assert asyncio.run(named_verifier.averify(token, policy="build"))


def test_unknown_policy_name_is_a_configuration_error(issuer: FakeIssuer, named_verifier: Verifier) -> None:
    with pytest.raises(ConfigurationError) as exc:
        named_verifier.verify(issuer.mint(issued_at=NOW), policy="deplyo")
    assert exc.value.key == "policy" and "'build', 'deploy'" in str(exc.value)
    with pytest.raises(ConfigurationError):
        named_verifier.check_policy("deplyo")
    named_verifier.check_policy("deploy")
    named_verifier.check_policy(None)
    assert named_verifier.policy_names == ("build", "deploy")


def test_without_default_no_named_policy_applies(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(clock=FakeClock(NOW), named_policies={"deploy": Environments(ENV)})
    assert verifier.verify(issuer.mint(issued_at=NOW))
    with pytest.raises(PolicyDenied):
        verifier.verify(issuer.mint(issued_at=NOW), policy="deploy")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"named_policies": {"deploy": []}}, "named_policies.deploy"),
        ({"named_policies": {"deploy": ["nope"]}}, "named_policies.deploy[0]"),
        ({"named_policies": {"": Branches("main")}}, "named_policies"),
        ({"named_policies": {"a b": Branches("main")}}, "named_policies"),
        ({"named_policies": [Branches("main")]}, "named_policies"),
        ({"default_policy": "deploy"}, "default_policy"),
        ({"named_policies": {"build": Branches("main")}, "default_policy": "deploy"}, "default_policy"),
    ],
)
def test_bad_named_policies(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspace="acme", audience="x", **options)
    assert exc.value.key == key


# -- ClaimMatches and Issuers -------------------------------------------------------------------------


def test_claim_matches_exact_glob_and_types(issuer: FakeIssuer) -> None:
    c = claims_of(issuer, extra={"stage": "prod-eu", "attempt": 2, "rerun": False, "tags": ["a", "b"]})
    assert admits(ClaimMatches("stage", "prod-eu"), c) is True
    assert admits(ClaimMatches("stage", ["dev", "prod-*"]), c) is True
    assert admits(ClaimMatches("stage", "prod"), c) == "claim_not_allowed"
    assert admits(ClaimMatches("stage", "PROD-*"), c) == "claim_not_allowed"  # case-sensitive
    assert admits(ClaimMatches("attempt", 2), c) is True
    assert admits(ClaimMatches("attempt", "2"), c) == "claim_not_allowed"  # JSON types differ
    assert admits(ClaimMatches("rerun", False), c) is True
    assert admits(ClaimMatches("rerun", 0), c) == "claim_not_allowed"  # false is not 0
    assert admits(ClaimMatches("tags", "b"), c) is True  # any item of an array
    assert admits(ClaimMatches("pipelineRunUuid", "{*}"), c) == "claim_required"
    assert admits(ClaimMatches("branchName", "ma?n"), c) is True


@pytest.mark.parametrize(
    ("args", "key"),
    [(("",), "claims"), ((" x", "v"), "claims"), (("x",), "x"), (("x", [1.5]), "x[0]"), (("x", ""), "x[0]")],
)
def test_claim_matches_checks_its_configuration(args: tuple[Any, ...], key: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        ClaimMatches(*args)
    assert exc.value.key == key


def test_issuers_rule(issuer: FakeIssuer) -> None:
    c = claims_of(issuer)
    assert admits(Issuers(issuer.issuer), c) is True
    assert admits(Issuers("https://other.example/oidc"), c) == "workspace_not_allowed"
    with pytest.raises(ConfigurationError):
        Issuers()


# -- policies in configuration ------------------------------------------------------------------------


def base(issuer: FakeIssuer) -> dict[str, Any]:
    return {"issuer": issuer.issuer, "audience": issuer.audience}


def test_configured_policy_equals_the_python_rules(issuer: FakeIssuer) -> None:
    table = {
        "deploy": {
            "allow": [
                {"environments": [issuer.environment_uuid], "branches": ["main"]},
                {"repositories": [OTHER_REPO], "branches": ["release/*"]},
                {"claims": {"stage": ["canary-*"]}},
            ]
        }
    }
    configured = policies_from_mapping(table)["deploy"]
    python = any_of(
        all_of(Environments(issuer.environment_uuid), Branches("main")),
        all_of(Repositories(OTHER_REPO), Branches("release/*")),
        ClaimMatches("stage", "canary-*"),
    )
    cases = [
        claims_of(issuer, environment_uuid=issuer.environment_uuid),
        claims_of(issuer, environment_uuid=issuer.environment_uuid, branch="dev"),
        claims_of(issuer, repository_uuid=OTHER_REPO, branch="release/1.2"),
        claims_of(issuer, repository_uuid=OTHER_REPO, branch="main"),
        claims_of(issuer, extra={"stage": "canary-3"}),
        claims_of(issuer),
    ]
    got = [admits(configured, c) for c in cases]
    assert got == [True, "policy_denied", True, "policy_denied", True, "policy_denied"]
    assert [admits(python, c) for c in cases] == got  # the same engine underneath
    assert (
        configured.name  # type: ignore[attr-defined]
    ) == "any_of(all_of(environments, branches), all_of(repositories, branches), claim:stage)"


def test_single_entry_policy_denies_with_the_rule_code(issuer: FakeIssuer) -> None:
    rule = policies_from_mapping({"p": {"allow": [{"branches": ["main"]}]}})["p"]
    assert admits(rule, claims_of(issuer, branch="dev")) == "branch_not_allowed"
    assert admits(rule, claims_of(issuer, branch=None)) == "branch_required"


def test_undecided_conditions_stay_undecided(issuer: FakeIssuer) -> None:
    rule = policies_from_mapping(
        {"p": {"allow": [{"ip_ranges": ["198.51.100.0/24"]}, {"branches": ["release/*"]}]}}
    )["p"]
    # No client IP: the IP entry cannot decide, so the policy does not claim "no" for sure.
    assert admits(rule, claims_of(issuer), ctx(None)) == "client_ip_unknown"
    assert admits(rule, claims_of(issuer), ctx("198.51.100.9")) is True


def test_policies_from_toml_route_by_name(tmp_path: Path, issuer: FakeIssuer) -> None:
    path = tmp_path / "bbverify.toml"
    path.write_text(
        f"""
[bbverify]
issuer = "{issuer.issuer}"
audience = "{issuer.audience}"
default_policy = "build"

[bbverify.rules]
branches = ["main", "release/*"]

[bbverify.policies.build]
allow = [ {{ repositories = ["{issuer.repository_uuid}"] }} ]

[bbverify.policies.deploy]
allow = [
  {{ environments = ["{issuer.environment_uuid}"], max_step_minutes = 120 }},
  {{ workspace = ["{issuer.issuer}"], claims = {{ stage = "prod" }} }},
]
"""
    )
    v = verifier_from_toml(path, clock=FakeClock(NOW))
    assert v.policy_names == ("build", "deploy") and v.default_policy == "build"
    build = issuer.mint(issued_at=NOW)
    assert v.verify(build)
    with pytest.raises(PolicyDenied):
        v.verify(build, policy="deploy")
    assert v.verify(issuer.mint(issued_at=NOW, extra={"stage": "prod"}), policy="deploy")
    assert v.verify(issuer.mint(issued_at=NOW, environment_uuid=issuer.environment_uuid), policy="deploy")
    with pytest.raises(PolicyDenied) as exc:  # the base rules apply too
        v.verify(issuer.mint(issued_at=NOW, branch="dev", extra={"stage": "prod"}), policy="deploy")
    assert exc.value.code == "branch_not_allowed"


def test_policies_from_env_json(issuer: FakeIssuer) -> None:
    env = {
        "BBVERIFY_ISSUER": issuer.issuer,
        "BBVERIFY_AUDIENCE": issuer.audience,
        "BBVERIFY_DEFAULT_POLICY": "deploy",
        "BBVERIFY_POLICIES": json.dumps({"deploy": {"allow": [{"branches": ["main"]}]}}),
    }
    v = verifier_from_env(env, clock=FakeClock(NOW))
    assert v.verify(issuer.mint(issued_at=NOW))
    with pytest.raises(PolicyDenied):
        v.verify(issuer.mint(issued_at=NOW, branch="dev"))
    # A Flask config may hold the table as Python values.
    flask_like = {**env, "BBVERIFY_POLICIES": {"deploy": {"allow": [{"branches": ["dev"]}]}}}
    flask_verifier = verifier_from_env(flask_like, clock=FakeClock(NOW))
    assert flask_verifier.verify(issuer.mint(issued_at=NOW, branch="dev"))


@pytest.mark.parametrize(
    ("policies", "key"),
    [
        ({}, "policies"),
        ([], "policies"),
        ({"deploy": []}, "policies.deploy"),
        ({"a b": {"allow": [{"branches": ["x"]}]}}, "policies.a b"),
        ({"deploy": {}}, "policies.deploy.allow"),
        ({"deploy": {"allow": []}}, "policies.deploy.allow"),
        ({"deploy": {"allow": {"branches": ["x"]}}}, "policies.deploy.allow"),
        ({"deploy": {"alow": [{"branches": ["x"]}]}}, "policies.deploy.alow"),
        ({"deploy": {"allow": [{}]}}, "policies.deploy.allow[0]"),
        ({"deploy": {"allow": ["main"]}}, "policies.deploy.allow[0]"),
        (
            {"deploy": {"allow": [{"branches": ["x"]}, {"branches": "  "}]}},
            "policies.deploy.allow[1].branches[0]",
        ),
        (
            {"deploy": {"allow": [{"branches": ["x"]}, {"branhces": ["x"]}]}},
            "policies.deploy.allow[1].branhces",
        ),
        (
            {"deploy": {"allow": [{"repositories": [REPO, "nope"]}]}},
            "policies.deploy.allow[0].repositories[1]",
        ),
        (
            {"deploy": {"allow": [{"allow_missing_branch": True}]}},
            "policies.deploy.allow[0].allow_missing_branch",
        ),
        ({"deploy": {"allow": [{"max_step_minutes": "20"}]}}, "policies.deploy.allow[0].max_step_minutes"),
        ({"deploy": {"allow": [{"ip_ranges": ["10.0.0.1/8"]}]}}, "policies.deploy.allow[0].ip_ranges[0]"),
        ({"deploy": {"allow": [{"workspace": ["nobody"]}]}}, "policies.deploy.allow[0].workspace[0]"),
        ({"deploy": {"allow": [{"claims": {}}]}}, "policies.deploy.allow[0].claims"),
        ({"deploy": {"allow": [{"claims": {"stage": []}}]}}, "policies.deploy.allow[0].claims.stage"),
        (
            {"deploy": {"allow": [{"claims": {"stage": ["a", 1.5]}}]}},
            "policies.deploy.allow[0].claims.stage[1]",
        ),
    ],
)
def test_policy_mistakes_name_the_key_path(issuer: FakeIssuer, policies: Any, key: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        verifier_from_mapping({**base(issuer), "policies": policies})
    assert exc.value.key == key, exc.value


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"BBVERIFY_POLICIES": "{not json"}, "BBVERIFY_POLICIES"),
        ({"BBVERIFY_POLICIES": "[1]"}, "BBVERIFY_POLICIES"),
        (
            {"BBVERIFY_POLICIES": json.dumps({"deploy": {"allow": [{"branches": [" x"]}]}})},
            "BBVERIFY_POLICIES.deploy.allow[0].branches[0]",
        ),
        ({"BBVERIFY_DEFAULT_POLICY": "deploy"}, "BBVERIFY_DEFAULT_POLICY"),
    ],
)
def test_env_policy_mistakes_name_the_variable(issuer: FakeIssuer, env: dict[str, str], key: str) -> None:
    full = {"BBVERIFY_ISSUER": issuer.issuer, "BBVERIFY_AUDIENCE": issuer.audience, **env}
    with pytest.raises(ConfigurationError) as exc:
        verifier_from_env(full)
    assert exc.value.key == key, exc.value


def test_entries_share_one_ip_feed(issuer: FakeIssuer) -> None:
    from bbverify.ipranges import SAMPLE_FEED

    rules = policies_from_mapping(
        {
            "a": {"allow": [{"ip_ranges_feed": str(SAMPLE_FEED)}]},
            "b": {"allow": [{"ip_ranges_feed": str(SAMPLE_FEED), "branches": ["main"]}]},
        }
    )
    feed_a = rules["a"].feed  # type: ignore[attr-defined]
    feed_b = rules["b"].rules[1].feed  # type: ignore[attr-defined]  # branches come first
    assert feed_a is feed_b


def test_cli_verify_with_several_workspaces_and_a_policy(
    tmp_path: Path, issuer: FakeIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    from bbverify.cli import main

    with FakeIssuer("other") as other:
        path = tmp_path / "bbverify.toml"
        path.write_text(
            f"""
[[bbverify.workspaces]]
name = "main"
issuer = "{issuer.issuer}"
audience = "{issuer.audience}"

[[bbverify.workspaces]]
name = "other"
issuer = "{other.issuer}"
audience = "{other.audience}"

[bbverify.policies.main-only]
allow = [ {{ workspace = ["main"] }} ]
"""
        )
        config = ["--config", str(path), "--json"]
        assert main(["verify", other.mint(), *config]) == 0
        assert main(["verify", issuer.mint(), *config, "--policy", "main-only"]) == 0
        capsys.readouterr()
        assert main(["verify", other.mint(), *config, "--policy", "main-only"]) == 1
        assert json.loads(capsys.readouterr().out)["code"] == "workspace_not_allowed"
        assert main(["verify", other.mint(), *config, "--policy", "nope"]) == 2
        assert "unknown policy 'nope'" in capsys.readouterr().err
