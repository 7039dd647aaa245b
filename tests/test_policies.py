"""Built-in rules, composition, per-route rules and rules on cached tokens, with real tokens."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from clock import FakeClock

from bbverify import Decision, PolicyDenied, Verifier
from bbverify.claims import PipelineClaims
from bbverify.errors import ConfigurationError
from bbverify.policies import (
    Branches,
    Environments,
    IPRanges,
    Repositories,
    RequestContext,
    StepDuration,
    Workspaces,
    all_of,
    any_of,
    not_,
)
from bbverify.testing import FakeIssuer

FIXTURE = Path(__file__).parent / "fixtures" / "atlassian-ip-ranges.json"
PIPELINES_IP = "34.199.54.113"


def braced() -> str:
    return "{" + str(uuid.uuid4()) + "}"


def bare_upper(u: str) -> str:
    return u.strip("{}").upper()


def denied(verifier: Verifier, token: str, **kwargs: Any) -> PolicyDenied:
    with pytest.raises(PolicyDenied) as e:
        verifier.verify(token, **kwargs)
    return e.value


@pytest.fixture(scope="module")
def claims(issuer: FakeIssuer) -> PipelineClaims:
    """Claims of a plain (non-deployment) step on main, verified for real."""
    return issuer.verifier().verify(issuer.mint())


@pytest.fixture(scope="module")
def deploy_claims(issuer: FakeIssuer) -> PipelineClaims:
    return issuer.verifier().verify(issuer.mint(environment_uuid=issuer.environment_uuid))


def ctx(client_ip: str | None = PIPELINES_IP, now: float | None = None) -> RequestContext:
    return RequestContext(client_ip, time.time() if now is None else now)


# -- UUID allow lists ------------------------------------------------------------------


def test_repositories_allow_with_any_spelling(issuer: FakeIssuer) -> None:
    rule = Repositories(braced(), bare_upper(issuer.repository_uuid))
    v = issuer.verifier(policies=[rule])
    claims = v.verify(issuer.mint())
    assert claims.repository_uuid == issuer.repository_uuid


def test_repositories_deny(issuer: FakeIssuer) -> None:
    decisions: list[Decision] = []
    v = issuer.verifier(policies=[Repositories(braced())], on_decision=decisions.append)
    err = denied(v, issuer.mint())
    assert err.code == "repository_not_allowed"
    assert err.rule == "repositories"
    assert err.status_code == 403
    assert issuer.repository_uuid in err.message and "add it" in err.message
    assert decisions[-1].rule == "repositories" and decisions[-1].code == "repository_not_allowed"
    assert decisions[-1].repository == issuer.repository_uuid


def test_repositories_accepts_a_list_and_dedupes() -> None:
    a = braced()
    rule = Repositories([a, a.upper(), bare_upper(a)])
    assert rule.uuids == (a,)
    assert repr(rule) == f"Repositories({a!r})"
    assert rule.name == "repositories"


@pytest.mark.parametrize("cls", [Workspaces, Repositories, Environments])
def test_bad_uuid_is_a_configuration_error(cls: type) -> None:
    with pytest.raises(ConfigurationError) as e:
        cls(braced(), "{1de489be-not-a-uuid}")
    assert e.value.key == f"{cls.name}[1]"
    with pytest.raises(ConfigurationError) as e:
        cls()
    assert e.value.key == cls.name
    with pytest.raises(ConfigurationError):
        cls("{" + str(uuid.uuid4()))  # unbalanced brace


def test_workspaces(issuer: FakeIssuer, claims: PipelineClaims) -> None:
    Workspaces(bare_upper(issuer.workspace_uuid))(claims, ctx())
    with pytest.raises(PolicyDenied) as e:
        Workspaces(braced())(claims, ctx())
    assert e.value.code == "workspace_not_allowed"
    assert e.value.rule == "workspaces"


def test_environments(issuer: FakeIssuer) -> None:
    v = issuer.verifier(policies=[Environments(bare_upper(issuer.environment_uuid))])
    assert v.verify(issuer.mint(environment_uuid=issuer.environment_uuid)).is_deployment
    err = denied(v, issuer.mint())
    assert err.code == "environment_required"
    assert err.message.startswith("this rule only admits deployment steps")
    err = denied(v, issuer.mint(environment_uuid=braced()))
    assert err.code == "environment_not_allowed"
    assert err.rule == "environments"


# -- branches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("branch", "allowed"),
    [
        ("main", True),
        ("release/1.2", True),
        ("release/1.2/hotfix", True),  # fnmatch '*' crosses '/'
        ("Main", False),  # case-sensitive
        ("main2", False),
        ("feature/release/1", False),
        ("hotfix-12", True),
        ("hotfix-ab", False),
    ],
)
def test_branches(issuer: FakeIssuer, branch: str, allowed: bool) -> None:
    v = issuer.verifier(policies=[Branches("main", "release/*", "hotfix-[0-9]*")])
    token = issuer.mint(branch=branch)
    if allowed:
        assert v.verify(token).branch_name == branch
    else:
        err = denied(v, token)
        assert err.code == "branch_not_allowed"
        assert err.rule == "branches"


def test_branches_missing(issuer: FakeIssuer) -> None:
    token = issuer.mint(branch=None)
    err = denied(issuer.verifier(policies=[Branches("main")]), token)
    assert err.code == "branch_required"
    assert "allow_missing=True" in err.message
    assert issuer.verifier(policies=[Branches("main", allow_missing=True)]).verify(token).branch_name is None


def test_branches_config_errors() -> None:
    with pytest.raises(ConfigurationError) as e:
        Branches("main", " dev")
    assert e.value.key == "branches[1]"
    with pytest.raises(ConfigurationError):
        Branches()
    with pytest.raises(ConfigurationError):
        Branches("main", allow_missing="yes")  # type: ignore[arg-type]
    assert repr(Branches(["main", "release/*"], allow_missing=True)) == (
        "Branches('main', 'release/*', allow_missing=True)"
    )


# -- IP ranges ---------------------------------------------------------------------------


def test_ip_ranges_through_the_verifier(issuer: FakeIssuer) -> None:
    v = issuer.verifier(policies=[IPRanges(["34.199.54.113/32", "2401:1d80::/32"])])
    token = issuer.mint()
    v.verify(token, client_ip=PIPELINES_IP)
    v.verify(token, client_ip="2401:1d80:1::5")
    v.verify(token, client_ip="::ffff:34.199.54.113")
    assert denied(v, token, client_ip="34.199.54.114").code == "ip_not_allowed"
    assert denied(v, token).code == "client_ip_unknown"
    err = denied(v, token, client_ip="fe80::1%eth0")
    assert err.code == "client_ip_invalid"
    assert err.rule == "ip_ranges"


@pytest.mark.parametrize(
    ("client_ip", "code"),
    [
        (None, "client_ip_unknown"),
        ("", "client_ip_invalid"),
        ("not an ip", "client_ip_invalid"),
        ("34.199.54.113:443", "client_ip_invalid"),
        ("[2401:1d80::1]", "client_ip_invalid"),
        ("2401:1d80::1%1", "client_ip_invalid"),
        ("1" * 5000, "client_ip_invalid"),
        (12345, "client_ip_invalid"),
        ("10.0.0.1", "ip_not_allowed"),
        ("2402::1", "ip_not_allowed"),
    ],
)
def test_ip_ranges_malformed_input_is_denied_not_raised(
    claims: PipelineClaims, client_ip: Any, code: str
) -> None:
    rule = IPRanges(["34.199.54.113/32", "2401:1d80::/32"])
    with pytest.raises(PolicyDenied) as e:
        rule(claims, RequestContext(client_ip, time.time()))
    assert e.value.code == code


def test_ip_ranges_config_errors() -> None:
    with pytest.raises(ConfigurationError) as e:
        IPRanges(["10.0.0.0/8", "10.0.0.1/8"])
    assert e.value.key == "ip_ranges[1]"
    with pytest.raises(ConfigurationError) as e:
        IPRanges([])
    assert e.value.key == "ip_ranges"
    assert IPRanges("192.0.2.0/24").static.networks[0].prefixlen == 24
    assert repr(IPRanges(["192.0.2.0/24"])) == "IPRanges(['192.0.2.0/24'])"


def test_ip_ranges_from_feed_file(claims: PipelineClaims) -> None:
    rule = IPRanges.from_atlassian_feed(str(FIXTURE), extra=["203.0.113.0/24"])
    rule(claims, ctx(PIPELINES_IP))
    rule(claims, ctx("104.192.136.9"))
    rule(claims, ctx("203.0.113.9"))  # extra CIDRs join the feed's
    with pytest.raises(PolicyDenied) as e:
        rule(claims, ctx("13.52.5.1"))  # jira egress, not bitbucket
    assert e.value.code == "ip_not_allowed"
    assert "feed=AtlassianIPRanges" in repr(rule)


def test_ip_ranges_feed_unavailable_denies(claims: PipelineClaims, tmp_path: Path) -> None:
    rule = IPRanges.from_atlassian_feed(tmp_path / "absent.json", lazy=True, timeout=1)
    with pytest.raises(PolicyDenied) as e:
        rule(claims, ctx())
    assert e.value.code == "ip_ranges_unavailable"
    with pytest.raises(ConfigurationError):
        IPRanges.from_atlassian_feed(tmp_path / "absent.json")


# -- step duration ---------------------------------------------------------------------


def test_step_duration(issuer: FakeIssuer) -> None:
    t0 = float(int(time.time()) - 60)
    clock = FakeClock(t0)
    # Bitbucket's lifetime for a 20-minute step: max-time plus the 5-minute buffer.
    token = issuer.mint(issued_at=t0, lifetime=25 * 60)
    v = issuer.verifier(policies=[StepDuration(max_minutes=20)], clock=clock, cache_size=0)
    v.verify(token)
    clock.now = t0 + 25 * 60  # exactly at the limit
    v.verify(token)
    clock.now = t0 + 25 * 60 + 1
    err = denied(v, token)
    assert err.code == "step_too_long"
    assert err.rule == "step_duration"
    # A step configured for longer than the service accepts is refused from the start.
    long_token = issuer.mint(issued_at=t0, lifetime=60 * 60)
    clock.now = t0 + 1
    assert denied(v, long_token).code == "token_lifetime_too_long"
    # Without the buffer, a 25-minute lifetime is too long for 20 minutes.
    strict = issuer.verifier(policies=[StepDuration(20, start_buffer_minutes=0)], clock=clock)
    assert denied(strict, token).code == "token_lifetime_too_long"


def test_step_duration_age_only(issuer: FakeIssuer) -> None:
    t0 = float(int(time.time()) - 60)
    clock = FakeClock(t0 + 60)
    token = issuer.mint(issued_at=t0, lifetime=120 * 60)  # a step with max-time 115
    age_only = issuer.verifier(
        policies=[StepDuration(20, check_lifetime=False)], clock=clock, cache_size=0
    )
    age_only.verify(token)  # admitted early in the step
    assert denied(issuer.verifier(policies=[StepDuration(20)], clock=clock), token).code == (
        "token_lifetime_too_long"
    )
    clock.now = t0 + 25 * 60 + 1
    err = denied(age_only, token)
    assert err.code == "step_too_long"
    assert "raise max_minutes" in err.message
    assert (
        repr(StepDuration(20, check_lifetime=False)) == "StepDuration(max_minutes=20, check_lifetime=False)"
    )
    with pytest.raises(ConfigurationError) as e:
        StepDuration(20, check_lifetime="no")  # type: ignore[arg-type]
    assert e.value.key == "check_lifetime"


def test_step_duration_uses_context_now(claims: PipelineClaims) -> None:
    rule = StepDuration(max_minutes=1000)
    iat = claims.issued_at.timestamp()
    rule(claims, ctx(now=iat + 60))
    with pytest.raises(PolicyDenied) as e:
        rule(claims, ctx(now=iat + 1006 * 60))
    assert e.value.code == "step_too_long"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ((0,), "max_minutes"),
        ((-5,), "max_minutes"),
        ((float("inf"),), "max_minutes"),
        (("20",), "max_minutes"),
        ((True,), "max_minutes"),
    ],
)
def test_step_duration_config_errors(args: tuple[Any, ...], key: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        StepDuration(*args)
    assert e.value.key == key


def test_step_duration_negative_buffer() -> None:
    with pytest.raises(ConfigurationError) as e:
        StepDuration(20, start_buffer_minutes=-1)
    assert e.value.key == "start_buffer_minutes"
    assert repr(StepDuration(20)) == "StepDuration(max_minutes=20)"
    assert (
        repr(StepDuration(20, start_buffer_minutes=2))
        == "StepDuration(max_minutes=20, start_buffer_minutes=2)"
    )


# -- composition ---------------------------------------------------------------------------


def only_main(claims: PipelineClaims, context: RequestContext) -> bool:
    return claims.branch_name == "main"


def broken(claims: PipelineClaims, context: RequestContext) -> None:
    raise RuntimeError("bug")


def test_all_of_passes_inner_denial_through(issuer: FakeIssuer, claims: PipelineClaims) -> None:
    rule = all_of(Repositories(issuer.repository_uuid), IPRanges(["10.0.0.0/8"]))
    with pytest.raises(PolicyDenied) as e:
        rule(claims, ctx())
    assert e.value.code == "ip_not_allowed"
    assert e.value.rule == "ip_ranges"
    rule(claims, ctx("10.1.2.3"))
    assert rule_name_of(rule) == "all_of(repositories, ip_ranges)"


def rule_name_of(rule: object) -> str:
    from bbverify.policies import rule_name

    return rule_name(rule)


def test_any_of(issuer: FakeIssuer) -> None:
    # Deployments to production from anywhere, or anything from main.
    rule = any_of(Environments(issuer.environment_uuid), only_main)
    v = issuer.verifier(policies=[rule])
    v.verify(issuer.mint(branch="main"))
    v.verify(issuer.mint(branch="dev", environment_uuid=issuer.environment_uuid))
    err = denied(v, issuer.mint(branch="dev"))
    assert err.code == "policy_denied"
    assert err.rule == "any_of(environments, only_main)"
    assert "environment_required" in err.message and "only_main" in err.message


def test_any_of_with_broken_alternative(claims: PipelineClaims) -> None:
    any_of(broken, only_main)(claims, ctx())  # a later alternative still admits
    with pytest.raises(PolicyDenied) as e:
        any_of(broken, Branches("dev"))(claims, ctx())
    # Undecided (the broken one might have admitted), so not_() cannot invert it.
    assert e.value.code == "policy_error"
    assert "policy_error" in e.value.message


def test_not(issuer: FakeIssuer, claims: PipelineClaims) -> None:
    blocked = not_(Repositories(issuer.repository_uuid), message="this repository is blocked")
    with pytest.raises(PolicyDenied) as e:
        blocked(claims, ctx())
    assert e.value.code == "policy_denied"
    assert e.value.message == "this repository is blocked"
    assert e.value.rule == "not_(repositories)"
    not_(Repositories(braced()))(claims, ctx())
    not_(Branches("dev"))(claims, ctx())
    with pytest.raises(PolicyDenied):
        not_(only_main)(claims, ctx())


@pytest.mark.parametrize(
    ("inner", "client_ip", "code"),
    [
        (broken, PIPELINES_IP, "policy_error"),
        (IPRanges(["10.0.0.0/8"]), None, "client_ip_unknown"),
        (IPRanges(["10.0.0.0/8"]), "junk", "client_ip_invalid"),
    ],
)
def test_not_never_admits_an_undecided_request(
    claims: PipelineClaims, inner: Any, client_ip: str | None, code: str
) -> None:
    with pytest.raises(PolicyDenied) as e:
        not_(inner)(claims, ctx(client_ip))
    assert e.value.code == code


def test_not_as_ip_block_list(claims: PipelineClaims) -> None:
    rule = not_(IPRanges(["192.0.2.0/24"]))
    rule(claims, ctx("198.51.100.1"))
    with pytest.raises(PolicyDenied):
        rule(claims, ctx("192.0.2.1"))


def test_composites_reject_non_callables() -> None:
    with pytest.raises(ConfigurationError) as e:
        any_of(only_main, "main")  # type: ignore[arg-type]
    assert e.value.key == "any_of[1]"
    with pytest.raises(ConfigurationError):
        all_of()
    with pytest.raises(ConfigurationError):
        not_(None)  # type: ignore[arg-type]


def test_nested_composition_repr(issuer: FakeIssuer) -> None:
    rule = any_of(all_of(Branches("main"), StepDuration(20)), not_(only_main))
    text = repr(rule)
    assert text.startswith("any_of(all_of(Branches('main'), StepDuration(max_minutes=20)), not_(<function")


# -- per-route rules and cached tokens ----------------------------------------------------


def test_per_route_rules_are_added(issuer: FakeIssuer) -> None:
    v = issuer.verifier(policies=[Repositories(issuer.repository_uuid)])
    build_token = issuer.mint()
    deploy_token = issuer.mint(environment_uuid=issuer.environment_uuid)
    deploy_route = [Environments(issuer.environment_uuid)]
    v.verify(build_token)  # the build route has no environment rule
    err = denied(v, build_token, policies=deploy_route)
    assert err.code == "environment_required"
    v.verify(deploy_token, policies=deploy_route)
    # The verifier's own rules still run first.
    other = issuer.verifier(policies=[Repositories(braced())])
    assert denied(other, deploy_token, policies=deploy_route).code == "repository_not_allowed"
    # A single callable is accepted too.
    assert denied(v, issuer.mint(branch="dev"), policies=only_main).code == "policy_denied"


def test_rules_run_on_cached_tokens(issuer: FakeIssuer) -> None:
    v = issuer.verifier(policies=[IPRanges(["34.199.54.113/32"])])
    token = issuer.mint()
    v.verify(token, client_ip=PIPELINES_IP)
    assert v.cache_info()["tokens"] == 1
    fetches = issuer.jwks_requests
    err = denied(v, token, client_ip="198.51.100.1")
    assert err.code == "ip_not_allowed"
    assert issuer.jwks_requests == fetches
    assert v.cache_info()["tokens"] == 1  # the second call was answered from the cache
    v.verify(token, client_ip=PIPELINES_IP)


def test_deployment_claims_fixture_is_a_deployment(deploy_claims: PipelineClaims, issuer: FakeIssuer) -> None:
    Environments(issuer.environment_uuid)(deploy_claims, ctx())
    with pytest.raises(PolicyDenied):
        Environments(braced())(deploy_claims, ctx())


def test_denials_reach_the_audit_log(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    v = issuer.verifier(policies=[Branches("main")])
    with caplog.at_level("INFO", logger="bbverify.audit"):
        v.verify(issuer.mint())
        denied(v, issuer.mint(branch="dev"))
    records = [r for r in caplog.records if r.name == "bbverify.audit"]
    assert [r.levelname for r in records] == ["INFO", "WARNING"]
    decision = records[1].bbverify  # type: ignore[attr-defined]
    assert decision["rule"] == "branches"
    assert decision["code"] == "branch_not_allowed"
    assert decision["branch"] == "dev"
