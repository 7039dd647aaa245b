"""bbverify: accept Bitbucket Pipelines OIDC tokens instead of stored credentials.

>>> from bbverify import Verifier
>>> v = Verifier(workspace="acme", audience="ari:cloud:bitbucket::workspace/<uuid>")
>>> claims = v.verify(token, client_ip="203.0.113.7")  # doctest: +SKIP
"""

import logging

from .audit import Decision
from .claims import PipelineClaims, normalize_uuid
from .errors import (
    ConfigurationError,
    ErrorCode,
    InvalidToken,
    KeysUnavailable,
    PolicyDenied,
    VerificationError,
)
from .keys import RemoteKeySet, StaticKeySet
from .policies import RequestContext
from .verifier import Verifier, bitbucket_audience, bitbucket_issuer, verify
from .workspaces import WorkspaceSpec

__version__ = "0.1.0"

# A library leaves logging set-up to the application.
logging.getLogger("bbverify").addHandler(logging.NullHandler())

__all__ = [
    "ConfigurationError",
    "Decision",
    "ErrorCode",
    "InvalidToken",
    "KeysUnavailable",
    "PipelineClaims",
    "PolicyDenied",
    "RemoteKeySet",
    "RequestContext",
    "StaticKeySet",
    "VerificationError",
    "Verifier",
    "WorkspaceSpec",
    "__version__",
    "bitbucket_audience",
    "bitbucket_issuer",
    "normalize_uuid",
    "verify",
]
