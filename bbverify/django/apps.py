"""The Django app config: add ``"bbverify.django"`` to ``INSTALLED_APPS`` (checks, start-up build).

With the app installed, the system checks run and the configuration is built
at start-up.
"""

from __future__ import annotations

import contextlib

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
        from ..errors import ConfigurationError
        from .checks import check_settings
        from .conf import get_config

        checks.register(check_settings, checks.Tags.security)
        # Built now, at start-up, so that no request (least of all one on an
        # ASGI event loop) pays for the build, which may fetch the IP-ranges feed.
        # A mistake is reported by the system checks, and raised again at first use.
        with contextlib.suppress(ConfigurationError):
            get_config()
