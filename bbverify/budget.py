"""How often a key source may ask the issuer: a token bucket, a floor, backoff and ``Retry-After``.

Bitbucket Cloud answers at most 60 anonymous API requests an hour per source
IP address, across all API resources, and 429 beyond ("API request limits",
Bitbucket Cloud documentation). Every process behind one address shares that
allowance, so a key source must spend it deliberately:

* a **token bucket**: one fetch token every ``interval`` seconds, at most
  ``burst`` saved up, never below zero; every fetch attempt (success or
  failure) spends one when it starts: a failed discovery costs one (the key
  set was never asked for), a key-set fetch costs one, and the one attempt
  whose discovery succeeds sends its key-set request on the same token
  (discovery succeeds once per key source: its key-set URL is kept, and a
  shared store hands it to the others), so an hour holds at most
  ``burst + 3600 / interval`` requests plus that first discovery,
* a **floor** (``cooldown``) between fetches caused by an unknown ``kid``, so
  tokens with random ``kid`` values cannot drain the bucket faster,
* **backoff** after a failure: ``failure_backoff`` seconds, doubled per
  consecutive failure up to ``max_backoff``, with jitter so a fleet does not
  retry in step,
* **Retry-After** (RFC 9110 section 10.2.3) on 429 and 503: no request before
  the time it names, given in seconds or as an HTTP date.

The state (:class:`BudgetState`) is a small plain record so that a shared key
store can keep it for a whole fleet; :class:`FetchBudget` holds the policy and
applies it to a state. Times are seconds on one clock (``time.time()`` unless
injected); a state is only ever compared with the clock that wrote it.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from .checks import seconds
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_COOLDOWN",
    "DEFAULT_FAILURE_BACKOFF",
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_RETRY_AFTER",
    "MAX_CLOCK_SKEW",
    "BudgetState",
    "FetchBudget",
    "parse_max_age",
    "parse_retry_after",
]

#: Seconds per bucket token: at most 20 fetches an hour in the long run.
DEFAULT_INTERVAL = 180.0
#: Tokens that may be saved up (start-up, a failure and its retry).
DEFAULT_BURST = 3
#: Seconds between fetches caused by an unknown ``kid``; with the store's poll,
#: a new signing key is followed within 5 minutes even under attack.
DEFAULT_COOLDOWN = 180.0
#: Seconds before the first retry after a failure; doubled per failure.
DEFAULT_FAILURE_BACKOFF = 5.0
#: Cap of the failure backoff, in seconds.
DEFAULT_MAX_BACKOFF = 600.0
#: A ``Retry-After`` further out than this (seconds) is capped and logged;
#: a hostile or broken answer must not stop fetching for days.
DEFAULT_MAX_RETRY_AFTER = 3600.0
#: Seconds another host's clock may run ahead of ours before the times it
#: wrote into a shared store are clamped (see :meth:`FetchBudget.clamp`).
MAX_CLOCK_SKEW = 60.0

# ASCII digits only: str.isdigit() also accepts "²" and other digits int() rejects.
_DIGITS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (RFC 9110 section 10.2.3).

    Accepts delay-seconds (``"120"``) and an HTTP date
    (``"Wed, 21 Oct 2026 07:28:00 GMT"``, compared with ``now``, seconds since
    the epoch). Returns ``None`` for a missing or malformed value, and never a
    negative number.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DIGITS.fullmatch(text):
        return float(int(text[:12]))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        return None
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None


def parse_max_age(value: str | None) -> float | None:
    """``max-age`` in seconds from a ``Cache-Control`` value (RFC 9111 section 5.2.2.1).

    ``no-store``/``no-cache`` count as 0. Returns ``None`` when there is no
    usable directive (the caller then uses its own TTL).
    """
    if not value:
        return None
    result: float | None = None
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            arg = arg.strip().strip('"')
            if _DIGITS.fullmatch(arg):
                result = float(int(arg[:12]))
            else:
                return None  # malformed: RFC 9111 says treat as stale; we use our own TTL
    return result


@dataclass
class BudgetState:
    """What a key source (or a fleet sharing a store) has spent.

    Attributes (seconds on the owner's clock, ``None`` when never):
        tokens: fetch tokens left in the bucket, as of ``updated``.
        updated: when ``tokens`` was last computed.
        last_attempt: when the last request to the issuer started.
        not_before: no request before this time (failure backoff).
        retry_until: no request before this time (the issuer's ``Retry-After``).
        failures: consecutive failed fetches.
    """

    tokens: float = float(DEFAULT_BURST)
    updated: float | None = None
    last_attempt: float | None = None
    not_before: float = 0.0
    retry_until: float = 0.0
    failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> BudgetState:
        """Rebuild a state from :meth:`to_dict` output; raise ``ValueError`` if it is malformed."""
        if not isinstance(data, dict):
            raise ValueError("budget state is not an object")
        state = cls()
        for name in ("tokens", "not_before", "retry_until"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"budget {name} is not a finite number")
            setattr(state, name, float(value))
        for name in ("updated", "last_attempt"):
            value = data.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            ):
                raise ValueError(f"budget {name} is not a finite number")
            setattr(state, name, None if value is None else float(value))
        failures = data.get("failures")
        if isinstance(failures, bool) or not isinstance(failures, int) or not 0 <= failures < 1000:
            raise ValueError("budget failures is not a small count")
        state.failures = failures
        return state


class FetchBudget:
    """The policy applied to a :class:`BudgetState` (see the module docs).

    Args:
        interval: seconds per bucket token (refill rate is ``3600/interval`` an hour).
        burst: bucket capacity (whole tokens, at least 1).
        cooldown: minimum seconds between fetches caused by an unknown ``kid``.
        failure_backoff: seconds before the first retry after a failure.
        max_backoff: cap of the exponential backoff, in seconds.
        max_retry_after: cap on an honoured ``Retry-After``, in seconds.
        rng: source of jitter (injectable for tests).

    Raises:
        ConfigurationError: for a negative, non-finite or inconsistent value.
    """

    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        burst: int = DEFAULT_BURST,
        cooldown: float = DEFAULT_COOLDOWN,
        failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        rng: random.Random | None = None,
    ) -> None:
        self.interval = seconds(interval, "fetch_interval", positive=True)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigurationError(
                f"must be a whole number of at least 1, not {burst!r}", key="fetch_burst"
            )
        self.burst = burst
        self.cooldown = seconds(cooldown, "cooldown")
        self.failure_backoff = seconds(failure_backoff, "failure_backoff")
        self.max_backoff = seconds(max_backoff, "max_backoff")
        if self.max_backoff < self.failure_backoff:
            raise ConfigurationError("must be at least failure_backoff", key="max_backoff")
        self.max_retry_after = seconds(max_retry_after, "max_retry_after")
        self._rng = rng or random.Random()

    def new_state(self) -> BudgetState:
        """A full bucket."""
        return BudgetState(tokens=float(self.burst))

    def clamp(self, state: BudgetState, now: float, *, skew: float = MAX_CLOCK_SKEW) -> BudgetState:
        """Bound a state written by another host's clock to what ``now`` allows; return it.

        A shared store holds times from every host's wall clock, and a host
        whose clock is ahead (skew, or a jump) must not stop the fleet or
        refill its bucket: ``updated`` and ``last_attempt`` later than ``now``
        become ``now`` (the spending stays; nothing is credited for the
        future); ``not_before`` is capped at ``last_attempt`` plus the backoff
        this policy sets for ``failures`` (at most ``max_backoff``) plus
        ``skew``, and ``retry_until`` at ``last_attempt + max_retry_after``
        plus its jitter and ``skew`` (seconds; ``now`` when there was no
        attempt). ``tokens`` stays within ``[0, burst]``.
        """
        state.tokens = min(float(self.burst), max(0.0, state.tokens))
        if state.updated is not None and state.updated > now:
            state.updated = now
        if state.last_attempt is not None and state.last_attempt > now:
            state.last_attempt = now
        # Waits are measured from the attempt that caused them, and are never
        # longer than this policy would have set for the recorded failures.
        anchor = now if state.last_attempt is None else state.last_attempt
        step = 0.0
        if state.failures:
            step = min(self.max_backoff, self.failure_backoff * float(2 ** min(state.failures - 1, 30)))
        state.not_before = min(state.not_before, anchor + step + skew)
        jitter = min(1.0 + 0.1 * self.max_retry_after, 60.0)
        state.retry_until = min(state.retry_until, anchor + self.max_retry_after + jitter + skew)
        return state

    def spent_state(self, now: float) -> BudgetState:
        """A state for an unreadable fleet record: one token, as of ``now`` (never a full bucket)."""
        return BudgetState(tokens=min(1.0, float(self.burst)), updated=now)

    def _refill(self, state: BudgetState, now: float) -> None:
        if state.updated is not None and now < state.updated:
            return  # a clock that went backwards credits nothing, now or later
        if state.updated is None:
            state.tokens = min(state.tokens, float(self.burst))
        else:
            state.tokens = min(float(self.burst), state.tokens + (now - state.updated) / self.interval)
        state.updated = now

    def remaining(self, state: BudgetState, now: float) -> float:
        """Tokens the bucket holds at ``now`` (refilled, at most ``burst``); ``state`` is not changed."""
        copy = BudgetState(**state.to_dict())
        self._refill(copy, now)
        return copy.tokens

    def wait(
        self, state: BudgetState, now: float, *, unknown_kid: bool = False, forced: bool = False
    ) -> float:
        """Seconds until a fetch is allowed (0 means now). Does not change ``state``'s spending.

        ``forced`` (an explicit warm-up) skips the failure backoff, but never
        the bucket or the issuer's ``Retry-After``.
        """
        self._refill(state, now)
        waits = [state.retry_until - now, (1.0 - state.tokens) * self.interval]
        if not forced:
            waits.append(state.not_before - now)
        if unknown_kid and state.last_attempt is not None:
            # Measured from any fetch: right after one, an unknown kid is
            # unknown to the issuer too.
            waits.append(state.last_attempt + self.cooldown - now)
        return max(0.0, *waits)

    def allows(
        self, state: BudgetState, now: float, *, unknown_kid: bool = False, forced: bool = False
    ) -> bool:
        """True when a fetch may start now (see :meth:`wait`)."""
        return self.wait(state, now, unknown_kid=unknown_kid, forced=forced) <= 0.0

    def spend(self, state: BudgetState, now: float, *, requests: int = 1) -> None:
        """Record that a fetch costing ``requests`` tokens starts now (the bucket stops at zero).

        A debt below zero would delay the next attempt by whole intervals
        after the issuer is back (a boot during an outage stayed unready for
        minutes), so :meth:`allows` is what keeps spending within the bucket.
        """
        self._refill(state, now)
        state.tokens = max(0.0, state.tokens - requests)
        state.last_attempt = now

    def succeeded(self, state: BudgetState) -> None:
        """A fetch succeeded (200 or 304): the backoff is over."""
        state.failures = 0

    def failed(self, state: BudgetState, now: float, retry_after: float | None = None) -> float:
        """A fetch failed; set the backoff (or honour ``retry_after`` seconds). Returns the wait."""
        state.failures = min(state.failures + 1, 999)
        base = min(self.max_backoff, self.failure_backoff * float(2 ** min(state.failures - 1, 30)))
        # Jitter takes up to a tenth off, so a fleet that failed together
        # spreads its retries, and never waits longer than the step.
        wait = base * self._rng.uniform(0.9, 1.0)
        state.not_before = max(state.not_before, now + wait)
        if retry_after is not None:
            honoured = min(retry_after, self.max_retry_after)
            # Whole seconds are what the server meant; a little jitter on top
            # keeps a fleet from returning in one burst.
            honoured += self._rng.uniform(0.0, min(1.0 + 0.1 * honoured, 60.0))
            state.retry_until = max(state.retry_until, now + honoured)
            wait = max(wait, honoured)
        return wait
