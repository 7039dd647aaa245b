"""Django system checks: every bbverify setting is validated at start-up.

Registered by the app config (``"bbverify.django"`` in ``INSTALLED_APPS``);
``manage.py check``, ``runserver`` and ``migrate`` run them. Ids:

* ``bbverify.E001``: ``BBVERIFY`` is missing or not a dict;
* ``bbverify.E002``: a value under ``BBVERIFY`` is wrong (the message names
  its path, ``BBVERIFY['rules']['repositories'][1]``);
* ``bbverify.E003``: a value under ``BBVERIFY_DJANGO`` is wrong;
* ``bbverify.E004``: a routed view (``@require_pipeline(policy=...)`` or a DRF
  view with ``HasPipelinePolicy(...)``) names a policy ``BBVERIFY`` lacks;
* ``bbverify.E005``: a setting named like ``BBVERIFY...`` that bbverify does
  not read (a misspelling must not silently turn protection off);
* ``bbverify.E006``: ``PipelineAuthMiddleware`` is named in a setting Django
  does not read for middleware (``MIDDLEWARES``, the removed
  ``MIDDLEWARE_CLASSES``) and is not in ``MIDDLEWARE``;
* ``bbverify.E007``: ``REST_FRAMEWORK`` names bbverify's DRF classes and has a
  key DRF does not know (``DEFAULT_PERMISSION_CLASS``): DRF ignores it, so the
  views it was meant to protect would be open.

``BBVERIFY_DJANGO['routes']`` naming a URL pattern the URLconf lacks, or
giving one view two policies, is ``bbverify.E003``.
"""

from __future__ import annotations

import difflib
from typing import Any

from django.core.checks import CheckMessage, Error

from ..errors import ConfigurationError
from .conf import ADAPTER_SETTING, SETTING, check_policy, get_config, setting_path
from .views import url_index

__all__ = ["check_settings"]

_HINT = "See docs/django.md; the keys are those of the TOML [bbverify] table (docs/configuration.md)."


def _error_id(key: str) -> str:
    if key == SETTING:
        return "bbverify.E001"
    if key.startswith(SETTING + "["):
        return "bbverify.E002"
    if key.startswith(ADAPTER_SETTING):
        return "bbverify.E003"
    return "bbverify.E005"


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Build the configuration from settings; report any mistake as an :class:`Error`."""
    from django.conf import settings

    errors: list[CheckMessage] = [*_middleware_elsewhere(settings), *_rest_framework_keys(settings)]
    try:
        config = get_config()
    except ConfigurationError as exc:
        key = exc.key or SETTING
        return [
            *errors,
            Error(str(exc), hint=_HINT, obj=f"settings.{key.split('[', 1)[0]}", id=_error_id(key)),
        ]
    errors.extend(_route_names(config))
    for where, name in _routed_policies():
        try:
            check_policy(config.verifier, name)
        except ConfigurationError as exc:
            errors.append(
                Error(
                    f"{where} uses policy {name!r}: {exc.detail}",
                    hint=f"define it under {SETTING}['policies']",
                    obj=where,
                    id="bbverify.E004",
                )
            )
    return errors


_MAX_URL_DEPTH = 32
_MIDDLEWARE = "bbverify.django.PipelineAuthMiddleware"
_MIDDLEWARE_NAMES = (_MIDDLEWARE, "bbverify.django.middleware.PipelineAuthMiddleware")


def _middleware_elsewhere(settings: Any) -> list[CheckMessage]:
    """E006: the middleware listed where Django never looks for middleware."""
    active = set(getattr(settings, "MIDDLEWARE", None) or ())
    if active & set(_MIDDLEWARE_NAMES):
        return []
    errors: list[CheckMessage] = []
    for name in dir(settings):
        if not name.isupper() or name == "MIDDLEWARE":
            continue
        value = getattr(settings, name, None)
        if isinstance(value, list | tuple) and any(item in _MIDDLEWARE_NAMES for item in value):
            errors.append(
                Error(
                    f"settings.{name} lists {_MIDDLEWARE}, but Django reads middleware from MIDDLEWARE "
                    "only: no request is checked",
                    hint="move it to MIDDLEWARE",
                    obj=f"settings.{name}",
                    id="bbverify.E006",
                )
            )
    return errors


def _rest_framework_keys(settings: Any) -> list[CheckMessage]:
    """E007: a key DRF ignores in a REST_FRAMEWORK block that relies on bbverify."""
    block = getattr(settings, "REST_FRAMEWORK", None)
    if not isinstance(block, dict) or "bbverify." not in repr(block):
        return []
    try:
        from rest_framework.settings import DEFAULTS
    except ImportError:  # DRF not installed: nothing reads the block
        return []
    errors: list[CheckMessage] = []
    for key in block:
        if key not in DEFAULTS:
            near = difflib.get_close_matches(str(key), list(DEFAULTS), n=1, cutoff=0.8)
            hint = f"did you mean {near[0]!r}?" if near else "see DRF's API settings"
            errors.append(
                Error(
                    f"REST_FRAMEWORK[{key!r}] is not a DRF setting; DRF ignores it, so what it "
                    "was meant to protect is open",
                    hint=hint,
                    obj="settings.REST_FRAMEWORK",
                    id="bbverify.E007",
                )
            )
    return errors


def _route_names(config: Any) -> list[CheckMessage]:
    """E003: a route naming no URL pattern, or one view under two routed policies."""
    if not config.routes:
        return []
    try:
        index = url_index()
    except Exception:  # a broken URLconf is reported by Django's own URL checks
        return []
    errors: list[CheckMessage] = []
    known = index.all_names()
    for i, route in enumerate(config.routes):
        if route.url_name not in known:
            near = difflib.get_close_matches(route.url_name, sorted(known), n=1, cutoff=0.8)
            errors.append(
                Error(
                    f"{setting_path(ADAPTER_SETTING, f'routes[{i}].url_name')}: no URL pattern is named "
                    f"{route.url_name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                    hint=_HINT,
                    obj=f"settings.{ADAPTER_SETTING}",
                    id="bbverify.E003",
                )
            )
    for names in index.names.values():
        policies = {route.policy for route in config.routes if route.url_name in names}
        if len(policies) > 1:
            errors.append(
                Error(
                    f"{setting_path(ADAPTER_SETTING, 'routes')}: one view is named "
                    f"{', '.join(sorted(names))} and gets the policies "
                    f"{', '.join(sorted(map(str, policies)))}; a token must then pass all of them",
                    hint="give each view one route",
                    obj=f"settings.{ADAPTER_SETTING}",
                    id="bbverify.E003",
                )
            )
    return errors


def _routed_policies() -> list[tuple[str, str]]:
    """``(view, policy name)`` for every view in the URLconf that names a policy."""
    from django.urls import URLPattern, URLResolver, get_resolver

    try:
        from ..drf import HasPipelinePolicy
    except ImportError:  # DRF not installed
        HasPipelinePolicy = None  # type: ignore[assignment,misc]
    found: dict[tuple[str, str], None] = {}

    def walk(patterns: Any, depth: int) -> None:
        if depth > _MAX_URL_DEPTH:
            return
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, depth + 1)
            elif isinstance(pattern, URLPattern):
                view = pattern.callback
                label = f"{getattr(view, '__module__', '?')}.{getattr(view, '__qualname__', view)}"
                name = getattr(view, "bbverify_policy", None)
                if isinstance(name, str):
                    found[(label, name)] = None
                cls = getattr(view, "cls", None)
                if HasPipelinePolicy is not None and cls is not None:
                    where = f"{cls.__module__}.{cls.__qualname__}"
                    for name in _drf_policies(cls):
                        found[(where, name)] = None

    try:
        walk(get_resolver().url_patterns, 0)
    except Exception:  # a broken URLconf is reported by Django's own URL checks
        return []
    return list(found)


def _drf_policies(cls: Any) -> list[str]:
    """The policy names a DRF view class asks for: ``permission_classes`` (composed or not),
    ``bbverify_policy``, and what ``get_permissions()`` returns when it runs without a request."""
    from ..drf import HasPipelinePolicy, permission_policies

    entries = getattr(cls, "permission_classes", ())
    names = [name for entry in entries for name, _ in permission_policies(entry)]
    declared = getattr(cls, "bbverify_policy", None)
    if isinstance(declared, str):
        names.append(declared)
    try:
        view = cls()
        view.request = None
        view.args, view.kwargs, view.action = (), {}, None
        permissions = list(view.get_permissions())
    except Exception:  # get_permissions() needs a request: a name it builds raises when it runs
        permissions = []
    names.extend(p.policy for p in permissions if isinstance(p, HasPipelinePolicy))
    return [name for name in names if name is not None]
