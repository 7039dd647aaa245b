"""What the middleware decides per *resolved view*, never per path string.

A path string does not say which view Django runs: an i18n language prefix
(``/fr/deploy/``), a case-insensitive or unanchored ``re_path``, dot segments
(``/public/../api/``) or a host-based URLconf (``request.urlconf``) all reach
the same view under other spellings. So the middleware decides in
``process_view``, on the view Django resolved with the URLconf it used:

* ``BBVERIFY_DJANGO["routes"]`` name URL patterns (``{"url_name": "deploy",
  "policy": "deploy"}``, ``"namespace:name"`` for an included namespace). The
  policy follows the *view*: every URL pattern of a view one route names is
  checked under that policy, whatever its spelling or name. A view two routes
  give different policies must pass every one of them (fail closed; the system
  check ``bbverify.E003`` reports it).
* ``exclude_paths`` / ``exclude_prefixes`` open a request only when its path
  matches them AND its view is reachable only through ``path()`` routes
  (Django's :class:`~django.urls.resolvers.RoutePattern`, anchored and
  case-sensitive) whose literal text lies under the exclusions. A view also
  served by a ``re_path``, an i18n prefix or a path outside the exclusions is
  protected: such a request needs a token (fail closed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["UrlIndex", "reset", "url_index"]

_MAX_URL_DEPTH = 32

View = Callable[..., Any]


@dataclass(frozen=True)
class UrlIndex:
    """One URLconf walked once: per view callable, its URL names and ``path()`` routes.

    ``routes[view]`` holds, for each URL pattern of ``view``, the pattern's
    full route as ``"/literal/<conv:x>..."`` when every pattern on the way is a
    ``path()`` (``None`` otherwise: a regex or i18n prefix, whose reachable
    paths cannot be read from the text). ``names[view]`` holds the full view
    names (``"namespace:name"``) of its patterns.
    """

    routes: dict[View, list[str | None]] = field(default_factory=dict)
    names: dict[View, set[str]] = field(default_factory=dict)

    def all_names(self) -> set[str]:
        """Every named URL pattern's full view name."""
        return {name for names in self.names.values() for name in names}

    def excludable(self, view: View, paths: frozenset[str], prefixes: Iterable[str]) -> bool:
        """True when every URL of ``view`` lies under the exclusions (so opening it opens nothing else)."""
        routes = self.routes.get(view)
        if not routes:
            return False
        prefixes = tuple(prefixes)
        for route in routes:
            if route is None:
                return False
            literal = route.split("<", 1)[0]
            exact = "<" not in route and route in paths
            if not exact and not any(literal.startswith(p) for p in prefixes):
                return False
        return True


def _walk(index: UrlIndex, patterns: Any, route: str | None, namespaces: list[str], depth: int) -> None:
    from django.urls import URLPattern, URLResolver
    from django.urls.resolvers import RoutePattern

    if depth > _MAX_URL_DEPTH:
        return
    for pattern in patterns:
        pattern_route: str | None = None
        if route is not None and isinstance(pattern.pattern, RoutePattern):
            pattern_route = route + str(pattern.pattern._route)
        if isinstance(pattern, URLResolver):
            namespace = [*namespaces, pattern.namespace] if pattern.namespace else namespaces
            _walk(index, pattern.url_patterns, pattern_route, namespace, depth + 1)
        elif isinstance(pattern, URLPattern):
            view = pattern.callback
            index.routes.setdefault(view, []).append(pattern_route)
            if pattern.name:
                index.names.setdefault(view, set()).add(":".join([*namespaces, pattern.name]))


_lock = threading.Lock()
_indexes: dict[object, UrlIndex] = {}


def url_index(urlconf: object = None) -> UrlIndex:
    """The :class:`UrlIndex` of ``urlconf`` (``None``: ``ROOT_URLCONF``), built once per URLconf.

    Forgotten by :func:`reset` (on ``setting_changed``). Raises whatever
    Django raises for a broken URLconf.
    """
    index = _indexes.get(urlconf)
    if index is not None:
        return index
    from django.urls import get_resolver

    index = UrlIndex()
    _walk(index, get_resolver(urlconf).url_patterns, "/", [], 0)
    with _lock:
        _indexes[urlconf] = index
    return index


def reset() -> None:
    """Forget every index (the URLconf or the settings changed)."""
    with _lock:
        _indexes.clear()
