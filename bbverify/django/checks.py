"""Django system checks: every bbverify setting is validated at start-up.

Registered by the app config (``"bbverify.django"`` in ``INSTALLED_APPS``);
``manage.py check``, ``runserver`` and ``migrate`` run them. Ids:

* ``bbverify.E001``: ``BBVERIFY`` is missing or not a dict;
* ``bbverify.E002``: a value under ``BBVERIFY`` is wrong (the message names
  its path, ``BBVERIFY['rules']['repositories'][1]``);
* ``bbverify.E003``: a value under ``BBVERIFY_DJANGO`` is wrong;
* ``bbverify.E004``: a routed view (``@require_pipeline(policy=...)`` or a DRF
  view with ``HasPipelinePolicy(...)``) names a policy ``BBVERIFY`` lacks;
* ``bbverify.E005``: a setting named ``BBVERIFY...`` that bbverify does not read
  (a misspelling must not silently turn protection off).
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error

from ..errors import ConfigurationError
from .conf import ADAPTER_SETTING, SETTING, build_config, check_policy

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

    try:
        config = build_config(settings)
    except ConfigurationError as exc:
        key = exc.key or SETTING
        return [Error(str(exc), hint=_HINT, obj=f"settings.{key.split('[', 1)[0]}", id=_error_id(key))]
    errors: list[CheckMessage] = []
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
                    for permission in getattr(cls, "permission_classes", ()):
                        if isinstance(permission, HasPipelinePolicy) and permission.policy is not None:
                            found[(f"{cls.__module__}.{cls.__qualname__}", permission.policy)] = None

    try:
        walk(get_resolver().url_patterns, 0)
    except Exception:  # a broken URLconf is reported by Django's own URL checks
        return []
    return list(found)
