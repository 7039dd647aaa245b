"""The fetch budget (bbverify.budget): bucket, floor, backoff, Retry-After, Cache-Control."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from bbverify.budget import BudgetState, FetchBudget, parse_max_age, parse_retry_after
from bbverify.errors import ConfigurationError

NOW = 1_800_000_000.0


def budget(**options: object) -> FetchBudget:
    options.setdefault("rng", random.Random(7))
    return FetchBudget(**options)  # type: ignore[arg-type]


# -- Retry-After (RFC 9110 section 10.2.3) ----------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("120", 120.0), ("0", 0.0), (" 7 ", 7.0)])
def test_retry_after_in_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_as_http_date() -> None:
    assert parse_retry_after(formatdate(NOW + 90, usegmt=True), NOW) == pytest.approx(90.0)
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOW) == 0.0  # in the past: now


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Sun, 99 Nov 1994 08:49:37 GMT"])
def test_retry_after_malformed_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


# -- Cache-Control (RFC 9111 section 5.2.2.1) -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=300", 300.0),
        ("public, max-age=60", 60.0),
        ('max-age="90"', 90.0),
        ("no-cache", 0.0),
        ("no-store, max-age=600", 0.0),
        ("public", None),
        ("max-age=soon", None),
        (None, None),
    ],
)
def test_max_age(value: str | None, expected: float | None) -> None:
    assert parse_max_age(value) == expected


# -- the bucket and the floor ----------------------------------------------------------------


def test_bucket_allows_the_burst_then_one_fetch_per_interval() -> None:
    b = budget(interval=100, burst=3, cooldown=0)
    state = b.new_state()
    for _ in range(3):
        assert b.allows(state, NOW)
        b.spend(state, NOW)
    assert not b.allows(state, NOW)
    assert b.wait(state, NOW) == pytest.approx(100.0)
    assert not b.allows(state, NOW + 99)
    assert b.allows(state, NOW + 100)
    b.spend(state, NOW + 100)
    assert not b.allows(state, NOW + 150)
    # Saved-up tokens never exceed the burst.
    assert b.allows(state, NOW + 10_000)
    for _ in range(3):
        b.spend(state, NOW + 10_000)
    assert not b.allows(state, NOW + 10_000)


def test_a_fetch_of_two_tokens_spends_both() -> None:
    b = budget(interval=100, burst=2, cooldown=0)
    state = b.new_state()
    b.spend(state, NOW, requests=2)
    assert b.wait(state, NOW) == pytest.approx(100.0)


def test_the_bucket_never_goes_below_zero() -> None:
    """A debt would keep a recovered issuer waiting whole intervals (finding f07)."""
    b = budget(interval=100, burst=2, cooldown=0)
    state = b.new_state()
    for _ in range(3):
        b.spend(state, NOW, requests=2)
    assert state.tokens == 0.0
    assert b.wait(state, NOW) == pytest.approx(100.0)
    assert b.remaining(state, NOW + 50) == pytest.approx(0.5)
    assert state.tokens == 0.0  # remaining() only reads
    # A stored state written with a debt by an older version is clamped to zero.
    state.tokens = -2.0
    assert b.clamp(state, NOW).tokens == 0.0


def test_unknown_kid_floor_counts_from_any_fetch() -> None:
    b = budget(interval=1, burst=10, cooldown=180)
    state = b.new_state()
    b.spend(state, NOW)  # a refresh
    assert b.allows(state, NOW + 10)  # another refresh may go (bucket permitting)
    assert not b.allows(state, NOW + 10, unknown_kid=True)
    assert b.allows(state, NOW + 180, unknown_kid=True)


def test_clock_going_backwards_credits_nothing() -> None:
    b = budget(interval=100, burst=1, cooldown=0)
    state = b.new_state()
    b.spend(state, NOW)
    assert not b.allows(state, NOW - 1000)
    assert not b.allows(state, NOW + 50)


# -- backoff and Retry-After -------------------------------------------------------------------


def test_failures_back_off_exponentially_with_jitter_up_to_the_cap() -> None:
    b = budget(interval=0.001, burst=100, cooldown=0, failure_backoff=5, max_backoff=60)
    state = b.new_state()
    waits = [b.failed(state, NOW) for _ in range(8)]
    for wait, step in zip(waits, [5, 10, 20, 40, 60, 60, 60, 60], strict=True):
        assert 0.9 * step <= wait <= step
    assert len({round(w, 6) for w in waits[4:]}) > 1  # jittered, not in step
    b.succeeded(state)
    assert state.failures == 0
    assert b.failed(state, NOW) <= 5


def test_backoff_blocks_until_it_passes_but_an_explicit_warm_up_may_skip_it() -> None:
    b = budget(interval=0.001, burst=5, cooldown=0, failure_backoff=100, max_backoff=100)
    state = b.new_state()
    b.failed(state, NOW)
    assert not b.allows(state, NOW + 50)
    assert b.allows(state, NOW + 50, forced=True)
    assert b.allows(state, NOW + 100)


def test_retry_after_is_honoured_even_by_a_forced_fetch() -> None:
    b = budget(interval=0.001, burst=5, cooldown=0, failure_backoff=1, max_backoff=1)
    state = b.new_state()
    wait = b.failed(state, NOW, retry_after=600)
    assert wait >= 600
    assert not b.allows(state, NOW + 599, forced=True)
    assert b.allows(state, NOW + wait, forced=True)


def test_retry_after_is_capped() -> None:
    b = budget(max_retry_after=3600)
    state = b.new_state()
    assert b.failed(state, NOW, retry_after=10**9) <= 3600 + 60


def test_state_round_trips_and_rejects_garbage() -> None:
    b = budget()
    state = b.new_state()
    b.spend(state, NOW)
    b.failed(state, NOW, retry_after=30)
    assert BudgetState.from_dict(state.to_dict()) == state
    for bad in [
        None,
        [],
        {"tokens": "3"},
        {**state.to_dict(), "failures": -1},
        {**state.to_dict(), "updated": "x"},
    ]:
        with pytest.raises(ValueError):
            BudgetState.from_dict(bad)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"interval": 0}, "fetch_interval"),
        ({"burst": 0}, "fetch_burst"),
        ({"burst": 1.5}, "fetch_burst"),
        ({"cooldown": -1}, "cooldown"),
        ({"failure_backoff": float("inf")}, "failure_backoff"),
        ({"failure_backoff": 10, "max_backoff": 5}, "max_backoff"),
    ],
)
def test_bad_settings_are_configuration_errors(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        FetchBudget(**options)  # type: ignore[arg-type]
    assert exc.value.key == key
