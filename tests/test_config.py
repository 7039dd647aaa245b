"""Declarative configuration: mapping, TOML, env / Flask-style mappings, and every bad-config path."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from bbverify import Decision, PolicyDenied, Verifier
from bbverify.config import (
    RULE_SETTINGS,
    VERIFIER_SETTINGS,
    rules_from_env,
    rules_from_mapping,
    verifier_from_env,
    verifier_from_mapping,
    verifier_from_toml,
)
from bbverify.errors import ConfigurationError
from bbverify.policies import Branches, IPRanges, Repositories, StepDuration
from bbverify.testing import FakeIssuer

FIXTURE = Path(__file__).parent / "fixtures" / "atlassian-ip-ranges.json"
DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"
PIPELINES_IP = "34.199.54.113"


def braced() -> str:
    return "{" + str(uuid.uuid4()) + "}"


def base(issuer: FakeIssuer) -> dict[str, Any]:
    return {"issuer": issuer.issuer, "audience": [issuer.audience]}


def rule_types(v: Verifier) -> list[type]:
    return [type(r) for r in v.policies]


def code_of(v: Verifier, token: str, **kw: Any) -> str:
    with pytest.raises(PolicyDenied) as e:
        v.verify(token, **kw)
    return e.value.code


# -- mapping ---------------------------------------------------------------------------


def test_mapping_builds_a_working_verifier(issuer: FakeIssuer) -> None:
    v = verifier_from_mapping(
        {
            **base(issuer),
            "leeway": 5,
            "rules": {
                "repositories": [issuer.repository_uuid.strip("{}").upper()],
                "branches": ["main", "release/*"],
                "ip_ranges": ["34.199.54.113/32", "2401:1d80::/32"],
                "max_step_minutes": 20,
            },
        }
    )
    assert v.leeway == 5.0
    assert rule_types(v) == [Repositories, Branches, IPRanges, StepDuration]
    token = issuer.mint(lifetime=25 * 60)
    assert v.verify(token, client_ip=PIPELINES_IP).branch_name == "main"
    assert code_of(v, token, client_ip="10.0.0.1") == "ip_not_allowed"
    assert code_of(v, issuer.mint(branch="dev", lifetime=60), client_ip=PIPELINES_IP) == "branch_not_allowed"
    assert code_of(v, issuer.mint(lifetime=3600), client_ip=PIPELINES_IP) == "token_lifetime_too_long"


def test_mapping_with_environments_and_workspace_uuid(issuer: FakeIssuer) -> None:
    v = verifier_from_mapping(
        {
            "issuer": issuer.issuer,
            "workspace_uuid": issuer.workspace_uuid.strip("{}"),  # audience derived from it
            "rules": {"environments": [issuer.environment_uuid], "workspaces": [issuer.workspace_uuid]},
        }
    )
    assert v.audiences == {issuer.audience}
    assert v.verify(issuer.mint(environment_uuid=issuer.environment_uuid)).is_deployment
    assert code_of(v, issuer.mint()) == "environment_required"


def test_workspace_slug_derives_the_issuer() -> None:
    audience = "ari:cloud:bitbucket::workspace/0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00"
    v = verifier_from_mapping({"workspace": "acme", "audience": audience})
    assert v.issuer == "https://api.bitbucket.org/2.0/workspaces/acme/pipelines-config/identity/oidc"
    assert v.policies == ()


def test_overrides_replace_values_and_append_policies(issuer: FakeIssuer) -> None:
    decisions: list[Decision] = []

    def only_main(claims: Any, context: Any) -> bool:
        return claims.branch_name == "main"

    v = verifier_from_mapping(
        {
            "issuer": "https://wrong.example/oidc",
            "audience": "nobody",
            "rules": {"ip_ranges": ["10.0.0.0/8"]},
        },
        issuer=issuer.issuer,
        audience=issuer.audience,
        on_decision=decisions.append,
        policies=[only_main],
    )
    assert v.issuer == issuer.issuer
    assert v.policies[1] is only_main  # configured rules first, then the code's
    v.verify(issuer.mint(), client_ip="10.1.1.1")
    assert code_of(v, issuer.mint(branch="dev"), client_ip="10.1.1.1") == "policy_denied"
    assert [d.allowed for d in decisions] == [True, False]
    with pytest.raises(ConfigurationError) as e:
        verifier_from_mapping(base(issuer), polices=[only_main])
    assert e.value.key == "polices"


def test_feed_from_config(issuer: FakeIssuer) -> None:
    v = verifier_from_mapping(
        {
            **base(issuer),
            "rules": {
                "ip_ranges_feed": str(FIXTURE),
                "ip_ranges_region": ["ap-southeast-2"],
                "ip_ranges": ["203.0.113.0/24"],
            },
        }
    )
    token = issuer.mint()
    v.verify(token, client_ip="13.236.8.130")
    v.verify(token, client_ip="203.0.113.1")
    assert code_of(v, token, client_ip=PIPELINES_IP) == "ip_not_allowed"  # us-east-1, filtered out


def test_lazy_feed_from_config(issuer: FakeIssuer, tmp_path: Path) -> None:
    rules = rules_from_mapping({"ip_ranges_feed": str(tmp_path / "later.json"), "ip_ranges_lazy": True})
    assert len(rules) == 1
    with pytest.raises(ConfigurationError) as e:
        rules_from_mapping({"ip_ranges_feed": str(tmp_path / "later.json")})
    assert e.value.key == "rules.ip_ranges_feed"


@pytest.mark.parametrize(
    ("rules", "key"),
    [
        ({"repositories": [braced(), "{1de489be-nope}"]}, "rules.repositories[1]"),
        ({"repositories": "not-a-uuid"}, "rules.repositories[0]"),
        ({"repositories": []}, "rules.repositories"),
        ({"repositories": [braced(), 7]}, "rules.repositories"),
        ({"repositories": {"a": 1}}, "rules.repositories"),
        ({"environments": ["x"]}, "rules.environments[0]"),
        ({"workspaces": [braced(), braced(), "w"]}, "rules.workspaces[2]"),
        ({"branches": ["main", ""]}, "rules.branches[1]"),
        ({"allow_missing_branch": True}, "rules.allow_missing_branch"),
        ({"branches": ["main"], "allow_missing_branch": "yes"}, "rules.allow_missing_branch"),
        ({"ip_ranges": ["10.0.0.0/8", "10.0.0.1/8"]}, "rules.ip_ranges[1]"),
        ({"ip_ranges": ["10.0.0.0/33"]}, "rules.ip_ranges[0]"),
        ({"ip_ranges_product": "bitbucket"}, "rules.ip_ranges_product"),
        ({"ip_ranges_feed": "http://example.com/feed"}, "rules.ip_ranges_feed"),
        ({"ip_ranges_feed": str(FIXTURE), "ip_ranges_direction": "sideways"}, "rules.ip_ranges_feed"),
        ({"ip_ranges_feed": str(FIXTURE), "ip_ranges_product": []}, "rules.ip_ranges_product"),
        ({"ip_ranges_feed": str(FIXTURE), "ip_ranges_refresh_seconds": 0}, "rules.ip_ranges_refresh_seconds"),
        ({"max_step_minutes": -5}, "rules.max_step_minutes"),
        ({"max_step_minutes": 0}, "rules.max_step_minutes"),
        ({"max_step_minutes": "20"}, "rules.max_step_minutes"),
        ({"max_step_minutes": True}, "rules.max_step_minutes"),
        ({"step_start_buffer_minutes": 5}, "rules.step_start_buffer_minutes"),
        ({"step_check_lifetime": False}, "rules.step_check_lifetime"),
        ({"max_step_minutes": 20, "step_check_lifetime": "no"}, "rules.step_check_lifetime"),
        ({"max_step_minutes": 20, "step_start_buffer_minutes": -1}, "rules.step_start_buffer_minutes"),
        ({"repositoires": [braced()]}, "rules.repositoires"),
    ],
)
def test_bad_rules_name_the_key(issuer: FakeIssuer, rules: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        verifier_from_mapping({**base(issuer), "rules": rules})
    assert e.value.key == key
    assert str(e.value).startswith(key + ": ")
    assert not str(e.value).startswith(f"{key}: {key}")  # the key is not repeated


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"audiences": ["x"]}, "audiences"),
        ({"audience": 5}, "audience"),
        ({"audience": []}, "audience"),
        ({"leeway": 1000}, "leeway"),
        ({"leeway": "10"}, "leeway"),
        ({"leeway": -1}, "leeway"),
        ({"workspace_uuid": "nope"}, "workspace_uuid"),
        ({"jwks_url": "http://example.com/keys.json"}, "jwks_url"),
        ({"algorithms": ["HS256"]}, "algorithms"),
        ({"max_token_bytes": 1.5}, "max_token_bytes"),
        ({"rules": ["repositories"]}, "rules"),
        ({"bbverify": {}}, "bbverify"),
    ],
)
def test_bad_verifier_settings_name_the_key(issuer: FakeIssuer, settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        verifier_from_mapping({**base(issuer), **settings})
    assert e.value.key == key


def test_missing_audience_is_an_error() -> None:
    with pytest.raises(ConfigurationError) as e:
        verifier_from_mapping({"workspace": "acme"})
    assert e.value.key == "audience"


def test_rules_from_mapping_rejects_non_mapping() -> None:
    with pytest.raises(ConfigurationError) as e:
        rules_from_mapping(["repositories"])  # type: ignore[arg-type]
    assert e.value.key == "rules"


# -- TOML -----------------------------------------------------------------------------


def test_toml_file(issuer: FakeIssuer, tmp_path: Path) -> None:
    path = tmp_path / "bbverify.toml"
    path.write_text(
        f"""
[tool.other]
ignored = true

[bbverify]
issuer = "{issuer.issuer}"
audience = ["{issuer.audience}", "extra-audience"]
leeway = 10

[bbverify.rules]
repositories = ["{issuer.repository_uuid}"]
environments = ["{issuer.environment_uuid.strip("{}")}"]
branches = ["main", "release/*"]
ip_ranges = ["34.199.54.113/32"]
max_step_minutes = 20
"""
    )
    v = verifier_from_toml(path)
    assert v.audiences == {issuer.audience, "extra-audience"}
    token = issuer.mint(environment_uuid=issuer.environment_uuid, lifetime=20 * 60)
    assert v.verify(token, client_ip=PIPELINES_IP).is_deployment
    assert code_of(v, issuer.mint(lifetime=20 * 60), client_ip=PIPELINES_IP) == "environment_required"
    # Overrides work for TOML too.
    assert verifier_from_toml(path, leeway=0).leeway == 0.0


@pytest.mark.parametrize(
    ("text", "key", "match"),
    [
        ("[other]\nx = 1\n", "bbverify", "no \\[bbverify\\] table"),
        ("[bbverify\n", "bbverify", "not valid TOML"),
        (
            '[bbverify]\nworkspace = "acme"\naudience = "a"\n[bbverify.rules]\nrepositories = ["a", "b"]\n',
            "rules.repositories[0]",
            "not a UUID",
        ),
        ('[bbverify]\nworkspace = "acme"\naudience = "a"\nleway = 5\n', "leway", "unknown setting"),
    ],
)
def test_bad_toml(tmp_path: Path, text: str, key: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=match) as e:
        verifier_from_toml(path)
    assert e.value.key == key


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        verifier_from_toml(tmp_path / "nope.toml")


# -- env and Flask-style mappings ---------------------------------------------------------


def env_base(issuer: FakeIssuer) -> dict[str, Any]:
    return {"BBVERIFY_ISSUER": issuer.issuer, "BBVERIFY_AUDIENCE": f"{issuer.audience}, other-audience"}


def test_env_strings(issuer: FakeIssuer) -> None:
    env = {
        **env_base(issuer),
        "PATH": "/usr/bin",  # unrelated variables are ignored
        "BBVERIFY_LEEWAY": "5",
        "BBVERIFY_CACHE_SIZE": "16",
        "BBVERIFY_REPOSITORIES": f" {issuer.repository_uuid.upper()} ,{braced()}",
        "BBVERIFY_BRANCHES": "main,release/*",
        "BBVERIFY_ALLOW_MISSING_BRANCH": "true",
        "BBVERIFY_IP_RANGES": "34.199.54.113/32, 2401:1d80::/32",
        "BBVERIFY_MAX_STEP_MINUTES": "20",
        "BBVERIFY_STEP_START_BUFFER_MINUTES": "5",
        "BBVERIFY_STEP_CHECK_LIFETIME": "yes",
    }
    v = verifier_from_env(env)
    assert v.audiences == {issuer.audience, "other-audience"}
    assert v.leeway == 5.0
    assert v.cache_info()["token_limit"] == 16
    assert rule_types(v) == [Repositories, Branches, IPRanges, StepDuration]
    assert v.policies[1].allow_missing is True  # type: ignore[attr-defined]
    assert v.policies[3].check_lifetime is True  # type: ignore[attr-defined]
    age_only = verifier_from_env({**env, "BBVERIFY_STEP_CHECK_LIFETIME": "false"})
    assert age_only.policies[3].check_lifetime is False  # type: ignore[attr-defined]
    v.verify(issuer.mint(branch=None, lifetime=600), client_ip="2401:1d80::9")
    assert code_of(v, issuer.mint(branch="dev", lifetime=600), client_ip=PIPELINES_IP) == "branch_not_allowed"


def test_flask_config_with_python_values(issuer: FakeIssuer) -> None:
    config = {
        "DEBUG": True,
        "SECRET_KEY": "x",
        "BBVERIFY_ISSUER": issuer.issuer,
        "BBVERIFY_AUDIENCE": [issuer.audience],
        "BBVERIFY_LEEWAY": 7,
        "BBVERIFY_REPOSITORIES": [issuer.repository_uuid],
        "BBVERIFY_ALLOW_MISSING_BRANCH": False,
        "BBVERIFY_BRANCHES": ("main",),
        "BBVERIFY_IP_RANGES_FEED": FIXTURE,  # a Path object works as well
        "BBVERIFY_TRUSTED_PROXIES": ["127.0.0.1/32"],  # the adapter's own setting
    }
    with pytest.raises(ConfigurationError) as e:
        verifier_from_env(config)
    assert e.value.key == "BBVERIFY_TRUSTED_PROXIES"
    v = verifier_from_env(config, ignore=["BBVERIFY_TRUSTED_PROXIES"])
    assert v.leeway == 7.0
    v.verify(issuer.mint(), client_ip="104.192.136.1")
    assert code_of(v, issuer.mint(), client_ip="13.52.5.1") == "ip_not_allowed"


def test_env_defaults_to_os_environ(issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("BBVERIFY_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("BBVERIFY_ISSUER", issuer.issuer)
    monkeypatch.setenv("BBVERIFY_AUDIENCE", issuer.audience)
    monkeypatch.setenv("BBVERIFY_REPOSITORIES", braced())
    v = verifier_from_env()
    assert code_of(v, issuer.mint()) == "repository_not_allowed"


def test_custom_prefix(issuer: FakeIssuer) -> None:
    env = {"PIPE_ISSUER": issuer.issuer, "PIPE_AUDIENCE": issuer.audience, "PIPE_BRANCHES": "main"}
    v = verifier_from_env(env, prefix="PIPE_")
    assert rule_types(v) == [Branches]
    with pytest.raises(ConfigurationError) as e:
        verifier_from_env({**env, "PIPE_BRANCHES": ""}, prefix="PIPE_")
    assert e.value.key == "PIPE_BRANCHES"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BBVERIFY_REPOSITORIES", f"{braced()},not-a-uuid"),
        ("BBVERIFY_REPOSITORIES", ""),
        ("BBVERIFY_REPOSITORIES", " , "),
        ("BBVERIFY_ENVIRONMENTS", "x"),
        ("BBVERIFY_WORKSPACES", "x"),
        ("BBVERIFY_BRANCHES", ","),
        ("BBVERIFY_IP_RANGES", "10.0.0.0/8,10.0.0.1/8"),
        ("BBVERIFY_IP_RANGES_FEED", "http://example.com/"),
        ("BBVERIFY_MAX_STEP_MINUTES", "-5"),
        ("BBVERIFY_MAX_STEP_MINUTES", "twenty"),
        ("BBVERIFY_MAX_STEP_MINUTES", "nan"),
        ("BBVERIFY_LEEWAY", "1e9"),
        ("BBVERIFY_LEEWAY", "ten"),
        ("BBVERIFY_CACHE_SIZE", "1.5"),
        ("BBVERIFY_ALLOW_MISSING_BRANCH", "maybe"),
        ("BBVERIFY_WORKSPACE_UUID", "nope"),
        ("BBVERIFY_JWKS_URL", "ftp://x"),
        ("BBVERIFY_AUDIENCE", ""),
        ("BBVERIFY_AUDIANCE", "x"),
        ("BBVERIFY_RULES", "x"),
    ],
)
def test_bad_env_names_the_variable(issuer: FakeIssuer, name: str, value: str) -> None:
    env = {**env_base(issuer), "BBVERIFY_BRANCHES": "main", name: value}
    with pytest.raises(ConfigurationError) as e:
        verifier_from_env(env)
    assert e.value.key == name


def test_env_item_named_in_message(issuer: FakeIssuer) -> None:
    with pytest.raises(ConfigurationError, match="'not-a-uuid' is not a UUID") as e:
        verifier_from_env({**env_base(issuer), "BBVERIFY_REPOSITORIES": f"{braced()},not-a-uuid"})
    assert str(e.value).startswith("BBVERIFY_REPOSITORIES: ")


def test_rules_from_env() -> None:
    rules = rules_from_env({"BBVERIFY_BRANCHES": "main", "BBVERIFY_WORKSPACE": "ignored-here"})
    assert [type(r) for r in rules] == [Branches]
    with pytest.raises(ConfigurationError) as e:
        rules_from_env({"BBVERIFY_MAX_STEP_MINUTES": "0"})
    assert e.value.key == "BBVERIFY_MAX_STEP_MINUTES"


# -- docs stay in step with the schema -------------------------------------------------------


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for s in VERIFIER_SETTINGS:
        assert re.search(rf"`{s.name}`.*`BBVERIFY_{s.name.upper()}`", text), s.name
    for s in RULE_SETTINGS:
        assert re.search(rf"`rules\.{s.name}`.*`BBVERIFY_{s.name.upper()}`", text), s.name
