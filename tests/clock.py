"""Time in the tests: the one fake clock, and a bounded wait on the real one.

:class:`FakeClock` is a callable that returns a time that moves only when told
to. Hand it wherever bbverify takes a clock (``RemoteKeySet(monotonic=...,
clock=...)``, ``Verifier(clock=...)``, the IP-range loader, the request budget):
"once per cooldown" and "after the backoff" are then checked by moving time,
never by sleeping. :func:`wait_until` waits, bounded, for a background thread's
work to land; the assertion that follows it decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["FakeClock", "wait_until"]


class FakeClock:
    """``clock()`` returns ``clock.now`` (seconds, a float); ``advance(s)`` moves it forward.

    ``start`` is the first reading (seconds). Tests may also set ``now`` directly,
    for example to move it backwards.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(predicate: Callable[[], bool], limit: float = 3.0) -> None:
    """Poll ``predicate`` every 5 ms until it is true or ``limit`` seconds have passed (never raises)."""
    end = time.monotonic() + limit
    while not predicate() and time.monotonic() < end:
        time.sleep(0.005)
