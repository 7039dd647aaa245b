"""The suite's one fake clock: a callable that returns a time that moves only when told to.

Hand it wherever bbverify takes a clock (``RemoteKeySet(monotonic=..., clock=...)``,
``Verifier(clock=...)``, the IP-range loader, the request budget): "once per
cooldown" and "after the backoff" are then checked by moving time, never by sleeping.
"""

from __future__ import annotations

__all__ = ["FakeClock"]


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
