"""Property tests: verify() only accepts unmodified valid tokens and only raises VerificationError.

Modest example counts keep the suite fast and (derandomized) deterministic;
``fuzz/run.py`` runs the same properties with as many examples as you like.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbverify.testing import FakeIssuer

from .properties import FuzzTarget, arbitrary_inputs, json_tokens, mutated_tokens

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    with FakeIssuer() as issuer:
        yield FuzzTarget(issuer)


def _property(target: FuzzTarget, strategy: st.SearchStrategy[object]) -> None:
    @SETTINGS
    @given(candidate=strategy)
    def run(candidate: object) -> None:
        target.check(candidate)

    run()
    # No poisoned state: the originals still verify after the storm.
    for token in target.valid:
        assert target.verifier.verify(token).subject


def test_arbitrary_input_is_rejected_cleanly(target: FuzzTarget) -> None:
    """Fail closed (RFC 8725 section 3): random bytes, text and odd types never verify, never crash."""
    _property(target, arbitrary_inputs(target.kid))


def test_json_headed_tokens_are_rejected_cleanly(target: FuzzTarget) -> None:
    """Fail closed: arbitrary JSON headers (the real kid among them) reach the key logic, never pass."""
    _property(target, json_tokens(target.kid))


def test_mutated_tokens_never_verify(target: FuzzTarget) -> None:
    """RFC 7515 section 5.2: any change to a valid token (bits, segments, JSON, length) is refused."""
    _property(target, mutated_tokens(target.valid))


def test_the_oracle_can_fail(target: FuzzTarget) -> None:
    """The oracle itself: it accepts the originals and would flag an accepted modification."""
    for token in target.valid:
        target.check(token)
        target.check(token.encode())
    forged = target.issuer.mint()  # genuine but not in the target's list: the oracle must object
    with pytest.raises(AssertionError):
        target.check(forged)
