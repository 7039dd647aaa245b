"""PipelineClaims and UUID normalising (bbverify.claims)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from bbverify.claims import PipelineClaims, normalize_uuid, try_normalize_uuid
from bbverify.errors import ConfigurationError, InvalidToken

U = "1de489be-0a2b-4c3d-8e9f-0123456789ab"
WS = "{" + U + "}"
REPO = "{22222222-0a2b-4c3d-8e9f-0123456789ab}"
ENV = "{33333333-0a2b-4c3d-8e9f-0123456789ab}"
STEP = "{44444444-0a2b-4c3d-8e9f-0123456789ab}"
PIPE = "{55555555-0a2b-4c3d-8e9f-0123456789ab}"
ISS = "https://api.bitbucket.org/2.0/workspaces/acme/pipelines-config/identity/oidc"
AUD = "ari:cloud:bitbucket::workspace/" + U


def payload(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "sub": f"{REPO}:{STEP}",
        "aud": AUD,
        "stepUuid": STEP,
        "iss": ISS,
        "repositoryUuid": REPO,
        "branchName": "main",
        "exp": 1_700_003_600,
        "iat": 1_700_000_000,
        "pipelineUuid": PIPE,
        "workspaceUuid": WS,
        "pipelineRunUuid": "{66666666-0a2b-4c3d-8e9f-0123456789ab}",
        "nested": {"list": [1, {"deep": [2, 3]}]},
    }
    p.update(over)
    return p


# -- normalize_uuid ------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [U, WS, U.upper(), "{" + U.upper() + "}", f"  {WS}  "])
def test_normalize_uuid_accepts_common_spellings(spelling: str) -> None:
    assert normalize_uuid(spelling) == WS
    assert try_normalize_uuid(spelling) == WS


@pytest.mark.parametrize(
    "bad",
    ["{" + U, U + "}", U[:-1], U + "0", "not-a-uuid", "", None, 42, U.replace("-", ""), "{{" + U + "}}"],
)
def test_normalize_uuid_rejects_others(bad: object) -> None:
    assert try_normalize_uuid(bad) is None
    with pytest.raises(ConfigurationError) as exc:
        normalize_uuid(bad, key="policies[0].repository")
    assert exc.value.key == "policies[0].repository"
    assert "policies[0].repository" in str(exc.value)


# -- PipelineClaims ------------------------------------------------------------------


def test_typed_fields_keep_bitbucket_spelling() -> None:
    c = PipelineClaims.from_payload(payload())
    assert c.workspace_uuid == WS
    assert c.repository_uuid == REPO
    assert c.pipeline_uuid == PIPE
    assert c.step_uuid == STEP
    assert c.subject == f"{REPO}:{STEP}"
    assert c.issuer == ISS
    assert c.branch_name == "main"
    assert c.deployment_environment_uuid is None
    assert c.is_deployment is False
    assert c.summary()["repository"] == REPO


def test_absent_optional_claims_are_none() -> None:
    p = payload()
    del p["branchName"]
    c = PipelineClaims.from_payload(p)
    assert c.branch_name is None
    assert c.deployment_environment_uuid is None


def test_deployment_step() -> None:
    c = PipelineClaims.from_payload(payload(sub=f"{REPO}:{ENV}:{STEP}", deploymentEnvironmentUuid=ENV))
    assert c.deployment_environment_uuid == ENV
    assert c.is_deployment is True


def test_audience_is_a_tuple_from_string_or_array() -> None:
    assert PipelineClaims.from_payload(payload()).audience == (AUD,)
    both = PipelineClaims.from_payload(payload(aud=[AUD, "extra"]))
    assert both.audience == (AUD, "extra")
    assert isinstance(both.audience, tuple)


def test_times_are_utc_datetimes() -> None:
    c = PipelineClaims.from_payload(payload())
    assert c.issued_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert c.expires_at.tzinfo is UTC
    assert (c.expires_at - c.issued_at).total_seconds() == 3600


def test_unknown_claims_are_kept_in_raw() -> None:
    c = PipelineClaims.from_payload(payload())
    assert c.raw["pipelineRunUuid"] == "{66666666-0a2b-4c3d-8e9f-0123456789ab}"
    assert c.pipeline_run_uuid == "{66666666-0a2b-4c3d-8e9f-0123456789ab}"
    p = payload()
    del p["pipelineRunUuid"]
    assert PipelineClaims.from_payload(p).pipeline_run_uuid is None


def test_claims_are_immutable() -> None:
    c = PipelineClaims.from_payload(payload())
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.workspace_uuid = "{x}"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.raw["workspaceUuid"] = "{x}"  # type: ignore[index]
    with pytest.raises(TypeError):
        c.raw["nested"]["list"] = []
    nested_list = c.raw["nested"]["list"]
    assert isinstance(nested_list, tuple)
    with pytest.raises(TypeError):
        nested_list[1]["deep"] = ()
    with pytest.raises(AttributeError):
        nested_list[1]["deep"].append(4)


def test_raw_is_a_copy_not_a_view_of_the_payload() -> None:
    p = payload()
    c = PipelineClaims.from_payload(p)
    p["workspaceUuid"] = "{changed}"
    p["nested"]["list"].append("more")
    assert c.raw["workspaceUuid"] == WS
    assert len(c.raw["nested"]["list"]) == 2


def test_excessively_nested_payload_is_malformed() -> None:
    deep: Any = "leaf"
    for _ in range(100):
        deep = [deep]
    with pytest.raises(InvalidToken) as exc:
        PipelineClaims.from_payload(payload(deep=deep))
    assert exc.value.code == "malformed"


def test_claims_are_hashable_and_compare_by_value() -> None:
    a = PipelineClaims.from_payload(payload())
    b = PipelineClaims.from_payload(payload())
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != PipelineClaims.from_payload(payload(pipelineRunUuid="{other}"))


def test_every_claim_lands_in_its_own_field() -> None:
    # Every string claim distinct, so that a swap of any two fields shows.
    p = payload(
        workspaceUuid="w", repositoryUuid="r", pipelineUuid="p", stepUuid="s",
        deploymentEnvironmentUuid="e", branchName="b", sub="sub", iss="iss", aud=["a1", "a2"],
        iat=1_700_000_001, exp=1_700_000_002,
    )
    c = PipelineClaims.from_payload(p)
    assert (
        c.workspace_uuid, c.repository_uuid, c.pipeline_uuid, c.step_uuid,
        c.deployment_environment_uuid, c.branch_name, c.subject, c.issuer, c.audience,
    ) == ("w", "r", "p", "s", "e", "b", "sub", "iss", ("a1", "a2"))
    assert c.issued_at == datetime.fromtimestamp(1_700_000_001, UTC)
    assert c.expires_at == datetime.fromtimestamp(1_700_000_002, UTC)
    assert set(c.raw) == set(p)
    assert c.raw["aud"] == ("a1", "a2")  # frozen: lists become tuples


def test_from_payload_builds_claims_by_keyword() -> None:
    # By keyword, reordering the dataclass's fields cannot swap claims.
    import ast
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(PipelineClaims.from_payload))
    calls = [
        n for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "cls"
    ]
    assert len(calls) == 1
    assert calls[0].args == []
    assert {k.arg for k in calls[0].keywords} == {f.name for f in dataclasses.fields(PipelineClaims)}


# -- check_claims: the claims layer, one check per claim ---------------------------------

NOW = 1_700_000_100.0


def checked(p: dict[str, Any], *, pin: str | None = None, now: float = NOW) -> None:
    from bbverify.claims import check_claims

    check_claims(p, audiences=frozenset({AUD}), workspace_uuid=pin, now=now, leeway=10.0)


def test_check_claims_admits_a_genuine_payload_and_leaves_it_unchanged() -> None:
    p = payload()
    before = dict(p)
    checked(p, pin=WS)
    assert p == before


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"aud": None}, "missing_claim"),
        ({"aud": "someone-else"}, "audience_mismatch"),
        ({"aud": [1]}, "malformed"),
        ({"exp": 1_700_000_000 - 1}, "invalid_claim"),
        ({"exp": True}, "malformed"),
        ({"exp": 1_700_000_050}, "expired"),
        ({"iat": 1_700_000_500, "exp": 1_700_003_600}, "not_yet_valid"),
        ({"nbf": 1_700_000_500}, "not_yet_valid"),
        ({"stepUuid": None}, "missing_claim"),
        ({"stepUuid": ""}, "malformed"),
        ({"branchName": 7}, "malformed"),
        ({"sub": f"{REPO}:{ENV}:{STEP}"}, "subject_mismatch"),
    ],
)
def test_check_claims_refuses_each_claim_with_its_code(over: dict[str, Any], code: str) -> None:
    p = payload(**over)
    if over.get("aud", 0) is None or over.get("stepUuid", 0) is None:
        p = {k: v for k, v in p.items() if v is not None}
    with pytest.raises(InvalidToken) as exc:
        checked(p)
    assert exc.value.code == code


def test_check_claims_pins_the_workspace_in_any_spelling_of_the_token() -> None:
    checked(payload(workspaceUuid=WS.upper()), pin=WS)
    with pytest.raises(InvalidToken) as exc:
        checked(payload(), pin="{" + "9" * 8 + U[8:] + "}")
    assert exc.value.code == "workspace_mismatch"


def test_recheck_times_checks_only_the_times() -> None:
    from bbverify.claims import recheck_times

    p = payload(aud="not checked here")
    recheck_times(p, now=NOW, leeway=10.0)
    with pytest.raises(InvalidToken) as exc:
        recheck_times(p, now=1_700_003_610.0, leeway=10.0)
    assert exc.value.code == "expired"
