"""Access rules that run after the token checks, on every call.

A rule is any callable ``rule(claims, context)``. It allows by returning
``None`` or ``True`` and denies by raising :class:`~bbverify.errors.PolicyDenied`
(or by returning ``False``, which denies with code ``policy_denied``). Any
other exception a user rule raises also denies: bbverify fails closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from .claims import PipelineClaims
from .errors import PolicyDenied

__all__ = ["RequestContext", "Rule", "apply_rules", "rule_name"]

_log = logging.getLogger("bbverify.policies")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a rule may know about the request besides the token.

    ``client_ip`` is the address the adapter resolved (the socket peer, or
    the trusted-proxy walk of ``X-Forwarded-For``); ``None`` when unknown.
    ``now`` is the verifier's clock, in seconds since the epoch.
    """

    client_ip: str | None
    now: float
    method: str | None = None
    path: str | None = None


Rule: TypeAlias = Callable[[PipelineClaims, RequestContext], object]


def rule_name(rule: object) -> str:
    """A short human name for a rule, used in denials and audit records."""
    name = getattr(rule, "name", None)
    if isinstance(name, str):
        return name
    return getattr(rule, "__qualname__", None) or type(rule).__name__


def apply_rules(rules: Iterable[Rule], claims: PipelineClaims, context: RequestContext) -> None:
    """Run ``rules`` in order (all must allow); raise ``PolicyDenied`` on the first denial."""
    for rule in rules:
        check_rule(rule, claims, context)


def check_rule(rule: Rule, claims: PipelineClaims, context: RequestContext) -> None:
    """Run one rule, turning ``False`` and stray exceptions into ``PolicyDenied``."""
    try:
        result = rule(claims, context)
    except PolicyDenied:
        raise
    except Exception as exc:
        # A buggy user rule must not let a request through, nor crash the app.
        _log.exception("rule %s raised; denying", rule_name(rule))
        raise PolicyDenied(
            f"rule {rule_name(rule)} failed with {type(exc).__name__}; denied to fail closed",
            code="policy_error",
            rule=rule_name(rule),
        ) from None
    if result is False:
        raise PolicyDenied(
            f"rule {rule_name(rule)} returned False", code="policy_denied", rule=rule_name(rule)
        )


def as_rules(rules: Rule | Sequence[Rule] | None) -> tuple[Rule, ...]:
    """Normalise ``None``, one rule, or a sequence of rules to a tuple."""
    if rules is None:
        return ()
    if callable(rules):
        return (rules,)
    return tuple(rules)
