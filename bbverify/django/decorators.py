"""``require_pipeline``: a pipeline token for one plain Django view.

::

    from bbverify.django import require_pipeline

    @require_pipeline(policy="deploy")
    def deploy(request):
        return JsonResponse({"repository": request.pipeline_claims.repository_uuid})

    @require_pipeline(optional=True)
    def status(request):
        claims = request.pipeline_claims  # None when the caller sent no token
        ...

Sync and async views both work; async views await
:meth:`~bbverify.Verifier.averify` so the event loop never blocks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest

from ..errors import ConfigurationError, VerificationError
from ..guard import Guard
from .conf import aget_config, get_config
from .flow import averify_request, refusal, verify_request

__all__ = ["require_pipeline"]

F = TypeVar("F", bound=Callable[..., Any])


@overload
def require_pipeline(view: F, /) -> F: ...


@overload
def require_pipeline(*, policy: str | None = None, optional: bool = False) -> Callable[[F], F]: ...


def require_pipeline(
    view: F | None = None, /, *, policy: str | None = None, optional: bool = False
) -> F | Callable[[F], F]:
    """Decorate a view so that it needs a valid pipeline token.

    Args:
        policy: the named policy (``BBVERIFY["policies"]``) the token must
            satisfy; ``None`` applies the default policy.
        optional: when true, a request without a bearer token (no
            ``Authorization`` header, or another scheme) reaches the view with
            ``request.pipeline_claims = None``; a token that is present but
            invalid or denied is still refused. Fail closed: a bad token never
            passes as "no token".

    Uses the settings-built verifier (:func:`bbverify.django.conf.get_config`),
    its trusted proxies and realm. Claims a middleware already verified for
    the same policy are reused. An unknown policy name raises
    :class:`~bbverify.errors.ConfigurationError` at the first request (the
    system check ``bbverify.E004`` reports it at start-up for routed views).
    """
    if view is not None:
        return require_pipeline(policy=policy, optional=optional)(view)
    if policy is not None and (not isinstance(policy, str) or not policy):
        raise ConfigurationError(f"a policy name is a non-empty string, not {policy!r}", key="policy")

    def guard_and_check() -> Guard:
        # Built (and the name checked) on first use; then one dict look-up.
        return get_config().guard_for(policy)

    async def aguard_and_check() -> Guard:
        # The settings are built at start-up (AppConfig.ready); after a
        # setting_changed the rebuild (maybe a feed fetch) runs off the event loop.
        return (await aget_config()).guard_for(policy)

    def decorate(func: F) -> F:
        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                guard = await aguard_and_check()
                try:
                    await averify_request(guard, request, optional=optional)
                except VerificationError as exc:
                    return refusal(guard, exc)
                return await func(request, *args, **kwargs)

            async_wrapper.bbverify_policy = policy  # type: ignore[attr-defined]
            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            guard = guard_and_check()
            try:
                verify_request(guard, request, optional=optional)
            except VerificationError as exc:
                return refusal(guard, exc)
            return func(request, *args, **kwargs)

        # The system checks find the policy names of routed views here.
        wrapper.bbverify_policy = policy  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate

