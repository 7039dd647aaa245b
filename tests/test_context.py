"""The request context: one per request, the client IP parsed once, handed to the rules by the verifier."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

import pytest

import bbverify
from bbverify import PolicyDenied, Verifier
from bbverify.claims import PipelineClaims
from bbverify.context import RequestContext
from bbverify.policies import IPRanges
from bbverify.testing import FakeIssuer

NOW = float(int(time.time()))


@pytest.fixture(scope="module")
def fixed_verifier(issuer: FakeIssuer) -> Verifier:
    verifier = issuer.verifier(clock=lambda: NOW + 5)
    verifier.warm_up()
    return verifier


def test_policies_request_context_is_the_context_class() -> None:
    assert bbverify.policies.RequestContext is RequestContext
    assert bbverify.RequestContext is RequestContext
    assert "RequestContext" in bbverify.policies.__all__


def test_constructor_keeps_order_and_keywords() -> None:
    ctx = RequestContext("192.0.2.1", 12.0, "POST", "/deploy")
    assert (ctx.client_ip, ctx.now, ctx.method, ctx.path) == ("192.0.2.1", 12.0, "POST", "/deploy")
    assert ctx == RequestContext(client_ip="192.0.2.1", now=12.0, method="POST", path="/deploy")
    assert RequestContext("192.0.2.1", 1.0).method is None


def test_client_address_is_parsed_once_from_a_string() -> None:
    ctx = RequestContext("2001:db8::1", 0.0)
    assert ctx.client_address == ipaddress.IPv6Address("2001:db8::1")
    assert ctx.client_ip_error is None


def test_client_ip_accepts_an_address_object_and_keeps_the_text_form() -> None:
    address = ipaddress.ip_address("198.51.100.4")
    ctx = RequestContext(address, 0.0)
    assert ctx.client_ip == "198.51.100.4"
    assert ctx.client_address is address


def test_ipv4_mapped_address_object_becomes_ipv4() -> None:
    ctx = RequestContext(ipaddress.IPv6Address("::ffff:192.0.2.9"), 0.0)
    assert ctx.client_address == ipaddress.IPv4Address("192.0.2.9")
    assert RequestContext("::ffff:192.0.2.9", 0.0).client_address == ipaddress.IPv4Address("192.0.2.9")


@pytest.mark.parametrize("raw", ["fe80::1%eth0", "192.0.2.1:80", "junk", "", " 192.0.2.1"])
def test_malformed_client_ip_has_no_address_and_says_why(raw: str) -> None:
    ctx = RequestContext(raw, 0.0)
    assert ctx.client_address is None
    assert ctx.client_ip == raw
    assert isinstance(ctx.client_ip_error, str) and ctx.client_ip_error


def test_unknown_client_ip_is_neither_address_nor_error() -> None:
    ctx = RequestContext(None, 0.0)
    assert ctx.client_address is None and ctx.client_ip_error is None


def test_context_is_frozen_and_slotted() -> None:
    ctx = RequestContext("192.0.2.1", 0.0)
    with pytest.raises(AttributeError):
        ctx.client_ip = "192.0.2.2"  # type: ignore[misc]
    assert not hasattr(ctx, "__dict__")


def test_at_restamps_now_without_parsing_again() -> None:
    ctx = RequestContext("192.0.2.1", 0.0, "GET", "/x")
    later = ctx.at(99.0)
    assert later.now == 99.0 and ctx.now == 0.0
    assert later.client_address is ctx.client_address
    assert (later.client_ip, later.method, later.path) == ("192.0.2.1", "GET", "/x")
    assert ctx.at(0.0) is ctx


def test_ip_rule_reads_the_address_object() -> None:
    rule = IPRanges(["192.0.2.0/24"])
    claims: Any = object()
    rule(claims, RequestContext(ipaddress.ip_address("192.0.2.7"), 0.0))
    with pytest.raises(PolicyDenied) as exc:
        rule(claims, RequestContext(ipaddress.ip_address("198.51.100.1"), 0.0))
    assert exc.value.code == "ip_not_allowed"
    with pytest.raises(PolicyDenied) as exc:
        rule(claims, RequestContext("fe80::1%eth0", 0.0))
    assert exc.value.code == "client_ip_invalid" and "zone id" in exc.value.message
    with pytest.raises(PolicyDenied) as exc:
        rule(claims, RequestContext(None, 0.0))
    assert exc.value.code == "client_ip_unknown"


def test_verify_hands_the_adapter_context_to_rules_with_its_own_clock(
    fixed_verifier: Verifier, issuer: FakeIssuer
) -> None:
    seen: list[RequestContext] = []

    def rule(claims: PipelineClaims, context: RequestContext) -> None:
        seen.append(context)

    given = RequestContext(ipaddress.ip_address("203.0.113.7"), 1.0, "POST", "/d")
    fixed_verifier.verify(issuer.mint(issued_at=NOW), context=given, policies=rule)
    asyncio.run(fixed_verifier.averify(issuer.mint(issued_at=NOW), context=given, policies=rule))
    assert len(seen) == 2
    for ctx in seen:
        assert ctx.now == NOW + 5
        assert (ctx.client_ip, ctx.method, ctx.path) == ("203.0.113.7", "POST", "/d")
        assert ctx.client_address is given.client_address


def test_verify_refuses_context_together_with_keywords(fixed_verifier: Verifier, issuer: FakeIssuer) -> None:
    token = issuer.mint(issued_at=NOW)
    ctx = RequestContext("192.0.2.1", 0.0)
    for keywords in ({"client_ip": "192.0.2.1"}, {"method": "GET"}, {"path": "/"}):
        with pytest.raises(TypeError):
            fixed_verifier.verify(token, context=ctx, **keywords)
        with pytest.raises(TypeError):
            asyncio.run(fixed_verifier.averify(token, context=ctx, **keywords))
    with pytest.raises(TypeError):
        fixed_verifier.verify(token, context="192.0.2.1")  # type: ignore[arg-type]


def test_audit_decision_comes_from_the_context(fixed_verifier: Verifier, issuer: FakeIssuer) -> None:
    decisions: list[Any] = []
    verifier = issuer.verifier(clock=lambda: NOW + 5, on_decision=decisions.append)
    ctx = RequestContext(ipaddress.ip_address("203.0.113.8"), 0.0, "PUT", "/p")
    verifier.verify(issuer.mint(issued_at=NOW), context=ctx)
    with pytest.raises(PolicyDenied):
        verifier.verify(issuer.mint(issued_at=NOW), context=ctx, policies=IPRanges(["192.0.2.0/24"]))
    assert [(d.allowed, d.client_ip, d.method, d.path) for d in decisions] == [
        (True, "203.0.113.8", "PUT", "/p"),
        (False, "203.0.113.8", "PUT", "/p"),
    ]


def test_one_call_verify_takes_a_context(issuer: FakeIssuer) -> None:
    seen: list[RequestContext] = []
    ctx = RequestContext("203.0.113.9", 0.0, "GET", "/one")
    bbverify.verify(
        issuer.mint(),
        context=ctx,
        issuer=issuer.issuer,
        audience=issuer.audience,
        policies=lambda c, r: seen.append(r),
    )
    assert [(c.client_ip, c.method, c.path) for c in seen] == [("203.0.113.9", "GET", "/one")]


def test_audit_record_builds_the_decision_from_the_context() -> None:
    from bbverify.audit import Decision, record
    from bbverify.errors import ErrorCode, InvalidToken

    seen: list[Decision] = []
    ctx = RequestContext("203.0.113.10", 0.0, "GET", "/x")
    record(InvalidToken("no token", code=ErrorCode.MISSING_TOKEN), ctx, seen.append, policy="deploy")
    record(None, ctx, seen.append, workspace_name="acme", issuer="https://issuer.example")
    assert [(d.allowed, d.code, d.client_ip, d.method, d.path, d.policy, d.workspace_name) for d in seen] == [
        (False, "missing_token", "203.0.113.10", "GET", "/x", "deploy", None),
        (True, "ok", "203.0.113.10", "GET", "/x", None, "acme"),
    ]


@pytest.mark.parametrize("form", ["text", "object"])
def test_scoped_ipv6_is_refused_whichever_way_it_arrives(form: str) -> None:
    """A zone id makes the address unusable for IP rules, as text or as an ipaddress object."""
    raw = "fe80::1%eth0"
    client: Any = raw if form == "text" else ipaddress.IPv6Address(raw)
    ctx = RequestContext(client, NOW)
    assert ctx.client_address is None
    assert ctx.client_ip_error is not None and "zone id" in ctx.client_ip_error
    rule = IPRanges(["fe80::/10"])
    claims: Any = object()
    with pytest.raises(PolicyDenied) as denied:
        rule(claims, ctx)
    assert denied.value.code == "client_ip_invalid"


def test_dataclasses_replace_builds_a_new_context_and_parses_again() -> None:
    import dataclasses

    ctx = RequestContext("192.0.2.1", 1.0, "GET", "/a")
    moved = dataclasses.replace(ctx, client_ip="198.51.100.7", path="/b")
    assert moved.client_address == ipaddress.ip_address("198.51.100.7")
    assert (moved.client_ip, moved.now, moved.method, moved.path) == ("198.51.100.7", 1.0, "GET", "/b")
    assert dataclasses.replace(ctx, now=2.0).client_address == ctx.client_address


@pytest.mark.parametrize(
    "request_fields",
    [
        {"client_ip": 123},
        {"client_ip": b"192.0.2.1"},
        {"method": 5},
        {"path": b"/x"},
        {"context": RequestContext(123, 0.0)},  # type: ignore[arg-type]
        {"context": RequestContext("192.0.2.1", 0.0, b"GET", "/")},  # type: ignore[arg-type]
    ],
)
def test_odd_request_fields_still_end_in_a_refusal(
    fixed_verifier: Verifier, request_fields: dict[str, Any]
) -> None:
    """Only bbverify's errors leave verify(): the audit line of the refusal copes with any field type."""
    with pytest.raises(bbverify.VerificationError):
        fixed_verifier.verify("not-a-token", **request_fields)
