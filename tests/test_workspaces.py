"""Several workspaces in one Verifier, and plausibility before any key fetch (issues 13 and 14)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from clock import FakeClock

from bbverify import (
    ConfigurationError,
    InvalidToken,
    PolicyDenied,
    Verifier,
    WorkspaceSpec,
    bitbucket_issuer,
)
from bbverify.keys import RemoteKeySet, StaticKeySet
from bbverify.policies import Branches, Repositories
from bbverify.testing import FakeIssuer

NOW = float(int(time.time()))
FAST: dict[str, Any] = {"timeout": 2.0, "failure_backoff": 0.1, "cooldown": 0.0}


@pytest.fixture(scope="module")
def a() -> Iterator[FakeIssuer]:
    with FakeIssuer("alpha") as fake:
        yield fake


@pytest.fixture(scope="module")
def b() -> Iterator[FakeIssuer]:
    with FakeIssuer("beta") as fake:
        yield fake


def spec(fake: FakeIssuer, **options: Any) -> WorkspaceSpec:
    options.setdefault("issuer", fake.issuer)
    options.setdefault("audience", fake.audience)
    options.setdefault("workspace_uuid", fake.workspace_uuid)
    return WorkspaceSpec(**options)


def two(a: FakeIssuer, b: FakeIssuer, **options: Any) -> Verifier:
    options.setdefault("clock", FakeClock(NOW))
    return Verifier(workspaces=[spec(a, name="alpha"), spec(b, name="beta")], **{**FAST, **options})


def counts(*fakes: FakeIssuer) -> list[tuple[int, int]]:
    return [(f.jwks_requests, f.discovery_requests) for f in fakes]


def refused(verifier: Verifier, token: str, code: str) -> None:
    with pytest.raises(InvalidToken) as exc:
        verifier.verify(token)
    assert exc.value.code == code, exc.value


# -- picking the workspace --------------------------------------------------------------------


def test_tokens_of_either_workspace_are_accepted(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)
    assert v.verify(a.mint(issued_at=NOW)).workspace_uuid == a.workspace_uuid
    assert v.verify(b.mint(issued_at=NOW)).workspace_uuid == b.workspace_uuid
    assert v.issuers == (a.issuer, b.issuer)
    assert [w.name for w in v.workspaces] == ["alpha", "beta"]


def test_async_path_picks_the_workspace_too(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)

    async def both() -> list[str]:
        return [(await v.averify(f.mint(issued_at=NOW))).workspace_uuid for f in (a, b)]

    assert asyncio.run(both()) == [a.workspace_uuid, b.workspace_uuid]


def test_b_key_claiming_a_issuer_is_refused(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)
    forged = b.sign(a.claims(issued_at=NOW))  # A's claims, B's key (B's kid)
    refused(v, forged, "unknown_key")
    # Even under a kid A publishes, B's key cannot vouch for A's issuer.
    same_kid = b.sign(a.claims(issued_at=NOW), header={"kid": a.signing_key.kid})
    refused(v, same_kid, "bad_signature")


def test_each_workspace_has_its_own_key_source(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)
    ka, kb = v.key_source(a.issuer), v.key_source(b.issuer)
    assert isinstance(ka, RemoteKeySet) and isinstance(kb, RemoteKeySet)
    assert ka is not kb
    before = counts(a, b)
    v.verify(a.mint(issued_at=NOW))
    after = counts(a, b)
    assert after[1] == before[1], "a token of A fetched B's keys"
    assert after[0] != before[0]
    with pytest.raises(KeyError):
        v.key_source("https://elsewhere.example/oidc")


def test_other_issuer_costs_no_fetch(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)
    with FakeIssuer("gamma") as c:
        before = counts(a, b, c)
        refused(v, c.mint(issued_at=NOW), "issuer_mismatch")
        for lookalike in (a.issuer + "/", a.issuer.upper(), bitbucket_issuer("alpha")):
            refused(v, a.sign(a.claims(issued_at=NOW, extra={"iss": lookalike})), "issuer_mismatch")
        refused(v, a.sign(a.claims(issued_at=NOW, extra={"iss": [a.issuer]})), "issuer_mismatch")
        refused(v, a.sign(a.claims(issued_at=NOW, drop=["iss"])), "missing_claim")
        assert counts(a, b, c) == before


def test_swapped_audiences_are_refused(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)
    refused(v, a.mint(issued_at=NOW, audience=b.audience), "audience_mismatch")
    refused(v, b.mint(issued_at=NOW, audience=a.audience), "audience_mismatch")


def test_workspace_uuid_pin_is_per_workspace(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)
    token = a.mint(issued_at=NOW, extra={"workspaceUuid": b.workspace_uuid})
    refused(v, token, "workspace_mismatch")


def test_workspace_rules_apply_to_its_own_tokens_only(a: FakeIssuer, b: FakeIssuer) -> None:
    v = Verifier(
        workspaces=[spec(a, policies=[Branches("main")]), spec(b, policies=Repositories(b.repository_uuid))],
        policies=[Branches("main", "dev")],
        clock=FakeClock(NOW),
        **FAST,
    )
    assert v.verify(a.mint(issued_at=NOW, branch="main"))
    with pytest.raises(PolicyDenied) as exc:
        v.verify(a.mint(issued_at=NOW, branch="dev"))  # A's own rule
    assert exc.value.code == "branch_not_allowed"
    assert v.verify(b.mint(issued_at=NOW, branch="dev"))  # B has no branch rule of its own
    with pytest.raises(PolicyDenied) as exc:
        v.verify(b.mint(issued_at=NOW, branch="feature"))  # the base rule applies to both
    assert exc.value.code == "branch_not_allowed"
    with pytest.raises(PolicyDenied) as exc:
        v.verify(b.mint(issued_at=NOW, repository_uuid=a.repository_uuid))
    assert exc.value.code == "repository_not_allowed"


def test_cached_token_still_passes_its_workspace_rules(a: FakeIssuer, b: FakeIssuer) -> None:
    v = Verifier(workspaces=[spec(a), spec(b, policies=Branches("main"))], clock=FakeClock(NOW), **FAST)
    token = b.mint(issued_at=NOW, branch="dev")
    for _ in range(2):  # the second call is served from the token cache
        with pytest.raises(PolicyDenied):
            v.verify(token)
    good = b.mint(issued_at=NOW)
    assert v.verify(good) == v.verify(good)
    assert v.cache_info()["tokens"] >= 1


def test_static_keys_per_workspace(a: FakeIssuer, b: FakeIssuer) -> None:
    v = Verifier(
        workspaces=[spec(a, keys=StaticKeySet(a.jwks())), spec(b, keys=StaticKeySet(b.jwks()))],
        clock=FakeClock(NOW),
    )
    before = counts(a, b)
    assert v.verify(a.mint(issued_at=NOW)) and v.verify(b.mint(issued_at=NOW))
    refused(v, b.sign(a.claims(issued_at=NOW)), "unknown_key")
    assert counts(a, b) == before


def test_one_key_source_cannot_serve_two_workspaces(a: FakeIssuer, b: FakeIssuer) -> None:
    shared = StaticKeySet({"keys": a.jwks()["keys"] + b.jwks()["keys"]})
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspaces=[spec(a, keys=shared), spec(b, keys=shared)])
    assert exc.value.key == "workspaces[1].keys"


def test_warm_up_fetches_every_workspace(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)
    before = counts(a, b)
    v.warm_up()
    after = counts(a, b)
    assert after[0] != before[0] and after[1] != before[1]


# -- construction -------------------------------------------------------------------------------


def test_single_workspace_view_is_unchanged(a: FakeIssuer) -> None:
    v = a.verifier()
    assert v.issuer == a.issuer and v.audiences == {a.audience}
    assert isinstance(v.keys, RemoteKeySet)
    assert [w.name for w in v.workspaces] == [a.issuer]
    assert Verifier(workspace="acme", audience="x").workspaces[0].name == "acme"


def test_several_workspaces_have_no_single_issuer(a: FakeIssuer, b: FakeIssuer) -> None:
    v = two(a, b)
    for attr in ("issuer", "audiences", "keys", "workspace_uuid"):
        with pytest.raises(AttributeError, match="2 workspaces"):
            getattr(v, attr)
    assert getattr(v, "issuer", None) is None


def test_mappings_are_accepted_as_specs(a: FakeIssuer, b: FakeIssuer) -> None:
    v = Verifier(
        workspaces=[{"issuer": a.issuer, "audience": a.audience}, {"workspace": "acme", "audience": "x"}]
    )
    assert v.issuers == (a.issuer, bitbucket_issuer("acme"))


@pytest.mark.parametrize(
    ("workspaces", "extra", "key"),
    [
        ([], {}, "workspaces"),
        ("acme", {}, "workspaces"),
        ({"workspace": "acme"}, {}, "workspaces"),
        ([{"workspace": "acme", "audience": "x"}, 3], {}, "workspaces[1]"),
        ([{"workspace": "acme"}], {}, "workspaces[0].audience"),
        ([{"workspace": "acme", "audience": "x", "audiance": "y"}], {}, "workspaces[0]"),
        (
            [{"workspace": "acme", "audience": "x", "workspace_uuid": "nope"}],
            {},
            "workspaces[0].workspace_uuid",
        ),
        (
            [{"workspace": "acme", "audience": "x"}, {"workspace": "ACME", "audience": "y", "name": "other"}],
            {},
            "workspaces[1].issuer",
        ),
        (
            [{"workspace": "acme", "audience": "x"}, {"workspace": "beta", "audience": "y", "name": "acme"}],
            {},
            "workspaces[1].name",
        ),
        ([{"workspace": "acme", "audience": "x", "name": " bad"}], {}, "workspaces[0].name"),
        ([{"workspace": "acme", "audience": "x", "jwks_url": "ftp://x"}], {}, "workspaces[0].jwks_url"),
        ([{"workspace": "acme", "audience": "x"}], {"audience": "x"}, "audience"),
        ([{"workspace": "acme", "audience": "x"}], {"workspace": "acme"}, "workspace"),
        ([{"workspace": "acme", "audience": "x"}], {"timeout": 0}, "timeout"),
    ],
)
def test_bad_workspaces_fail_at_construction(workspaces: Any, extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        Verifier(workspaces=workspaces, **extra)
    assert exc.value.key == key, exc.value


# -- plausibility before any fetch (issue 13, item 1) ------------------------------------------------


def fresh_single(fake: FakeIssuer) -> Verifier:
    return fake.verifier(clock=FakeClock(NOW), **FAST)


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        (
            {
                "extra": {
                    "iss": "https://api.bitbucket.org/2.0/workspaces/other/pipelines-config/identity/oidc"
                }
            },
            "issuer_mismatch",
        ),
        ({"audience": "ari:cloud:bitbucket::workspace/someone-else"}, "audience_mismatch"),
        ({"extra": {"aud": 7}}, "malformed"),
        ({"issued_at": NOW - 7200, "lifetime": 3600}, "expired"),
        ({"issued_at": NOW + 3600}, "not_yet_valid"),
        ({"drop": ["exp"]}, "missing_claim"),
        ({"drop": ["repositoryUuid"]}, "missing_claim"),
        ({"drop": ["stepUuid"]}, "missing_claim"),
        ({"extra": {"workspaceUuid": ""}}, "malformed"),
        ({"drop": ["sub"]}, "missing_claim"),
    ],
)
def test_implausible_tokens_with_unknown_kid_fetch_nothing(
    a: FakeIssuer, claims: dict[str, Any], code: str
) -> None:
    v = fresh_single(a)
    claims.setdefault("issued_at", NOW)
    token = a.sign(a.claims(**claims), header={"kid": "never-published"})
    before = counts(a)
    for _ in range(3):
        refused(v, token, code)
    assert counts(a) == before


def test_plausible_token_with_unknown_kid_may_fetch(a: FakeIssuer) -> None:
    v = fresh_single(a)
    before = counts(a)
    refused(v, a.sign(a.claims(issued_at=NOW), header={"kid": "never-published"}), "unknown_key")
    assert counts(a)[0][0] > before[0][0]


def test_full_checks_still_run_after_the_signature(a: FakeIssuer) -> None:
    # Plausible but inconsistent: the sub check and the pin only run after the signature.
    v = a.verifier(clock=FakeClock(NOW), workspace_uuid=a.workspace_uuid, **FAST)
    refused(v, a.sign(a.claims(issued_at=NOW, extra={"sub": "x"})), "subject_mismatch")
    refused(v, a.mint(issued_at=NOW, extra={"nbf": NOW + 3600}), "not_yet_valid")
    refused(
        v,
        a.mint(issued_at=NOW, extra={"workspaceUuid": "{00000000-0000-4000-8000-000000000000}"}),
        "workspace_mismatch",
    )


def test_expiry_is_checked_again_after_a_slow_key_fetch(a: FakeIssuer) -> None:
    # The clock moves past exp while the keys are being fetched: the token is refused.
    times = iter([NOW, NOW + 4000.0])
    v = a.verifier(clock=lambda: next(times, NOW + 4000.0), **FAST)
    refused(v, a.mint(issued_at=NOW, lifetime=3600), "expired")


# -- several workspaces in configuration --------------------------------------------------------------


def test_workspaces_from_toml(tmp_path: Any, a: FakeIssuer, b: FakeIssuer) -> None:
    from bbverify.config import verifier_from_toml

    path = tmp_path / "bbverify.toml"
    path.write_text(
        f"""
[bbverify]
timeout = 2

[[bbverify.workspaces]]
name = "alpha"
issuer = "{a.issuer}"
workspace_uuid = "{a.workspace_uuid}"

[[bbverify.workspaces]]
issuer = "{b.issuer}"
audience = ["{b.audience}"]
rules = {{ branches = ["main"] }}
"""
    )
    v = verifier_from_toml(path, clock=FakeClock(NOW))
    assert [w.name for w in v.workspaces] == ["alpha", b.issuer]
    assert v.verify(a.mint(issued_at=NOW, branch="dev"))
    assert v.verify(b.mint(issued_at=NOW))
    with pytest.raises(PolicyDenied):
        v.verify(b.mint(issued_at=NOW, branch="dev"))


def test_workspaces_from_env_json(a: FakeIssuer, b: FakeIssuer) -> None:
    import json

    from bbverify.config import verifier_from_env

    items = [{"issuer": f.issuer, "audience": f.audience} for f in (a, b)]
    v = verifier_from_env({"BBVERIFY_WORKSPACE_LIST": json.dumps(items)}, clock=FakeClock(NOW))
    assert v.issuers == (a.issuer, b.issuer)
    assert v.verify(b.mint(issued_at=NOW))
    flask_like = {"BBVERIFY_WORKSPACE_LIST": items}  # a Flask config may hold Python values
    assert verifier_from_env(flask_like).issuers == (a.issuer, b.issuer)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"workspaces": []}, "workspaces"),
        ({"workspaces": {"workspace": "acme"}}, "workspaces"),
        ({"workspaces": ["acme"]}, "workspaces[0]"),
        ({"workspaces": [{"workspace": "acme", "audiance": "x"}]}, "workspaces[0].audiance"),
        (
            {"workspaces": [{"workspace": "acme", "audience": "x"}, {"workspace": "b"}]},
            "workspaces[1].audience",
        ),
        ({"workspaces": [{"workspace": "acme", "audience": 3}]}, "workspaces[0].audience"),
        ({"workspaces": [{"workspace": "a/b", "audience": "x"}]}, "workspaces[0].workspace"),
        ({"workspaces": [{"workspace": "acme", "audience": "x", "name": 3}]}, "workspaces[0].name"),
        (
            {"workspaces": [{"workspace": "acme", "audience": "x", "rules": {"branches": [" x"]}}]},
            "workspaces[0].rules.branches[0]",
        ),
        (
            {"workspaces": [{"workspace": "acme", "audience": "x", "rules": {"brnaches": ["x"]}}]},
            "workspaces[0].rules.brnaches",
        ),
        (
            {"workspaces": [{"workspace": "acme", "audience": "x", "jwks_url": "http://example.com/k"}]},
            "workspaces[0].jwks_url",
        ),
        ({"workspaces": [{"workspace": "acme", "audience": "x"}], "audience": "y"}, "audience"),
        (
            {
                "workspaces": [{"workspace": "acme", "audience": "x"}],
                "policies": {"p": {"allow": [{"workspace": ["beta"]}]}},
            },
            "policies.p.allow[0].workspace[0]",
        ),
    ],
)
def test_workspace_mistakes_name_the_key_path(table: dict[str, Any], key: str) -> None:
    from bbverify.config import verifier_from_mapping

    with pytest.raises(ConfigurationError) as exc:
        verifier_from_mapping(table)
    assert exc.value.key == key, exc.value


def test_env_workspace_mistakes_name_the_variable() -> None:
    from bbverify.config import verifier_from_env

    for raw, key in [
        ("not json", "BBVERIFY_WORKSPACE_LIST"),
        ('{"workspace": "acme"}', "BBVERIFY_WORKSPACE_LIST"),
        ('[{"workspace": "acme"}]', "BBVERIFY_WORKSPACE_LIST[0].audience"),
    ]:
        with pytest.raises(ConfigurationError) as exc:
            verifier_from_env({"BBVERIFY_WORKSPACE_LIST": raw})
        assert exc.value.key == key, exc.value


# -- decisions record the workspace ---------------------------------------------------------------------


def test_decisions_name_the_workspace_and_policy(
    a: FakeIssuer, b: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    from bbverify import Decision

    seen: list[Decision] = []
    v = Verifier(
        workspaces=[spec(a, name="alpha"), spec(b, name="beta")],
        named_policies={"main-only": Branches("main")},
        on_decision=seen.append,
        clock=FakeClock(NOW),
        **FAST,
    )
    good = b.mint(issued_at=NOW)
    v.verify(a.mint(issued_at=NOW))
    with caplog.at_level("INFO", logger="bbverify.audit"):
        v.verify(good)
        v.verify(good)  # cached: still a full decision
    with pytest.raises(PolicyDenied):
        v.verify(b.mint(issued_at=NOW, branch="dev"), policy="main-only")
    with pytest.raises(InvalidToken):
        v.verify(b.sign(a.claims(issued_at=NOW), header={"kid": a.signing_key.kid}))  # bad signature
    with FakeIssuer("gamma") as c, pytest.raises(InvalidToken):
        v.verify(c.mint(issued_at=NOW))
    got = [(d.allowed, d.code, d.workspace_name, d.issuer, d.policy) for d in seen]
    assert got == [
        (True, "ok", "alpha", a.issuer, None),
        (True, "ok", "beta", b.issuer, None),
        (True, "ok", "beta", b.issuer, None),
        (False, "branch_not_allowed", "beta", b.issuer, "main-only"),
        (False, "bad_signature", "alpha", a.issuer, None),
        (False, "issuer_mismatch", None, None, None),
    ]
    records = [r for r in caplog.records if r.name == "bbverify.audit" and r.levelname == "INFO"]
    assert len(records) == 2 and all("workspace=beta" in r.getMessage() for r in records)
    assert records[0].bbverify["issuer"] == b.issuer  # type: ignore[attr-defined]
