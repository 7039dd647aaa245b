"""Django system checks: every bbverify setting is validated at start-up.

Registered by the app config (``"bbverify.django"`` in ``INSTALLED_APPS``);
``manage.py check``, ``runserver`` and ``migrate`` run them. Ids:

* ``bbverify.E001``: ``BBVERIFY`` is missing or not a dict;
* ``bbverify.E002``: a value under ``BBVERIFY`` is wrong (the message names
  its path, ``BBVERIFY['rules']['repositories'][1]``);
* ``bbverify.E003``: a value under ``BBVERIFY_DJANGO`` is wrong;
* ``bbverify.E004``: a view decorator names a policy ``BBVERIFY`` lacks;
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

    from .decorators import DECLARED_POLICIES

    try:
        config = build_config(settings)
    except ConfigurationError as exc:
        key = exc.key or SETTING
        return [Error(str(exc), hint=_HINT, obj=f"settings.{key.split('[', 1)[0]}", id=_error_id(key))]
    errors: list[CheckMessage] = []
    for name in sorted(DECLARED_POLICIES):
        try:
            check_policy(config.verifier, name)
        except ConfigurationError as exc:
            errors.append(
                Error(
                    f"require_pipeline(policy={name!r}): {exc}",
                    hint=f"define it under {SETTING}['policies']",
                    obj="bbverify.django.require_pipeline",
                    id="bbverify.E004",
                )
            )
    return errors
