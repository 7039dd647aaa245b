"""Recording decisions: each allow or deny goes to the audit logger and the ``on_decision`` hook.

Every call of :meth:`bbverify.Verifier.verify` ends in one :class:`Decision`,
built by :func:`record` from the request's
:class:`~bbverify.context.RequestContext`; adapters that refuse a request
before the verifier sees it (no token, a malformed ``Authorization`` header,
a route that denies, a missing scope) go through
:meth:`bbverify.Verifier.record_refusal`, which calls :func:`record` once
with the route's policy and, when the claims are known, their workspace and
issuer.
It is logged on the ``bbverify.audit`` logger (INFO for allow, WARNING for
deny) and passed to the verifier's ``on_decision`` hook, if any. A decision
names the pipeline, never the token.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .claims import PipelineClaims
from .context import RequestContext
from .errors import PolicyDenied, VerificationError

__all__ = [
    "AUDIT_LOGGER",
    "Decision",
    "DecisionHook",
    "emit",
    "record",
    "wanted",
]

AUDIT_LOGGER = logging.getLogger("bbverify.audit")
_log = logging.getLogger("bbverify")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one verification, for audit logs and metrics.

    ``workspace`` is the token's ``workspaceUuid``; ``workspace_name`` and
    ``issuer`` name the configured workspace the token was matched to by its
    ``iss`` (known from the plausibility check on, so also for a bad
    signature; ``None`` for a token whose issuer is not trusted). ``policy``
    is the named policy the call applied, if any.
    """

    allowed: bool
    code: str  #: ``"ok"`` when allowed, else the error's stable code
    status_code: int  #: 200 when allowed, else the HTTP status of the error
    rule: str | None  #: the rule that denied, for policy denials
    message: str
    client_ip: str | None
    workspace: str | None = None
    repository: str | None = None
    environment: str | None = None
    pipeline: str | None = None
    step: str | None = None
    branch: str | None = None
    method: str | None = None  #: the HTTP request method, when an adapter verified a request
    path: str | None = None  #: the path the application routes on (see ``bbverify.http.routing_path``)
    workspace_name: str | None = None
    issuer: str | None = None
    policy: str | None = None

    @classmethod
    def build(
        cls,
        claims: PipelineClaims | None,
        client_ip: str | None,
        error: VerificationError | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        workspace_name: str | None = None,
        issuer: str | None = None,
        policy: str | None = None,
    ) -> Decision:
        """Describe an allow (``error`` is None) or a denial of one request (``method``, ``path``)."""
        ids: dict[str, Any] = claims.summary() if claims is not None else {}
        ids["method"] = method
        ids["path"] = path
        if error is None:
            return cls(
                True, "ok", 200, None, "allowed", client_ip, **ids,
                workspace_name=workspace_name, issuer=issuer, policy=policy,
            )  # fmt: skip
        rule = error.rule if isinstance(error, PolicyDenied) else None
        return cls(
            False, error.code, error.status_code, rule, error.message, client_ip, **ids,
            workspace_name=workspace_name, issuer=issuer, policy=policy,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """A plain dict, ready for JSON logs."""
        # Every field is a str, int, bool or None, so a shallow dict equals
        # dataclasses.asdict() at a tenth of its cost (it deep-copies each value).
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(Decision))

DecisionHook = Callable[[Decision], object]


def wanted(allowed: bool, hook: DecisionHook | None) -> bool:
    """Whether a decision would reach anyone (a hook, or an enabled audit level).

    Lets the verifier skip building a :class:`Decision` nobody reads: on the
    cached path that construction would cost more than the rest of the call.
    """
    return hook is not None or AUDIT_LOGGER.isEnabledFor(logging.INFO if allowed else logging.WARNING)


# A value made only of these is written bare; anything else (a space, '=', a quote,
# non-ASCII, a control character) is written as a JSON string literal, the logfmt
# convention, so a client-chosen path or a claim cannot add or fake fields.
_BARE = re.compile(r"[A-Za-z0-9_.:/{}@+,~%*!()\[\]-]+")


def _field(value: object) -> str:
    """One logfmt value: ``None`` bare, safe text bare, everything else quoted and escaped."""
    if value is None:
        return "None"
    if not isinstance(value, str):
        # A caller's bytes or number (a script passing client_ip=b"...") is logged
        # as its repr, quoted like any text: the audit line never raises.
        value = repr(value)
    if value != "None" and _BARE.fullmatch(value):
        return value
    # ensure_ascii escapes every non-ASCII character too (U+2028, U+0085, bidi controls),
    # so the line stays one line whatever the log handler does with Unicode. Spaces and
    # '=' are escaped as well (still one valid JSON string): grep-based alerting that looks
    # for " allow " or "client_ip=" then never matches text a client chose.
    return json.dumps(value, ensure_ascii=True).replace(" ", "\\u0020").replace("=", "\\u003d")


def emit(decision: Decision, hook: DecisionHook | None) -> None:
    """Log ``decision`` on the audit logger and pass it to ``hook``."""
    level = logging.INFO if decision.allowed else logging.WARNING
    if AUDIT_LOGGER.isEnabledFor(level):
        AUDIT_LOGGER.log(
            level,
            "%s code=%s rule=%s repository=%s environment=%s pipeline=%s step=%s client_ip=%s"
            " method=%s path=%s workspace=%s policy=%s",
            "allow" if decision.allowed else "deny",
            _field(decision.code),
            _field(decision.rule),
            _field(decision.repository),
            _field(decision.environment),
            _field(decision.pipeline),
            _field(decision.step),
            _field(decision.client_ip),
            _field(decision.method),
            _field(decision.path),
            _field(decision.workspace_name),
            _field(decision.policy),
            extra={"bbverify": decision.as_dict()},
        )
    if hook is not None:
        try:
            hook(decision)
        except Exception:
            # A broken metrics hook must not change the decision.
            _log.exception("on_decision hook raised; ignored")


def record(
    error: VerificationError | None,
    context: RequestContext,
    hook: DecisionHook | None,
    *,
    claims: PipelineClaims | None = None,
    workspace_name: str | None = None,
    issuer: str | None = None,
    policy: str | None = None,
) -> None:
    """Record the :class:`Decision` of one request: an allow when ``error`` is ``None``, else a refusal.

    The client IP, method and path come from ``context``; ``claims`` are the
    verified claims when known (a rule's denial, say). Nothing is built when
    nobody would read it (:func:`wanted`). ``hook`` is the verifier's
    ``on_decision`` (``verifier.on_decision``).
    """
    if not wanted(error is None, hook):
        return
    decision = Decision.build(
        claims,
        context.client_ip,
        error,
        method=context.method,
        path=context.path,
        workspace_name=workspace_name,
        issuer=issuer,
        policy=policy,
    )
    emit(decision, hook)
