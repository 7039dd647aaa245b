"""The Django app config: add ``"bbverify.django"`` to ``INSTALLED_APPS`` for the system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.core.signals import setting_changed


class BBVerifyConfig(AppConfig):
    """Registers the settings checks and rebuilds the verifier when settings change (tests)."""

    name = "bbverify.django"
    label = "bbverify"
    verbose_name = "bbverify"
    default = True

    def ready(self) -> None:
        from .checks import check_settings
        from .conf import reset

        checks.register(check_settings, checks.Tags.security)
        setting_changed.connect(reset, dispatch_uid="bbverify.django.reset")
