"""Flask integration: pipeline tokens for Flask views (an extension and a view decorator).

::

    from flask import Flask
    from bbverify.flask import BBVerify, current_claims, require_pipeline

    app = Flask(__name__)
    app.config["BBVERIFY_WORKSPACE"] = "acme"
    app.config["BBVERIFY_WORKSPACE_UUID"] = "{...}"
    BBVerify(app)

    @app.post("/deploy")
    @require_pipeline(None, Environments("{production-env-uuid}"))
    def deploy():
        return {"repository": current_claims().repository_uuid}

``require_pipeline(verifier, *route_rules, policy=None)`` takes a
:class:`~bbverify.Verifier`, or ``None`` to use the app's :class:`BBVerify`
extension; ``policy`` names one of the verifier's named policies
(``@require_pipeline(policy="deploy")``). The verified claims are in
``flask.g.pipeline_claims`` and :func:`current_claims`; the client address the
rules saw in :func:`current_client_ip`. Both are also in ``request.environ``
under the keys every adapter uses (``bbverify.http.request_claims(request)``
and ``bbverify.http.request_client_ip(request)`` read them).
``require_pipeline(optional=True)`` lets a request without ``Authorization``
through with no claims (a bad token is still refused). Refusals use the RFC 6750 JSON answer of
:mod:`bbverify.http`. Works with blueprints and ``app.test_client()``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, has_app_context, make_response, request
from flask.typing import ResponseReturnValue

from .bearer import DEFAULT_REALM, check_realm
from .claims import PipelineClaims
from .errors import ConfigurationError, VerificationError
from .guard import ErrorHandler, Guard, Refusal, route_policies
from .identity import CLIENT_IP_KEY
from .paths import routing_path
from .policies import Rule, as_rules
from .proxies import TrustedProxiesSpec
from .verifier import Verifier
from .wsgi import environ_request

__all__ = ["BBVerify", "current_claims", "current_client_ip", "require_pipeline", "send_error"]

F = TypeVar("F", bound=Callable[..., Any])
EXTENSION_KEY = "bbverify"
#: Attribute marking a view decorated by :func:`require_pipeline` that names a policy.
_POLICY_ATTR = "__bbverify_policy__"
#: ``app.config`` keys read by the extension itself rather than the verifier.
ADAPTER_SETTINGS = ("BBVERIFY_TRUSTED_PROXIES", "BBVERIFY_REALM")


class BBVerify:
    """Flask extension holding the app's verifier and adapter settings.

    Args:
        app: the Flask app (or call :meth:`init_app` later, for app factories).
        verifier: a ready :class:`~bbverify.Verifier`; by default one is built
            from ``app.config`` with :func:`bbverify.config.verifier_from_env`
            (``BBVERIFY_WORKSPACE``, ``BBVERIFY_AUDIENCE``, ...).
        trusted_proxies: overrides ``app.config["BBVERIFY_TRUSTED_PROXIES"]``
            (a hop count or CIDRs; see :func:`bbverify.http.client_ip`).
        realm: overrides ``app.config["BBVERIFY_REALM"]``.
        on_error: ``on_error(error)`` returning an
            :class:`~bbverify.http.ErrorResponse` or any Flask response value.
        policy: the named policy for views whose decorator names none
            (``None``: the verifier's default policy, if any).

    Configuration errors surface at start-up: in :meth:`init_app`, including
    unknown policy names on views already registered with the app, and when
    a view (or a blueprint's) is registered after it, whatever the order.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        verifier: Verifier | None = None,
        trusted_proxies: TrustedProxiesSpec = None,
        realm: str | None = None,
        on_error: ErrorHandler | None = None,
        policy: str | None = None,
    ) -> None:
        self._verifier = verifier
        self._trusted_proxies = trusted_proxies
        # Checked now (the one realm check, bearer.check_realm): "" or 0 is a mistake, not "use the default".
        self._realm = realm if realm is None else check_realm(realm)
        self._on_error = on_error
        self._policy = policy
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build the verifier for ``app`` and register the extension on it."""
        verifier = self._verifier
        if verifier is None:
            from .config import verifier_from_env

            verifier = verifier_from_env(cast(Mapping[str, Any], app.config), ignore=ADAPTER_SETTINGS)
        trusted = self._trusted_proxies
        if trusted is None:
            trusted = app.config.get("BBVERIFY_TRUSTED_PROXIES")
        realm = self._realm
        if realm is None:
            configured = app.config.get("BBVERIFY_REALM")
            realm = DEFAULT_REALM if configured is None else check_realm(configured, key="BBVERIFY_REALM")
        app.extensions[EXTENSION_KEY] = _State(verifier, trusted, realm, self._on_error, self._policy)
        # Views registered already are checked now; views registered later (the usual
        # order: BBVerify(app) first, routes below, blueprints after) are checked as
        # Flask stores them, so a misspelt policy fails at start-up, never per request.
        app.view_functions = _CheckedViews(app.view_functions, verifier)

    @staticmethod
    def verifier_for(app: Flask) -> Verifier:
        """The verifier the extension built for ``app``."""
        return _state(app).verifier


class _CheckedViews(dict[str, Any]):
    """``app.view_functions`` that checks a decorated view's policy name when it is stored.

    Flask stores every view with ``view_functions[endpoint] = view`` (in
    ``add_url_rule``, for app routes and blueprints alike), which is the one
    moment the view, its endpoint and the app are all known.
    """

    def __init__(self, views: Mapping[str, Any], verifier: Verifier) -> None:
        super().__init__()
        self.verifier = verifier
        self.update(views)

    def __setitem__(self, endpoint: str, view: Any) -> None:
        named = getattr(view, _POLICY_ATTR, None)
        if named is not None:
            self.verifier.check_policy(named, key=f"view {endpoint!r}: policy")
        super().__setitem__(endpoint, view)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for endpoint, view in dict(*args, **kwargs).items():
            self[endpoint] = view

    def setdefault(self, endpoint: str, view: Any = None) -> Any:
        if endpoint not in self:
            self[endpoint] = view
        return self[endpoint]


class _State:
    def __init__(
        self,
        verifier: Verifier,
        trusted: TrustedProxiesSpec,
        realm: str,
        on_error: ErrorHandler | None,
        policy: str | None,
    ) -> None:
        # Building a Guard checks the settings now rather than at the first request.
        self.base = Guard(verifier, trusted_proxies=trusted, realm=realm, on_error=on_error, policy=policy)
        self.verifier = verifier
        self._guards: dict[object, Guard] = {}

    def guard(
        self,
        key: object,
        rules: tuple[Rule, ...],
        trusted: TrustedProxiesSpec = None,
        realm: str | None = None,
        on_error: ErrorHandler | None = None,
        policy: str | None = None,
    ) -> Guard:
        """The guard of one decorated view under this app's settings (built once)."""
        guard = self._guards.get(key)
        if guard is None:
            base = self.base
            guard = Guard(
                base.verifier,
                rules,
                trusted_proxies=trusted if trusted is not None else base.trusted_proxies,
                realm=realm if realm is not None else base.realm,
                on_error=on_error or base.on_error,
                policy=policy if policy is not None else base.policy,
            )
            self._guards[key] = guard
        return guard


def _state(app: Flask) -> _State:
    state = app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, _State):
        raise RuntimeError("bbverify: call BBVerify(app) or BBVerify().init_app(app) first")
    return state


def current_claims() -> PipelineClaims:
    """The claims verified for the current request by :func:`require_pipeline`.

    Raises ``RuntimeError`` when the current view is not protected.
    """
    claims = g.get("pipeline_claims")
    if not isinstance(claims, PipelineClaims):
        raise RuntimeError("no verified pipeline claims here; decorate the view with @require_pipeline")
    return claims


def current_client_ip() -> str | None:
    """The client address the rules saw for the current request (``None``: unknown).

    Raises ``RuntimeError`` when the current view is not protected.
    """
    current_claims()
    value = request.environ.get(CLIENT_IP_KEY)
    return value if isinstance(value, str) else None


def send_error(refusal: Refusal) -> ResponseReturnValue:
    """The Flask answer for ``refusal``: ``on_error``'s response value if it chose one, else the refusal."""
    if refusal.native is not None:
        return make_response(refusal.native)
    return current_app.response_class(refusal.body, status=refusal.status, headers=list(refusal.headers))


def require_pipeline(
    verifier: Verifier | None = None,
    *route_rules: Rule,
    policies: Rule | Sequence[Rule] | None = None,
    trusted_proxies: TrustedProxiesSpec = None,
    realm: str | None = None,
    on_error: ErrorHandler | None = None,
    policy: str | None = None,
    optional: bool = False,
) -> Callable[[F], F]:
    """Decorate a view so that it needs a valid pipeline token.

    ``verifier`` is a :class:`~bbverify.Verifier`, or ``None`` to use the
    :class:`BBVerify` extension of the current app (its trusted proxies,
    realm, ``on_error`` and policy apply unless given here). ``policies``
    (or, the older spelling, positional ``route_rules``; not both) are added
    to the verifier's own rules for this view. ``policy`` names one
    of the verifier's named policies; an unknown name raises
    ``ConfigurationError`` here (with an explicit verifier, or inside an app
    context), else in :meth:`BBVerify.init_app` for views registered before
    it, else when the view is registered on an app that has the extension. With
    ``optional=True`` a request without an ``Authorization`` header reaches
    the view with no claims (``flask.g.pipeline_claims`` is ``None``); a
    request with a bad token is refused as usual.
    """
    if not isinstance(optional, bool):
        raise ConfigurationError("must be True or False", key="optional")
    if verifier is not None and not isinstance(verifier, Verifier):
        raise ConfigurationError(
            "require_pipeline(verifier, *rules) needs a Verifier or None first "
            "(write @require_pipeline() to use the app's BBVerify extension)",
            key="verifier",
        )
    if realm is not None:
        check_realm(realm)  # now, also when the app's extension supplies the rest
    rules = as_rules(route_policies(policies, route_rules))
    own: Guard | None = None
    if verifier is not None:
        own = Guard(
            verifier,
            rules,
            trusted_proxies=trusted_proxies,
            realm=realm if realm is not None else DEFAULT_REALM,
            on_error=on_error,
            policy=policy,
        )
    else:
        if policy is not None and has_app_context():
            state = current_app.extensions.get(EXTENSION_KEY)
            if isinstance(state, _State):
                state.verifier.check_policy(policy)
        # Check the rules now; the guard itself needs the app's settings.
        for i, rule in enumerate(rules):
            if not callable(rule):
                raise ConfigurationError(f"{rule!r} is not a rule (a callable)", key=f"route_rules[{i}]")
    key = object()

    def guard_now() -> Guard:
        if own is not None:
            return own
        return _state(current_app).guard(key, rules, trusted_proxies, realm, on_error, policy)

    def check() -> ResponseReturnValue | None:
        guard = guard_now()
        environ = request.environ
        reused = guard.reused(environ)
        if reused is None:
            authorization, peer, forwarded = environ_request(environ)
            if optional and not authorization:
                g.pipeline_claims = None
                return None
            context = guard.context(peer, forwarded, request.method, routing_path(request.path))
            try:
                reused = guard.verify(authorization, context=context)
            except VerificationError as exc:
                return send_error(guard.refusal(exc))
            guard.store(environ, reused, context.client_ip)
        g.pipeline_claims = reused
        return None

    def decorate(view: F) -> F:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                refused = check()
                if refused is not None:
                    return refused
                return await view(*args, **kwargs)

            if own is None and policy is not None:
                setattr(async_wrapper, _POLICY_ATTR, policy)
            return cast(F, async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            refused = check()
            if refused is not None:
                return refused
            return view(*args, **kwargs)

        if own is None and policy is not None:
            setattr(wrapper, _POLICY_ATTR, policy)
        return cast(F, wrapper)

    return decorate
