"""Configuration fails closed: a misspelt rule variable or an empty pinned workspace UUID is
refused at start-up, never silently dropped.

Regression tests from the adversarial review (each failed before its fix), and from the
core review (ids f04 ... f13 in the section titles): feeds or proxy lists that cover every
address, non-ASCII hop counts, contradictory or ambiguous key URLs, workspace names that
stand for another workspace, duplicate JSON members in environment settings.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from bbverify import Verifier, WorkspaceSpec
from bbverify.config import rules_from_env, verifier_from_env, verifier_from_mapping
from bbverify.errors import ConfigurationError
from bbverify.http import TrustedProxies
from bbverify.ipranges import FeedError, catch_all_versions, parse_feed
from bbverify.keys import StaticKeySet
from bbverify.testing import FakeIssuer
from bbverify.token import loads_strict


def test_rules_from_env_refuses_a_misspelt_rule_setting() -> None:
    # A typo must never silently drop a rule (verifier_from_env already refuses it).
    with pytest.raises(ConfigurationError) as info:
        rules_from_env({"BBVERIFY_REPOSITORYS": "{7c2e0f8e-9c56-4c1a-9d2b-0d3f1d1c7a11}"})
    assert info.value.key == "BBVERIFY_REPOSITORYS"
    # Verifier settings are still allowed (and ignored) there.
    assert len(rules_from_env({"BBVERIFY_BRANCHES": "main", "BBVERIFY_WORKSPACE": "acme"})) == 1


def test_empty_workspace_uuid_is_refused_not_ignored(issuer: FakeIssuer) -> None:
    # workspace_uuid="" (an unset variable read with a default) used to drop the pin silently.
    with pytest.raises(ConfigurationError) as info:
        Verifier(issuer=issuer.issuer, audience=issuer.audience, workspace_uuid="")
    assert info.value.key == "workspace_uuid"


U1 = "{0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00}"
U2 = "{7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d}"


# -- f04: feed items that together cover everything ----------------------------------------


def _feed(*cidrs: str) -> dict[str, Any]:
    return {"items": [{"cidr": c, "product": ["bitbucket"], "direction": ["egress"]} for c in cidrs]}


@pytest.mark.parametrize(
    "cidrs",
    [
        ("0.0.0.0/1", "128.0.0.0/1"),
        ("::/1", "8000::/1", "203.0.113.0/24"),
        ("0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/3"),
        ("::ffff:0.0.0.0/97", "::ffff:128.0.0.0/97"),  # IPv4-mapped halves are IPv4 halves
    ],
)
def test_split_catch_all_feed_is_refused(cidrs: tuple[str, ...]) -> None:
    with pytest.raises(FeedError, match="together cover every"):
        parse_feed(_feed(*cidrs))


def test_near_catch_all_feed_is_used() -> None:
    # One address short of everything is not everything: the check is exact.
    ranges = parse_feed(_feed("0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/4", "240.0.0.0/5",
                              "248.0.0.0/6", "252.0.0.0/7", "254.0.0.0/8", "255.0.0.0/9")).ranges
    assert ipaddress.ip_address("8.8.8.8") in ranges
    assert catch_all_versions(ranges.networks) == ()


def test_one_check_for_feed_and_trusted_proxies() -> None:
    halves = [ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1")]
    assert catch_all_versions(halves) == (6,)
    with pytest.raises(ConfigurationError, match="every IPv6 address"):
        TrustedProxies.parse(["::/1", "8000::/1"])


# -- f06: hop counts are ASCII digits ---------------------------------------------------


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "\uff13", "1\u00b2"])
def test_non_ascii_digits_are_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TrustedProxies.parse(text)
    assert caught.value.key == "trusted_proxies"
    with pytest.raises(ConfigurationError):
        verifier_from_env({"BBVERIFY_ISSUER": "https://issuer.example", "BBVERIFY_AUDIENCE": "a",
                           "BBVERIFY_TRUSTED_PROXIES": text})  # fmt: skip


def test_ascii_hop_count_still_works() -> None:
    parsed = TrustedProxies.parse(" 3 ")
    assert parsed is not None and parsed.hops == 3


# -- f07: keys= and jwks_url= contradict each other -------------------------------------


def test_keys_and_jwks_url_together_refused(issuer: FakeIssuer) -> None:
    keys = StaticKeySet(issuer.jwks())
    with pytest.raises(ConfigurationError) as caught:
        issuer.verifier(keys=keys, jwks_url=issuer.issuer + "/keys.json")
    assert caught.value.key == "jwks_url"
    with pytest.raises(ConfigurationError) as caught:
        Verifier(workspaces=[{"issuer": issuer.issuer, "audience": "a", "keys": keys,
                              "jwks_url": issuer.issuer + "/keys.json"}])  # fmt: skip
    assert caught.value.key == "workspaces[0].jwks_url"


@pytest.mark.parametrize("url", ["not a url at all", "http://keys.example/keys.json", "ftp://x/y", ""])
def test_jwks_url_always_validated(issuer: FakeIssuer, url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        WorkspaceSpec(issuer=issuer.issuer, audience="a", jwks_url=url)
    assert caught.value.key == "jwks_url"


def test_loopback_jwks_url_alone_works(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(jwks_url=issuer.issuer + "/keys.json")
    assert verifier.verify(issuer.mint()).repository_uuid == issuer.repository_uuid


# -- f10: a workspace name may not stand for another workspace -------------------------------


def test_name_equal_to_another_slug_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        verifier_from_mapping({
            "workspaces": [{"workspace": "acme-sandbox", "name": "acme", "workspace_uuid": U1},
                           {"workspace": "acme", "name": "prod", "workspace_uuid": U2}],
            "policies": {"deploy": {"allow": [{"workspace": ["acme"]}]}},
        })  # fmt: skip
    assert caught.value.key == "workspaces[0].name"


def test_name_equal_to_another_issuer_is_refused() -> None:
    other = "https://issuer.example/oidc"
    with pytest.raises(ConfigurationError, match="slug or issuer of workspaces"):
        Verifier(workspaces=[WorkspaceSpec(issuer=other, audience="a", name="a"),
                             WorkspaceSpec(workspace="acme", audience="a", name=other)])  # fmt: skip


def test_own_slug_and_distinct_names_are_fine() -> None:
    verifier = Verifier(
        workspaces=[
            WorkspaceSpec(workspace="acme", audience="a", name="acme"),
            WorkspaceSpec(workspace="acme-sandbox", audience="a", name="sandbox"),
        ]
    )
    assert [w.name for w in verifier.workspaces] == ["acme", "sandbox"]
    assert [w.slug for w in verifier.workspaces] == ["acme", "acme-sandbox"]


# -- f11: the host judged is the host connected to ------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example\\@127.0.0.1/keys.json",
        "http://evil.example@127.0.0.1/keys.json",
        "http://user:pw@127.0.0.1/keys.json",
        "http://127.0.0.1\\.evil.example/keys.json",
        "http://127.0.0.1 /keys.json",
        "https://ex\u00e4mple.org/keys.json",
    ],
)
def test_ambiguous_fetch_urls_refused(url: str) -> None:
    from bbverify.fetch import check_fetch_url

    with pytest.raises(ConfigurationError) as caught:
        check_fetch_url(url, "jwks_url")
    assert caught.value.key == "jwks_url"
    assert check_fetch_url("http://127.0.0.1:8080/keys.json") and check_fetch_url("https://[::1]/k")


# -- f13: strict JSON in environment settings -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BBVERIFY_POLICIES",
         '{"deploy": {"allow": [{"branches": ["main"]}]}, "deploy": {"allow": [{"branches": ["*"]}]}}'),
        ("BBVERIFY_POLICIES", '{"deploy": {"allow": [{"branches": ["main"], "branches": ["*"]}]}}'),
        ("BBVERIFY_WORKSPACE_LIST",
         f'[{{"workspace": "acme", "workspace_uuid": "{U1}", "workspace_uuid": "{U2}"}}]'),
        ("BBVERIFY_POLICIES", '{"deploy": {"allow": [{"max_step_minutes": NaN}]}}'),
    ],
)  # fmt: skip
def test_duplicate_members_in_env_json_refused(name: str, value: str) -> None:
    env = {"BBVERIFY_WORKSPACE": "acme", "BBVERIFY_WORKSPACE_UUID": U1, name: value}
    if name == "BBVERIFY_WORKSPACE_LIST":
        env = {name: value}
    with pytest.raises(ConfigurationError) as caught:
        verifier_from_env(env)
    assert caught.value.key == name


def test_strict_loader_keeps_valid_json() -> None:
    assert loads_strict('{"a": [1, 2.5, "x"], "b": {"c": null}}') == {"a": [1, 2.5, "x"], "b": {"c": None}}
    with pytest.raises(ValueError, match="duplicate"):
        loads_strict('{"a": 1, "a": 2}')
