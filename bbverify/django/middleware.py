"""``PipelineAuthMiddleware``: a pipeline token for every view Django serves.

Add it to ``MIDDLEWARE``::

    MIDDLEWARE = [..., "bbverify.django.PipelineAuthMiddleware", ...]

It decides in ``process_view``, on the view Django resolved (with the
URLconf it used, ``request.urlconf`` included), never on the path string: a
view's policy cannot change with the spelling of its URL (i18n prefixes,
case-insensitive ``re_path``), and an excluded path cannot reach a protected
view (:mod:`bbverify.django.views`). Every view needs a valid token except
those that ``BBVERIFY_DJANGO["exclude_paths"]`` / ``["exclude_prefixes"]``
cover entirely; ``BBVERIFY_DJANGO["routes"]`` names the URL patterns whose
views get a named policy. On success ``request.pipeline_claims`` holds the
:class:`~bbverify.PipelineClaims` and ``request.pipeline_client_ip`` the
client address the rules saw.

Since it runs before the view, not before the other middleware, a response
another middleware gives in its own request phase (a redirect, a static
file from WhiteNoise) is sent without a token; a URL that resolves to no view
is Django's 404.

The middleware is sync and async capable: under Django's ASGI handler it
awaits :meth:`~bbverify.Verifier.averify`, so a key fetch never blocks the
event loop; under WSGI it calls :meth:`~bbverify.Verifier.verify`. It reads
the shared configuration on every request, so ``override_settings`` in tests
reaches it like the decorator and the DRF classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase

from ..errors import ConfigurationError, VerificationError
from .conf import DjangoConfig, aget_config, get_config
from .flow import CLAIMS_ATTR, averify_request, refusal, verify_request

__all__ = ["PipelineAuthMiddleware"]


def _plan(config: DjangoConfig, request: HttpRequest, view: Callable[..., Any]) -> tuple[str | None, ...]:
    """The policies ``view`` is checked under; ``()`` when the request is excluded."""
    urlconf = getattr(request, "urlconf", None)
    if config.is_excluded(request.path_info or "/", view, urlconf):
        return ()
    return config.policies_for(view, urlconf)


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
            get_config()  # built now, at start-up, and the settings checked
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"bbverify: {exc}") from exc
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            # Django adapts process_view to the handler's mode by this test.
            self.process_view = self._aprocess_view  # type: ignore[method-assign]

    def __call__(self, request: HttpRequest) -> Any:
        # Until process_view verifies, nothing is known about the caller.
        setattr(request, CLAIMS_ATTR, None)
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponseBase | None:
        """Verify the token for the resolved ``view``; a refusal answers instead of it."""
        config = get_config()
        for policy in _plan(config, request, view):
            guard = config.guard_for(policy)
            try:
                verify_request(guard, request)
            except VerificationError as exc:
                return refusal(guard, exc)
        return None

    async def _aprocess_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponseBase | None:
        config = await aget_config()
        for policy in _plan(config, request, view):
            guard = config.guard_for(policy)
            try:
                await averify_request(guard, request)
            except VerificationError as exc:
                return refusal(guard, exc)
        return None
