"""Rules fail closed: composition (``not_``, ``any_of``) never inverts an undecided denial into
an admit, and a rule admits only by returning ``None`` or ``True`` (an ``async def`` rule's
coroutine, a truthy value or a crash deny with ``policy_error``).

Regression tests from the adversarial review (each failed before its fix).
"""

from __future__ import annotations

from typing import Any

import pytest

from bbverify import PolicyDenied
from bbverify.errors import VerificationError
from bbverify.policies import Branches, IPRanges, RequestContext, any_of, apply_rules, not_
from bbverify.testing import FakeIssuer


def test_not_of_any_of_does_not_turn_an_unknown_client_ip_into_admit(issuer: FakeIssuer) -> None:
    # "Deny callers from the blocked range or from branch evil": with the client IP
    # unknown, any_of used to deny with plain policy_denied, which not_ inverted to admit.
    blocked = not_(any_of(IPRanges(["203.0.113.0/24"]), Branches("evil")))
    verifier = issuer.verifier(policies=[blocked])
    token = issuer.mint(branch="main")
    with pytest.raises(PolicyDenied) as info:
        verifier.verify(token, client_ip=None)
    assert info.value.code == "client_ip_unknown"
    with pytest.raises(PolicyDenied) as info:
        verifier.verify(token, client_ip="not-an-ip")
    assert info.value.code == "client_ip_invalid"
    # A decided answer still inverts as before.
    assert verifier.verify(token, client_ip="198.51.100.7").branch_name == "main"
    with pytest.raises(PolicyDenied):
        verifier.verify(token, client_ip="203.0.113.9")


def test_not_of_any_of_does_not_turn_a_crashing_rule_into_admit(issuer: FakeIssuer) -> None:
    def broken(claims: Any, context: RequestContext) -> None:
        raise KeyError("bug")

    verifier = issuer.verifier(policies=[not_(any_of(broken, Branches("evil")))])
    with pytest.raises(PolicyDenied) as info:
        verifier.verify(issuer.mint(branch="main"))
    assert info.value.code == "policy_error"


def test_an_async_rule_is_not_an_admit(issuer: FakeIssuer) -> None:
    # An ``async def`` rule returns a coroutine, which is neither None, True nor
    # False; it used to count as "allow" whatever the rule would have decided.
    async def deny_all(claims: Any, context: RequestContext) -> bool:
        return False

    verifier = issuer.verifier(policies=[deny_all])
    with pytest.raises(PolicyDenied) as info:
        verifier.verify(issuer.mint())
    assert info.value.code == "policy_error"


@pytest.mark.parametrize("result", [0, "", [], "no", 1, object()])
def test_rules_admit_only_with_none_or_true(issuer: FakeIssuer, result: object) -> None:
    claims = issuer.verifier().verify(issuer.mint())
    with pytest.raises(PolicyDenied) as info:
        apply_rules([lambda c, ctx: result], claims, RequestContext("192.0.2.1", 0.0))
    assert info.value.code == "policy_error"
    apply_rules([lambda c, ctx: None, lambda c, ctx: True], claims, RequestContext("192.0.2.1", 0.0))


# -- f12: settings built into the workspaces are read-only --------------------------------


def test_verifier_rule_settings_are_read_only(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(policies=[Branches("main")], named_policies={"deploy": Branches("main")},
                               default_policy="deploy")  # fmt: skip
    for name, value in [("policies", ()), ("default_policy", None), ("named_policies", {}),
                        ("workspaces", ()), ("algorithms", frozenset({"RS256"}))]:  # fmt: skip
        with pytest.raises(AttributeError):
            setattr(verifier, name, value)
    with pytest.raises(TypeError):
        verifier.named_policies["open"] = ()  # type: ignore[index]
    assert verifier.policies == (verifier.policies[0],) and verifier.default_policy == "deploy"
    with pytest.raises(VerificationError) as caught:
        verifier.verify(issuer.mint(branch="dev"))
    assert caught.value.code == "branch_not_allowed"
