"""Checks the value of a numeric setting, raising a ConfigurationError that names the setting.

The key set, its fetch budget and the IP feed take many durations; one
check gives them one meaning ("a finite, non-negative number of seconds")
and one error text, whichever class is built.
"""

from __future__ import annotations

import math

from .errors import ConfigurationError

__all__ = ["seconds"]


def seconds(value: object, key: str, *, positive: bool = False) -> float:
    """``value`` as a float number of seconds.

    Args:
        value: the setting as given (``bool`` is refused although it is an ``int``).
        key: the setting's name, for the error.
        positive: refuse ``0`` too.

    Raises:
        ConfigurationError: ``value`` is not a finite, non-negative ``int`` or
            ``float`` (or is ``0`` where ``positive``); ``key`` names the setting.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"must be a non-negative number of seconds, not {value!r}", key=key)
    if positive and value <= 0:
        raise ConfigurationError("must be positive", key=key)
    return float(value)
