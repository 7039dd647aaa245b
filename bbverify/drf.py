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

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.debug import sensitive_variables
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import (
    BasePermission,
    OperandHolder,
    OperationHolderMixin,
    SingleOperandHolder,
)
from rest_framework.request import Request

from .bearer import ErrorResponse, quote_header_value
from .claims import PipelineClaims
from .django.conf import get_config
from .django.flow import as_django, native_response, verify_request
from .errors import ConfigurationError, PolicyDenied, VerificationError
from .guard import Guard
from .identity import PipelineUser

__all__ = [
    "HasPipelinePolicy",
    "PipelineAuthError",
    "PipelineAuthentication",
    "PipelineUser",
    "exception_handler",
    "permission_policies",
]


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
        super().__init__(detail=_detail(response.body), code=error.code)
        self.status_code = response.status
        self.error = error
        self.response = response
        #: The Django response ``on_error`` chose, sent by :func:`exception_handler`.
        self.native = native
        self.auth_header = response.header("WWW-Authenticate")
        retry_after = (response.header("Retry-After") or "").strip()
        # DRF writes ``wait`` as delay-seconds; an HTTP-date (RFC 9110 section
        # 10.2.3) from an on_error hook reaches the client only through
        # exception_handler, which sends the hook's headers as they are.
        self.wait = int(retry_after) if retry_after.isdigit() else None


def _detail(body: bytes) -> Any:
    """The JSON of ``body``, else its text: an on_error hook may answer in any format."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _refuse(guard: Guard, error: VerificationError) -> PipelineAuthError:
    refusal = guard.refusal(error)
    return PipelineAuthError(error, refusal.response, native_response(refusal.native))


def _guard(policy: str | None) -> Guard:
    try:
        return get_config().guard_for(policy)
    except ConfigurationError as exc:
        # A misspelt name the system check could not see (permissions built at request time).
        raise ImproperlyConfigured(f"bbverify: {exc}") from None


_MAX_DEPTH = 16


def permission_policies(permission: object, depth: int = 0) -> list[tuple[str | None, bool]]:
    """``(policy, composed)`` for each :class:`HasPipelinePolicy` in a ``permission_classes`` entry.

    ``composed`` is true inside DRF's ``|``, ``&`` and ``~``. Reads the
    entry only (never calls ``get_permissions()``).
    """
    if depth > _MAX_DEPTH:
        return []
    if isinstance(permission, HasPipelinePolicy):
        return [(permission.policy, depth > 0)]
    if permission is HasPipelinePolicy:
        return [(None, depth > 0)]
    found: list[tuple[str | None, bool]] = []
    if isinstance(permission, OperandHolder | SingleOperandHolder):
        for operand in (permission.op1_class, getattr(permission, "op2_class", None)):
            if operand is not None:
                found.extend(permission_policies(operand, depth + 1))
    return found


def _django_request(request: Request | HttpRequest) -> HttpRequest:
    inner = getattr(request, "_request", request)
    if not isinstance(inner, HttpRequest):
        raise TypeError("not a Django request")
    return inner


def _view_policy(request: Request) -> tuple[str | None, bool]:
    """The view's one named policy, and whether it sits only inside DRF operators.

    From the view's ``bbverify_policy`` attribute if set, else from the
    :class:`HasPipelinePolicy` entries of its ``permission_classes``. Read
    statically: calling ``get_permissions()`` while DRF authenticates would
    re-enter authentication when it reads ``request.user``.
    """
    view = (getattr(request, "parser_context", None) or {}).get("view")
    declared = getattr(view, "bbverify_policy", None)
    if isinstance(declared, str):
        return declared, False
    found = [item for entry in getattr(view, "permission_classes", ()) for item in permission_policies(entry)]
    names = {name for name, _ in found}
    if len(names) != 1:
        return None, False
    return names.pop(), all(composed for _, composed in found)


class PipelineAuthentication(BaseAuthentication):
    """DRF authentication by a Bitbucket Pipelines OIDC token (``Authorization: Bearer``).

    ``authenticate`` returns ``(PipelineUser, PipelineClaims)``, so the claims
    are ``request.auth``; it returns ``None`` when the request has no bearer
    token (no header, or another scheme), letting other authentication classes
    try. A bearer token that is invalid or denied raises
    :class:`PipelineAuthError` (401, 403, 400 or 503). The token is checked
    under the named policy of the view's :class:`HasPipelinePolicy` when it has
    exactly one (or the view's ``bbverify_policy`` attribute, for views that
    build their permissions in ``get_permissions()``), else under the default
    policy; when that policy appears only inside DRF's ``|``/``&``/``~``, a
    token it denies leaves the request unauthenticated (``None``) for the
    permissions to decide. ``authenticate_header`` gives
    the Bearer challenge, so DRF answers 401 (not 403) when a permission finds
    no credentials.
    """

    @sensitive_variables()
    def authenticate(self, request: Request) -> tuple[PipelineUser, PipelineClaims] | None:
        policy, composed = _view_policy(request)
        guard = _guard(policy)
        try:
            claims = verify_request(guard, _django_request(request), optional=True)
        except PolicyDenied as exc:
            if composed:
                # The policy sits inside `|`/`&`: not a pipeline identity here,
                # and the permissions (HasPipelinePolicy among them) decide.
                return None
            raise _refuse(guard, exc) from None
        except VerificationError as exc:
            raise _refuse(guard, exc) from None
        if claims is None:
            return None  # no bearer token: other authentication classes may try
        return PipelineUser(claims), claims

    def authenticate_header(self, request: Request) -> str:
        return f'Bearer realm="{quote_header_value(get_config().guard.realm, 100)}"'


class HasPipelinePolicy(OperationHolderMixin, BasePermission):
    """Permission: the request carries a pipeline token that the named policy admits.

    ``HasPipelinePolicy("deploy")`` goes straight into ``permission_classes``
    (DRF calls it to get the permission; it returns itself).
    ``HasPipelinePolicy()`` applies the default policy. The token is verified
    here whatever the authentication classes did (the verifier caches it, so a
    second check costs microseconds).

    Listed directly in the view's ``permission_classes``, a refusal is
    bbverify's own answer: no token is a 401 with the Bearer challenge, a
    denial a 403 ``insufficient_scope``, exactly as the other adapters answer.
    Inside DRF's operators (``HasPipelinePolicy("deploy") | IsAdminUser``,
    two instances OR-ed, ``&``, ``~``) or returned by ``get_permissions()``,
    it returns ``False`` instead, so the other operand is tried and DRF
    renders its own denial (401 with the Bearer challenge when nobody
    authenticated, else 403).

    Policy names are checked at start-up by the system check
    ``bbverify.E004`` (``permission_classes``, composed or not, and
    ``get_permissions()`` where it can be called without a request); a name
    the check could not see raises
    :class:`~django.core.exceptions.ImproperlyConfigured` at request time.
    """

    def __init__(self, policy: str | None = None) -> None:
        if policy is not None and (not isinstance(policy, str) or not policy):
            raise ConfigurationError(f"a policy name is a non-empty string, not {policy!r}", key="policy")
        self.policy = policy

    def __call__(self) -> HasPipelinePolicy:
        return self

    def __repr__(self) -> str:
        return f"HasPipelinePolicy({self.policy!r})"

    @sensitive_variables()
    def has_permission(self, request: Request, view: Any) -> bool:
        guard = _guard(self.policy)
        try:
            verify_request(guard, _django_request(request))
        except VerificationError as exc:
            if self._listed_alone(view):
                raise _refuse(guard, exc) from None
            return False
        return True

    def _listed_alone(self, view: Any) -> bool:
        """True when this permission is an entry of ``view.permission_classes`` (not an operand)."""
        for entry in getattr(view, "permission_classes", ()):
            if entry is self or (entry is HasPipelinePolicy and type(self) is HasPipelinePolicy
                                 and self.policy is None):
                return True
        return False


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
