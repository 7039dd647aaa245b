"""Settings tables: a name that is not a known setting is a configuration error, never ignored.

Shared by the tables the adapters read (``[bbverify.serve]`` and its routes,
Django's ``BBVERIFY_DJANGO``), so a typo fails at start-up the same way
everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from .errors import ConfigurationError

__all__ = ["check_keys"]


def check_keys(
    table: Iterable[object],
    known: Collection[str],
    key_of: Callable[[str], str],
    *,
    what: str = "setting",
    named: bool = True,
) -> None:
    """Raise :class:`~bbverify.errors.ConfigurationError` for the first name of ``table`` not in ``known``.

    ``key_of(name)`` gives the error's ``key`` (the setting path as the user
    spelt it). The message reads ``unknown {what} 'name'; known settings:
    ...`` (without the name when ``named`` is false, for settings whose key
    already shows it); ``known`` is listed sorted when it is a set, else in
    its own order.
    """
    for name in table:
        if name not in known:
            listed = sorted(known) if isinstance(known, frozenset | set) else list(known)
            said = f" {name!r}" if named else ""
            raise ConfigurationError(
                f"unknown {what}{said}; known settings: {', '.join(listed)}", key=key_of(str(name))
            )
