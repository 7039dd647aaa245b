"""Where a verified request's identity lives: the carrier keys, ``PipelineUser`` and the readers.

Every adapter stores the same four values under the same keys of the
request's carrier (ASGI scope, WSGI environ, Django ``request.META``):
:data:`CLAIMS_KEY`, :data:`CLIENT_IP_KEY`, :data:`VERIFIER_KEY` and
:data:`POLICY_KEY`. :func:`request_claims` and :func:`request_client_ip` read
them back from any framework's request. :class:`PipelineUser` is the one
user object the adapters hand to frameworks that want one.
"""

from __future__ import annotations

from collections.abc import Mapping

from .claims import PipelineClaims

__all__ = [
    "CLAIMS_KEY",
    "CLIENT_IP_KEY",
    "POLICY_KEY",
    "VERIFIER_KEY",
    "PipelineUser",
    "request_claims",
    "request_client_ip",
]

#: Where adapters put the verified claims (ASGI scope, WSGI environ).
CLAIMS_KEY = "bbverify.claims"
#: Where adapters put the client address the rules saw (for the app's own logs).
CLIENT_IP_KEY = "bbverify.client_ip"
#: Where adapters note which Verifier produced ``CLAIMS_KEY``.
VERIFIER_KEY = "bbverify.verifier"
#: Where adapters note the named policy (after the default) that ``CLAIMS_KEY`` passed.
POLICY_KEY = "bbverify.policy"


def request_claims(carrier: object) -> PipelineClaims | None:
    """The verified claims an adapter stored for a request, or ``None``.

    ``carrier`` is what the framework hands the application: an ASGI scope,
    a WSGI environ, or any object with a ``scope`` (Starlette/FastAPI
    ``Request``) or ``environ`` (Flask/Werkzeug ``request``) mapping. Every
    adapter stores the claims under :data:`CLAIMS_KEY`.
    """
    mapping = _carrier_mapping(carrier)
    claims = mapping.get(CLAIMS_KEY) if mapping is not None else None
    return claims if isinstance(claims, PipelineClaims) else None


def request_client_ip(carrier: object) -> str | None:
    """The client address the rules saw for a request (``str``), or ``None``.

    ``carrier`` as for :func:`request_claims`. Every adapter stores the
    address under :data:`CLIENT_IP_KEY` when it verified the request.
    """
    mapping = _carrier_mapping(carrier)
    value = mapping.get(CLIENT_IP_KEY) if mapping is not None else None
    return value if isinstance(value, str) else None


def _carrier_mapping(carrier: object) -> Mapping[str, object] | None:
    if isinstance(carrier, Mapping):
        return carrier
    for attribute in ("scope", "environ"):
        value = getattr(carrier, attribute, None)
        if isinstance(value, Mapping):
            return value
    return None



class PipelineUser:
    """The authenticated pipeline as a user object (one class for every adapter).

    ``claims`` holds the :class:`~bbverify.PipelineClaims`. The interface is
    what frameworks read from a user: Starlette's ``BaseUser``
    (``is_authenticated``, ``display_name``, ``identity``; the ASGI adapter
    puts one in ``scope["user"]``) and Django REST framework's
    ``request.user`` (``is_authenticated``, ``is_anonymous``, ``username``,
    ``pk``, the permission methods). Not a database user: a pipeline holds no
    Django permissions, only its policies.

    ``username`` is the token's ``sub`` (``{repositoryUuid}:{stepUuid}``, new
    for every step). ``pk`` and ``id`` are the repository UUID
    (``repositoryUuid``, ``str`` with braces): a stable identity per
    repository, so DRF's ``UserRateThrottle`` and ``ScopedRateThrottle``
    (which key users by ``pk``) give each repository its own bucket.
    """

    # Class attributes, not properties: DRF and Django read them on the class too.
    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, claims: PipelineClaims) -> None:
        self.claims = claims

    @property
    def display_name(self) -> str:
        """``repository {uuid}`` plus the environment for deployment steps."""
        name = f"repository {self.claims.repository_uuid}"
        if self.claims.deployment_environment_uuid:
            name += f" environment {self.claims.deployment_environment_uuid}"
        return name

    @property
    def identity(self) -> str:
        """The token's subject, ``sub`` (repository, environment and step)."""
        return self.claims.subject

    #: The token's ``sub``, as Django and DRF name a user's login.
    username = identity

    @property
    def pk(self) -> str:
        """The repository UUID (``str``, with braces): DRF's throttles key on it."""
        return self.claims.repository_uuid

    #: The repository UUID, as :attr:`pk`.
    id = pk

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj: object = None) -> bool:
        # Django permissions belong to database users; a pipeline has only its policies.
        return False

    def has_perms(self, perms: object, obj: object = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False

    def __str__(self) -> str:
        return self.username

    def __repr__(self) -> str:
        return f"PipelineUser({self.claims.subject!r})"
