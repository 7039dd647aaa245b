"""Django: settings, system checks, middleware and a view decorator (DRF classes: :mod:`bbverify.drf`).

::

    # settings.py
    INSTALLED_APPS = [..., "bbverify.django"]           # system checks bbverify.E001...
    MIDDLEWARE = ["bbverify.django.PipelineAuthMiddleware", ...]  # or protect views one by one
    BBVERIFY = {                                       # the keys of the TOML [bbverify] table
        "workspace": "acme",
        "workspace_uuid": "{...}",
        "rules": {"repositories": ["{...}"]},
    }
    BBVERIFY_DJANGO = {"trusted_proxies": 1, "exclude_paths": ["/healthz"]}

Modules: :mod:`~bbverify.django.conf` (settings), :mod:`~bbverify.django.checks`,
:mod:`~bbverify.django.flow` (the request flow shared with DRF),
:mod:`~bbverify.django.middleware`, :mod:`~bbverify.django.decorators`.
"""

from __future__ import annotations

from ..verifier import Verifier
from .conf import get_config
from .decorators import require_pipeline
from .middleware import PipelineAuthMiddleware

__all__ = ["PipelineAuthMiddleware", "get_config", "get_verifier", "require_pipeline"]


def get_verifier() -> Verifier:
    """The :class:`~bbverify.Verifier` built from ``settings.BBVERIFY`` (shared)."""
    return get_config().verifier
