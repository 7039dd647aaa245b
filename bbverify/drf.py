"""Django REST framework: an authentication class and permission classes for named policies.

::

    from rest_framework import viewsets
    from bbverify.drf import HasPipelinePolicy, PipelineAuthentication

    class DeploymentViewSet(viewsets.ViewSet):
        authentication_classes = [PipelineAuthentication]
        permission_classes = [HasPipelinePolicy("deploy")]

    # settings.py: the exact RFC 6750 answers of the other adapters
    REST_FRAMEWORK = {"EXCEPTION_HANDLER": "bbverify.drf.exception_handler"}

The verifier, trusted proxies and realm come from Django settings
(:mod:`bbverify.django.conf`). Refusals raise :class:`PipelineAuthError`,
whose status, ``WWW-Authenticate``, ``Retry-After`` and JSON fields
(``error``, ``code``, ``message``) are those of the other adapters; with
:func:`exception_handler` the response is byte for byte the same
(``Cache-Control: no-store`` included), without it DRF renders the same
fields through its own renderer.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .claims import PipelineClaims
from .django.conf import get_config
from .django.flow import as_django, verify_request
from .errors import ConfigurationError, VerificationError
from .http import ErrorResponse, Guard, quote_header_value

__all__ = [
    "HasPipelinePolicy",
    "PipelineAuthError",
    "PipelineAuthentication",
    "PipelineUser",
    "exception_handler",
]


class PipelineUser:
    """The user-like object DRF puts in ``request.user`` for a pipeline token.

    Not a database user: ``claims`` holds the :class:`~bbverify.PipelineClaims`
    (also in ``request.auth``); ``username`` is the token's ``sub``.
    """

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, claims: PipelineClaims) -> None:
        self.claims = claims
        self.username = claims.subject

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj: object = None) -> bool:
        # Django permissions belong to database users; a pipeline has only its policies.
        return False

    def has_perms(self, perms: Any, obj: object = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False

    def __str__(self) -> str:
        return self.username

    def __repr__(self) -> str:
        return f"PipelineUser({self.username!r})"


class PipelineAuthError(exceptions.APIException):
    """A bbverify refusal inside DRF: 400, 401, 403 or 503 with the RFC 6750 answer.

    ``error`` is the :class:`~bbverify.errors.VerificationError`; ``response``
    the :class:`~bbverify.http.ErrorResponse` the other adapters send.
    ``detail`` is its JSON body; ``auth_header`` and ``wait`` feed DRF's own
    exception handler (``WWW-Authenticate``, ``Retry-After``).
    """

    def __init__(
        self, error: VerificationError, response: ErrorResponse, native: HttpResponseBase | None = None
    ) -> None:
        super().__init__(detail=json.loads(response.body), code=error.code)
        self.status_code = response.status
        self.error = error
        self.response = response
        #: The Django response ``on_error`` chose, sent by :func:`exception_handler`.
        self.native = native
        self.auth_header = response.header("WWW-Authenticate")
        retry_after = response.header("Retry-After")
        self.wait = int(retry_after) if retry_after else None


def _refuse(guard: Guard, error: VerificationError) -> PipelineAuthError:
    response, native = guard.refusal(error)
    return PipelineAuthError(error, response, native if isinstance(native, HttpResponseBase) else None)


def _django_request(request: Request | HttpRequest) -> HttpRequest:
    inner = getattr(request, "_request", request)
    if not isinstance(inner, HttpRequest):
        raise TypeError("not a Django request")
    return inner


def _view_policy(request: Request) -> str | None:
    """The one named policy the view's :class:`HasPipelinePolicy` permissions ask for, if one."""
    view = (getattr(request, "parser_context", None) or {}).get("view")
    get_permissions = getattr(view, "get_permissions", None)
    if get_permissions is None:
        return None
    names = {p.policy for p in get_permissions() if isinstance(p, HasPipelinePolicy)}
    return names.pop() if len(names) == 1 else None


class PipelineAuthentication(BaseAuthentication):
    """DRF authentication by a Bitbucket Pipelines OIDC token (``Authorization: Bearer``).

    ``authenticate`` returns ``(PipelineUser, PipelineClaims)``, so the claims
    are ``request.auth``; it returns ``None`` when the request has no bearer
    token (no header, or another scheme), letting other authentication classes
    try. A bearer token that is invalid or denied raises
    :class:`PipelineAuthError` (401, 403, 400 or 503). The token is checked
    under the named policy of the view's :class:`HasPipelinePolicy` when it has
    exactly one, else under the default policy. ``authenticate_header`` gives
    the Bearer challenge, so DRF answers 401 (not 403) when a permission finds
    no credentials.
    """

    def authenticate(self, request: Request) -> tuple[PipelineUser, PipelineClaims] | None:
        guard = get_config().guard_for(_view_policy(request))
        try:
            claims = verify_request(guard, _django_request(request), optional=True)
        except VerificationError as exc:
            raise _refuse(guard, exc) from None
        if claims is None:
            return None  # no bearer token: other authentication classes may try
        return PipelineUser(claims), claims

    def authenticate_header(self, request: Request) -> str:
        return f'Bearer realm="{quote_header_value(get_config().guard.realm, 100)}"'


class HasPipelinePolicy(BasePermission):
    """Permission: the request carries a pipeline token that the named policy admits.

    ``HasPipelinePolicy("deploy")`` goes straight into ``permission_classes``
    (DRF calls it to get the permission; it returns itself).
    ``HasPipelinePolicy()`` applies the default policy. The token is verified
    here whatever the authentication classes did (the verifier caches it, so a
    second check costs microseconds); no token is a 401 with the Bearer
    challenge, a denial a 403 ``insufficient_scope``, exactly as the other
    adapters answer. The policy name is checked against ``BBVERIFY`` on first
    use (:class:`~bbverify.errors.ConfigurationError` if unknown).
    """

    def __init__(self, policy: str | None = None) -> None:
        if policy is not None and (not isinstance(policy, str) or not policy):
            raise ConfigurationError(f"a policy name is a non-empty string, not {policy!r}", key="policy")
        self.policy = policy

    def __call__(self) -> HasPipelinePolicy:
        return self

    def __repr__(self) -> str:
        return f"HasPipelinePolicy({self.policy!r})"

    def has_permission(self, request: Request, view: Any) -> bool:
        guard = get_config().guard_for(self.policy)
        try:
            verify_request(guard, _django_request(request))
        except VerificationError as exc:
            raise _refuse(guard, exc) from None
        return True


def exception_handler(exc: Exception, context: dict[str, Any]) -> Any:
    """DRF ``EXCEPTION_HANDLER``: bbverify refusals byte for byte as the other adapters send them.

    Everything else goes to DRF's default handler.
    """
    if isinstance(exc, PipelineAuthError):
        return exc.native if exc.native is not None else as_django(exc.response)
    # Imported here: rest_framework.views imports the authentication classes named
    # in settings (this module) while it loads.
    from rest_framework.views import exception_handler as drf_exception_handler

    return drf_exception_handler(exc, context)
