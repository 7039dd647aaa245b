"""The Django app config: add ``"bbverify.django"`` to ``INSTALLED_APPS`` for the system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

__all__ = ["BBVerifyConfig"]


class BBVerifyConfig(AppConfig):
    """Registers the settings checks (:mod:`bbverify.django.checks`)."""

    name = "bbverify.django"
    label = "bbverify"
    verbose_name = "bbverify"
    default = True

    def ready(self) -> None:
        from .checks import check_settings

        checks.register(check_settings, checks.Tags.security)
