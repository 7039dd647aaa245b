"""``PipelineAuthMiddleware``: a pipeline token on every request Django serves.

Add it to ``MIDDLEWARE`` (before anything that acts on the caller)::

    MIDDLEWARE = ["bbverify.django.PipelineAuthMiddleware", ...]

Every path needs a valid token except ``BBVERIFY_DJANGO["exclude_paths"]`` and
``["exclude_prefixes"]``; ``BBVERIFY_DJANGO["routes"]`` picks the named policy
per path prefix (see :mod:`bbverify.django.conf`). On success
``request.pipeline_claims`` holds the :class:`~bbverify.PipelineClaims` and
``request.pipeline_client_ip`` the client address the rules saw.

The middleware is sync and async capable: under Django's ASGI handler it
awaits :meth:`~bbverify.Verifier.averify`, so a key fetch never blocks the
event loop; under WSGI it calls :meth:`~bbverify.Verifier.verify`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase

from ..errors import ConfigurationError, VerificationError
from .conf import get_config
from .flow import CLAIMS_ATTR, averify_request, refusal, verify_request

__all__ = ["PipelineAuthMiddleware"]


class PipelineAuthMiddleware:
    """Django middleware requiring a valid pipeline token (settings: ``BBVERIFY``, ``BBVERIFY_DJANGO``).

    Built when Django loads its middleware (at start-up); a wrong setting
    raises :class:`django.core.exceptions.ImproperlyConfigured` then, naming
    the setting path. Refusals are the RFC 6750 JSON answers of
    :mod:`bbverify.http` (400, 401, 403, 503).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        try:
            self.config = get_config()
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"bbverify: {exc}") from exc
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        config = self.config
        path = request.path_info or "/"
        if config.guard.is_excluded(path):
            setattr(request, CLAIMS_ATTR, None)
            return self.get_response(request)
        guard = config.guard_for(config.policy_for(path))
        try:
            verify_request(guard, request)
        except VerificationError as exc:
            return refusal(guard, exc)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        config = self.config
        path = request.path_info or "/"
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        if config.guard.is_excluded(path):
            setattr(request, CLAIMS_ATTR, None)
            return await get_response(request)
        guard = config.guard_for(config.policy_for(path))
        try:
            await averify_request(guard, request)
        except VerificationError as exc:
            return refusal(guard, exc)
        return await get_response(request)
