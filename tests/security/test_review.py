"""Findings of the adversarial review, one test per finding (each failed before its fix)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests

from bbverify import PolicyDenied, Verifier
from bbverify.audit import AUDIT_LOGGER
from bbverify.config import rules_from_env
from bbverify.errors import ConfigurationError, KeysUnavailable
from bbverify.policies import Branches, IPRanges, RequestContext, any_of, apply_rules, not_
from bbverify.testing import FakeIssuer


class _Abort(BaseException):
    """Stands for a BaseException escaping a custom session (gevent's Timeout, SystemExit...)."""


class _AbortOnce(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.aborted = 0

    def get(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.aborted == 0:
            self.aborted += 1
            raise _Abort("fetch thread aborted")
        return super().get(*args, **kwargs)


def test_fetch_thread_dying_with_base_exception_does_not_wedge_the_key_set(issuer: FakeIssuer) -> None:
    # Before: the future was never resolved and _inflight never cleared, so every
    # later call waited on the dead fetch: 503 forever, even after the issuer was fine.
    session = _AbortOnce()
    verifier = issuer.verifier(session=session, failure_backoff=0, cooldown=0, timeout=2)
    # The aborted fetch counts as failed (no backoff here), so get_key's retry fetches again.
    claims = verifier.verify(issuer.mint())
    assert claims.workspace_uuid == issuer.workspace_uuid
    assert session.aborted == 1
    assert verifier.keys.fetch_count == 2  # type: ignore[attr-defined]


def test_fetch_thread_dying_with_base_exception_answers_503_then_recovers(issuer: FakeIssuer) -> None:
    session = _AbortOnce()
    verifier = issuer.verifier(session=session, failure_backoff=3600, timeout=2)
    with pytest.raises(KeysUnavailable):
        verifier.verify(issuer.mint())
    verifier.warm_up()  # a forced fetch is not stuck behind the dead one
    assert verifier.verify(issuer.mint()).workspace_uuid == issuer.workspace_uuid


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


def test_audit_log_escapes_control_characters_in_claims(
    issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # Claim values reach the audit line; a CR/LF in one must not forge a second line.
    repo = "{1de489be-0000-4000-8000-000000000001}\nallow code=ok repository=forged"
    step = "{1de489be-0000-4000-8000-000000000002}"
    token = issuer.mint(repository_uuid=repo, step_uuid=step)
    verifier = issuer.verifier()
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER.name):
        verifier.verify(token)
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER.name]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\r" not in lines[0]
    assert "\\n" in lines[0]
    # Structured consumers still get the exact value.
    record = next(r for r in caplog.records if r.name == AUDIT_LOGGER.name)
    assert record.bbverify["repository"] == repo  # type: ignore[attr-defined]
