"""Django settings for bbverify: read, validate, build once, rebuild on change.

Two settings, both dicts:

* ``BBVERIFY``: the verifier, with exactly the keys of the TOML ``[bbverify]``
  table (``workspace``, ``audience``, ``rules``, ``policies``, ...), built by
  :func:`bbverify.config.verifier_from_mapping`, so it is validated the same way;
* ``BBVERIFY_DJANGO``: the adapter's own settings (optional):

  ``trusted_proxies``
      ``None`` (default: ``REMOTE_ADDR`` is the client), a hop count or proxy
      CIDRs; see :func:`bbverify.http.client_ip`.
  ``realm``
      the ``realm`` of ``WWW-Authenticate`` (default ``"bbverify"``).
  ``exclude_paths`` / ``exclude_prefixes``
      paths the middleware serves without a token, when the view Django
      resolves for them is reachable only under the exclusions
      (:mod:`bbverify.django.views`); ``"/"`` as a prefix is refused.
  ``routes``
      ``[{"url_name": "deploy", "policy": "deploy"}, ...]``: the named policy
      the middleware applies to the view of a named URL pattern
      (``"namespace:name"`` inside a namespace), whatever URL reached it;
      other views get the default policy. Path prefixes are refused: a path
      string does not say which view runs (:mod:`bbverify.django.views`).
  ``on_error``
      the dotted path of a plain (not ``async``) function ``on_error(error)``,
      returning a Django response (a DRF ``Response`` is rendered as JSON) or
      an :class:`~bbverify.http.ErrorResponse` to send instead of the default
      answer (``None``: keep it); see :class:`bbverify.http.Guard`.

Any other Django setting whose name starts with ``BBVERIFY`` is refused, so
that a misspelt setting cannot silently turn protection off.

Errors are :class:`~bbverify.errors.ConfigurationError` whose key names the
setting as written in ``settings.py``: ``BBVERIFY['rules']['repositories'][1]``.
"""

from __future__ import annotations

import difflib
import inspect
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, sync_to_async

from ..bearer import DEFAULT_REALM
from ..config import verifier_from_mapping
from ..errors import ConfigurationError
from ..guard import ErrorHandler, Guard
from ..tables import check_keys
from ..verifier import Verifier
from .views import reset as reset_url_index
from .views import url_index

__all__ = [
    "ADAPTER_SETTING",
    "SETTING",
    "DjangoConfig",
    "Route",
    "aget_config",
    "build_config",
    "built_config",
    "check_policy",
    "get_config",
    "reset",
    "setting_path",
]

SETTING = "BBVERIFY"
ADAPTER_SETTING = "BBVERIFY_DJANGO"
_ADAPTER_KEYS = ("trusted_proxies", "realm", "exclude_paths", "exclude_prefixes", "routes", "on_error")
_ROUTE_KEYS = ("url_name", "policy")
_PART_RE = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def setting_path(setting: str, key: str | None) -> str:
    """``rules.repositories[1]`` under ``BBVERIFY`` -> ``BBVERIFY['rules']['repositories'][1]``."""
    if not key:
        return setting
    out = setting
    for part in key.split("."):
        match = _PART_RE.fullmatch(part)
        if match is None:
            out += f"[{part!r}]"
            continue
        out += f"[{match.group(1)!r}]{match.group(2)}"
    return out


def _rekeyed(exc: ConfigurationError, setting: str) -> ConfigurationError:
    return ConfigurationError(exc.detail, key=setting_path(setting, exc.key))


def check_policy(verifier: Verifier, name: str | None) -> None:
    """Raise :class:`ConfigurationError` unless ``verifier`` knows the named policy ``name``.

    ``None`` (the default policy) is always valid (:meth:`Verifier.check_policy`).
    """
    verifier.check_policy(name)


@dataclass(frozen=True)
class Route:
    """The view of the URL pattern named ``url_name`` is checked under ``policy``."""

    url_name: str
    policy: str | None


@dataclass(frozen=True)
class DjangoConfig:
    """The verifier and adapter settings built from Django settings."""

    verifier: Verifier
    #: trusted proxies, realm and excluded paths, under the default policy.
    guard: Guard
    routes: tuple[Route, ...]
    _guards: dict[str | None, Guard] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._guards[None] = self.guard

    def policies_for(self, view: Callable[..., Any], urlconf: object = None) -> tuple[str | None, ...]:
        """The policies the middleware applies to ``view`` (resolved with ``urlconf``).

        Every route naming one of the view's URL patterns gives its policy
        (so the policy follows the view, not the URL that reached it); none:
        ``(None,)``, the default policy. Several: the token must pass each.
        """
        if not self.routes:
            return (None,)
        names = url_index(urlconf).names.get(view, set())
        found = tuple(dict.fromkeys(r.policy for r in self.routes if r.url_name in names))
        return found or (None,)

    def is_excluded(self, path: str, view: Callable[..., Any], urlconf: object = None) -> bool:
        """True when the middleware serves ``path``, resolved to ``view``, without a token.

        The path must match ``exclude_paths`` / ``exclude_prefixes`` and every
        URL of the view must lie under them (:meth:`UrlIndex.excludable`).
        """
        guard = self.guard
        if not guard.is_excluded(path):
            return False
        return url_index(urlconf).excludable(view, guard.exclude_paths, guard.exclude_prefixes)

    def guard_for(self, policy: str | None) -> Guard:
        """The :class:`~bbverify.http.Guard` for requests under ``policy`` (built once per name).

        Raises :class:`ConfigurationError` for a name the verifier lacks.
        """
        guard = self._guards.get(policy)
        if guard is None:
            base = self.guard
            guard = Guard(
                base.verifier,
                exclude_paths=base.exclude_paths,
                exclude_prefixes=base.exclude_prefixes,
                trusted_proxies=base.trusted_proxies,
                realm=base.realm,
                on_error=base.on_error,
                policy=policy,
            )
            # A race builds two equal guards; either is right.
            self._guards[policy] = guard
        return guard


def _adapter_settings(raw: object) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError("must be a dict of adapter settings", key=ADAPTER_SETTING)
    check_keys(raw, _ADAPTER_KEYS, lambda name: setting_path(ADAPTER_SETTING, name), named=False)
    return dict(raw)


def _routes(raw: object, verifier: Verifier) -> tuple[Route, ...]:
    base = setting_path(ADAPTER_SETTING, "routes")
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise ConfigurationError("must be a list of {'url_name': ..., 'policy': ...}", key=base)
    routes: list[Route] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{base}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigurationError("must be a dict with 'url_name' and 'policy'", key=where)
        if "prefix" in item:
            raise ConfigurationError(
                "routes by path prefix are refused: a path string does not say which view Django "
                "runs (i18n prefixes, case-insensitive or unanchored re_path, host URLconfs); name "
                "the URL pattern instead: {'url_name': 'deploy', 'policy': 'deploy'}",
                key=f"{where}['prefix']",
            )
        for name in item:
            if name not in _ROUTE_KEYS:
                raise ConfigurationError(
                    f"unknown key; a route has {', '.join(_ROUTE_KEYS)}", key=f"{where}[{str(name)!r}]"
                )
        url_name = item.get("url_name")
        if not isinstance(url_name, str) or not url_name.strip() or url_name != url_name.strip():
            raise ConfigurationError(
                f"{url_name!r} must be the name of a URL pattern ('name' or 'namespace:name')",
                key=f"{where}['url_name']",
            )
        if url_name in seen:
            raise ConfigurationError(f"{url_name!r} is listed twice", key=f"{where}['url_name']")
        seen.add(url_name)
        if "policy" not in item:
            raise ConfigurationError("is required (None for the default policy)", key=f"{where}['policy']")
        policy = item["policy"]
        try:
            check_policy(verifier, policy)
        except ConfigurationError as exc:
            raise ConfigurationError(exc.detail, key=f"{where}['policy']") from None
        routes.append(Route(url_name, policy))
    return tuple(routes)


def _route_guards(config: DjangoConfig) -> DjangoConfig:
    for route in config.routes:
        config.guard_for(route.policy)  # built now, so requests never build one
    return config


def _on_error(path: object) -> ErrorHandler | None:
    if path is None:
        return None
    key = setting_path(ADAPTER_SETTING, "on_error")
    if not isinstance(path, str) or not path.strip():
        raise ConfigurationError(f"must be the dotted path of a function, not {path!r}", key=key)
    from django.utils.module_loading import import_string

    try:
        handler = import_string(path.strip())
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {path!r}: {exc}", key=key) from None
    if not callable(handler):
        raise ConfigurationError(f"{path!r} is not callable", key=key)
    if iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__):
        # The middleware, the decorator and DRF call it from sync code too; an
        # un-awaited coroutine would silently drop the answer it chose.
        raise ConfigurationError(f"{path!r} is an async function; on_error must be a plain function", key=key)
    return cast(ErrorHandler, handler)


def build_config(settings: Any) -> DjangoConfig:
    """Build the verifier and adapter settings from a Django ``settings`` object.

    Raises :class:`ConfigurationError` naming the setting path on any mistake.
    """
    for name in dir(settings):
        if name in (SETTING, ADAPTER_SETTING) or not name.isupper():
            continue
        near = difflib.get_close_matches(name, (SETTING, ADAPTER_SETTING), n=1, cutoff=0.8)
        if not near and "BBVERIFY" in name and "DJANGO" in name:
            near = [ADAPTER_SETTING]  # DJANGO_BBVERIFY, BBVERIFYDJANGO
        if "BBVERIFY" in name or near:
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigurationError(
                f"unknown setting{hint}; bbverify reads {SETTING} and {ADAPTER_SETTING} only", key=name
            )
    table = getattr(settings, SETTING, None)
    if table is None:
        raise ConfigurationError("is not set; give the [bbverify] settings as a dict", key=SETTING)
    if not isinstance(table, Mapping):
        raise ConfigurationError("must be a dict with the keys of the [bbverify] table", key=SETTING)
    try:
        verifier = verifier_from_mapping(table)
    except ConfigurationError as exc:
        raise _rekeyed(exc, SETTING) from None
    adapter = _adapter_settings(getattr(settings, ADAPTER_SETTING, None))
    on_error = _on_error(adapter.get("on_error"))
    try:
        guard = Guard(
            verifier,
            exclude_paths=adapter.get("exclude_paths"),
            exclude_prefixes=adapter.get("exclude_prefixes"),
            trusted_proxies=adapter.get("trusted_proxies"),
            realm=adapter.get("realm", DEFAULT_REALM),
            on_error=on_error,
        )
    except ConfigurationError as exc:
        raise _rekeyed(exc, ADAPTER_SETTING) from None
    return _route_guards(DjangoConfig(verifier, guard, _routes(adapter.get("routes"), verifier)))


_lock = threading.Lock()
_config: DjangoConfig | None = None


def built_config() -> DjangoConfig | None:
    """The shared configuration if it is built, else ``None`` (never builds)."""
    return _config


async def aget_config() -> DjangoConfig:
    """As :func:`get_config`, for async code: a build runs in a worker thread.

    Building may fetch over the network (``rules.ip_ranges_feed``) and must
    not block the event loop; once built this is one attribute read.
    """
    config = _config
    if config is not None:
        return config
    return await sync_to_async(get_config, thread_sensitive=False)()


def get_config() -> DjangoConfig:
    """The configuration built from ``django.conf.settings`` (built once, then shared).

    Built at start-up by the app config (``"bbverify.django"`` in
    ``INSTALLED_APPS``) or the middleware, else on first use; async callers
    use :func:`aget_config`. Raises :class:`ConfigurationError` when the
    settings are wrong.
    """
    global _config
    config = _config
    if config is not None:
        return config
    from django.conf import settings

    with _lock:
        if _config is None:
            _config = build_config(settings)
        return _config


def reset(**kwargs: Any) -> None:
    """Forget the built configuration (connected to Django's ``setting_changed``)."""
    global _config
    setting = kwargs.get("setting")
    if setting is None or "BBVERIFY" in str(setting).upper():
        with _lock:
            _config = None
    if setting is None or str(setting) in ("ROOT_URLCONF", "BBVERIFY_DJANGO"):
        reset_url_index()


def _connect() -> None:
    # Connected on import, not only in AppConfig.ready: override_settings in a
    # project's tests must rebuild the verifier even without the app installed.
    from django.core.signals import setting_changed

    setting_changed.connect(reset, dispatch_uid="bbverify.django.reset")


_connect()
