"""bbverify.checks: one check for every duration setting, naming the setting in its error."""

from __future__ import annotations

import math

import pytest

from bbverify.budget import FetchBudget
from bbverify.checks import seconds
from bbverify.errors import ConfigurationError
from bbverify.ipranges import SAMPLE_FEED, AtlassianIPRanges
from bbverify.keys import RemoteKeySet


@pytest.mark.parametrize("value", [-1, -0.5, math.inf, math.nan, True, "5", None])
def test_refuses_what_is_not_a_finite_non_negative_number(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        seconds(value, "cooldown")
    assert info.value.key == "cooldown"
    assert info.value.detail == f"must be a non-negative number of seconds, not {value!r}"


def test_positive_refuses_zero_and_returns_floats() -> None:
    assert seconds(0, "cooldown") == 0.0 and isinstance(seconds(3, "x"), float)
    assert seconds(2.5, "timeout", positive=True) == 2.5
    with pytest.raises(ConfigurationError) as info:
        seconds(0, "timeout", positive=True)
    assert (info.value.key, info.value.detail) == ("timeout", "must be positive")


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: FetchBudget(cooldown=-1), "cooldown"),
        (lambda: RemoteKeySet(jwks_url="https://example.invalid/keys.json", store_poll=-1), "store_poll"),
        (lambda: RemoteKeySet(jwks_url="https://example.invalid/keys.json", timeout=0), "timeout"),
        (lambda: AtlassianIPRanges(SAMPLE_FEED, refresh_interval=0, lazy=True), "refresh_interval"),
        (lambda: AtlassianIPRanges(SAMPLE_FEED, failure_backoff=math.nan, lazy=True), "failure_backoff"),
    ],
)
def test_every_loader_uses_the_one_check(build: object, key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()  # type: ignore[operator]
    assert info.value.key == key
