"""The Django and DRF adapters fail closed: route policies follow the resolved view, exclusions
never open a view, tokens never reach error pages, on_error never becomes a 500, misspelt
policies and settings are errors (ids f01-f14 of the security review in the section titles).

The URLconf with the tester's spellings is tests/djangoproj/attack_urls.py.
"""

from __future__ import annotations

import asyncio
import threading
import types
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("rest_framework")

from django_support import NAMED_POLICIES, bbverify_settings, setup_django

from bbverify.testing import FakeIssuer

pytestmark = pytest.mark.skipif(not NAMED_POLICIES, reason="named policies are not in this Verifier")

setup_django()

from django.core.cache import cache  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.decorators import method_decorator  # noqa: E402
from django.views import View  # noqa: E402
from rest_framework.decorators import api_view, throttle_classes  # noqa: E402
from rest_framework.permissions import IsAdminUser  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.throttling import UserRateThrottle  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from bbverify.django import PipelineAuthMiddleware, conf, require_pipeline  # noqa: E402
from bbverify.django.checks import check_settings  # noqa: E402
from bbverify.drf import HasPipelinePolicy, PipelineUser  # noqa: E402
from bbverify.errors import ConfigurationError  # noqa: E402
from bbverify.http import Guard  # noqa: E402
from bbverify.verifier import Verifier  # noqa: E402

ATTACK_URLS = "djangoproj.attack_urls"
MIDDLEWARE = ["bbverify.django.PipelineAuthMiddleware", "django.middleware.locale.LocaleMiddleware"]
I18N = {"USE_I18N": True, "LANGUAGE_CODE": "en", "LANGUAGES": [("en", "English"), ("fr", "French")]}


def _auth(token: str | None) -> dict[str, Any]:
    return {} if token is None else {"headers": {"Authorization": f"Bearer {token}"}}


def _table(issuer: FakeIssuer) -> dict[str, Any]:
    table = bbverify_settings(issuer)
    table["policies"] = {
        "deploy": {"allow": [{"environments": [issuer.environment_uuid]}]},
        "release": {"allow": [{"branches": ["release"]}]},
    }
    return table


def attack(issuer: FakeIssuer, *, middleware: bool = True, adapter: dict[str, Any] | None = None,
           **extra: Any) -> Any:
    return override_settings(
        ROOT_URLCONF=ATTACK_URLS,
        MIDDLEWARE=MIDDLEWARE if middleware else [],
        BBVERIFY=_table(issuer),
        BBVERIFY_DJANGO=adapter or {},
        **I18N,
        **extra,
    )


class HostUrlconf:
    """Host-based URLconfs (as django-hosts does): ``ops.testserver`` is served by the attack URLconf."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        if request.get_host() == "ops.testserver":
            request.urlconf = ATTACK_URLS
        return self.get_response(request)


# -- f01: a route's policy follows the resolved view -------------------------------------------


def test_route_policy_follows_the_view_whatever_the_spelling(issuer: FakeIssuer) -> None:
    build = issuer.mint()
    deploy = issuer.mint(environment_uuid=issuer.environment_uuid)
    with attack(issuer, adapter={"routes": [{"url_name": "deploy", "policy": "deploy"}]}):
        assert check_settings() == []
        client = Client()
        for spelling in ("/deploy/", "/fr/deploy/", "/admin-deploy/", "/ADMIN-DEPLOY/", "/ns/deploy"):
            # Every URL of the view is under "deploy": the i18n prefix, the (?i) re_path and the
            # pattern named "ops:deploy" (not the routed name) included.
            denied = client.get(spelling, **_auth(build))
            assert denied.status_code == 403, (spelling, denied.content)
            assert client.get(spelling, **_auth(deploy)).status_code == 200, spelling


def test_route_policy_under_a_host_based_urlconf(issuer: FakeIssuer) -> None:
    build = issuer.mint()
    deploy = issuer.mint(environment_uuid=issuer.environment_uuid)
    adapter = {"routes": [{"url_name": "deploy", "policy": "deploy"}]}
    with override_settings(
        ROOT_URLCONF="djangoproj.urls",
        ALLOWED_HOSTS=["testserver", "ops.testserver"],
        MIDDLEWARE=[f"{__name__}.HostUrlconf", *MIDDLEWARE],
        BBVERIFY=_table(issuer),
        BBVERIFY_DJANGO=adapter,
        **I18N,
    ):
        client = Client(HTTP_HOST="ops.testserver")
        assert client.get("/deploy/", **_auth(build)).status_code == 403
        assert client.get("/deploy/", **_auth(deploy)).status_code == 200
        assert Client().get("/deploy/", **_auth(deploy)).status_code == 404  # not in ROOT_URLCONF


def test_route_mistakes_are_system_check_errors(issuer: FakeIssuer) -> None:
    with attack(issuer, adapter={"routes": [{"url_name": "deplyo", "policy": "deploy"}]}):
        errors = check_settings()
        assert [e.id for e in errors] == ["bbverify.E003"]
        assert "no URL pattern is named 'deplyo' (did you mean 'deploy'?)" in errors[0].msg
    two = [{"url_name": "deploy", "policy": "deploy"}, {"url_name": "ops:deploy", "policy": "release"}]
    with attack(issuer, adapter={"routes": two}):
        errors = check_settings()
        assert [e.id for e in errors] == ["bbverify.E003"], errors
        assert "gets the policies deploy, release" in errors[0].msg
        # At run time both apply: fail closed.
        deploy = issuer.mint(environment_uuid=issuer.environment_uuid)
        assert Client().get("/deploy/", **_auth(deploy)).status_code == 403
        both = issuer.mint(environment_uuid=issuer.environment_uuid, branch="release")
        assert Client().get("/deploy/", **_auth(both)).status_code == 200


# -- f07: an excluded path never reaches a protected view ----------------------------------------


def test_exclusions_never_open_a_view_served_elsewhere(issuer: FakeIssuer) -> None:
    adapter = {"exclude_prefixes": ["/public/"], "exclude_paths": ["/healthz"]}
    with attack(issuer, adapter=adapter):
        client = Client()
        for spelling in ("/api/v1/secrets", "/public/api/v1/secrets", "/public/../api/v1/secrets",
                         "/api/v2/secrets/", "/public/api/v2/secrets/"):
            refused = client.get(spelling)
            assert refused.status_code == 401, (spelling, refused.content)
            assert b"s3cr3t" not in refused.content
        # Views reachable only under the exclusions stay open.
        assert client.get("/public/readme").json() == {"file": "readme"}
        assert client.get("/healthz").json() == {"ok": True}
        assert client.get("/public/readme", **_auth(issuer.mint())).status_code == 200


def test_exclude_prefix_slash_is_refused(issuer: FakeIssuer) -> None:
    verifier = Verifier(issuer=issuer.issuer, audience=issuer.audience)
    with pytest.raises(ConfigurationError, match="exclude_prefixes: '/' would serve every path"):
        Guard(verifier, exclude_prefixes=["/public/", "/"])
    with attack(issuer, adapter={"exclude_prefixes": ["/"]}):
        assert [e.id for e in check_settings()] == ["bbverify.E003"]
        with pytest.raises(ImproperlyConfigured, match="exclude_prefixes"):
            PipelineAuthMiddleware(lambda request: None)


# -- f14: the middleware follows override_settings ------------------------------------------------


def test_middleware_follows_override_settings_after_its_first_request(issuer: FakeIssuer) -> None:
    with attack(issuer):
        client = Client()
        assert client.get("/healthz").status_code == 401
        with override_settings(BBVERIFY_DJANGO={"exclude_paths": ["/healthz"]}):
            assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 401


# -- f06 (a): no settings build on the event loop --------------------------------------------------


def test_settings_are_built_at_start_up_and_rebuilt_off_the_loop(
    issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.apps import apps

    with attack(issuer, middleware=False):
        conf.reset()
        apps.get_app_config("bbverify").ready()
        assert conf.built_config() is not None  # AppConfig.ready built it

        conf.reset()
        threads: list[threading.Thread] = []
        real = conf.build_config

        def recording(settings: Any) -> Any:
            threads.append(threading.current_thread())
            return real(settings)

        monkeypatch.setattr(conf, "build_config", recording)

        async def first_use() -> tuple[int, threading.Thread]:
            response = await AsyncClient().get("/decorated-async-probe")
            return response.status_code, threading.current_thread()

        urls = types.ModuleType("f06_urls")

        @require_pipeline
        async def probe(request: HttpRequest) -> JsonResponse:
            return JsonResponse({"ok": True})

        urls.urlpatterns = [path("decorated-async-probe", probe)]  # type: ignore[attr-defined]
        with override_settings(ROOT_URLCONF=urls):
            conf.reset()
            status, loop_thread = asyncio.run(first_use())
        assert status == 401
        assert threads and all(t is not loop_thread for t in threads), threads


# -- f08: no token in Django's error reports -------------------------------------------------------


def test_error_page_never_shows_the_token(issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Verifier, token: str, **kwargs: Any) -> Any:
        copy = token  # noqa: F841 - a local holding the token, as a real frame would

        def deeper(held: str) -> None:
            try:
                raise ValueError("inner")
            except ValueError as exc:
                raise RuntimeError("a bug below the flow") from exc

        deeper(token)

    monkeypatch.setattr(Verifier, "verify", boom)
    token = issuer.mint()
    signature = token.rsplit(".", 1)[1].encode()
    with attack(issuer, DEBUG=True):
        response = Client(raise_request_exception=False).get("/healthz", **_auth(token))
    assert response.status_code == 500
    assert b"a bug below the flow" in response.content  # the report is there...
    assert signature not in response.content  # ...without the token


def test_drf_error_page_never_shows_the_token(issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Guard, authorization: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a bug holding {len(authorization)} header")

    monkeypatch.setattr(Guard, "verify", boom)
    token = issuer.mint()
    with attack(issuer, middleware=False, DEBUG=True):
        response = Client(raise_request_exception=False).get("/drf/status", **_auth(token))
    assert response.status_code == 500
    assert token.rsplit(".", 1)[1].encode() not in response.content


# -- f02 / f03: on_error answers never become a 500 -------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "status", "body", "header"),
    [
        ("djangoproj.hooks.plain_text", 401, b"denied\n", ("Content-Type", "text/plain")),
        ("djangoproj.hooks.retry_date", 503, b"{}", ("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT")),
    ],
)
def test_drf_sends_any_error_response_of_on_error(
    issuer: FakeIssuer, hook: str, status: int, body: bytes, header: tuple[str, str]
) -> None:
    with override_settings(BBVERIFY=bbverify_settings(issuer), BBVERIFY_DJANGO={"on_error": hook},
                           MIDDLEWARE=[]):
        for where in ("/api/default", "/decorated"):
            response = Client(raise_request_exception=False).get(where)
            assert response.status_code == status, (where, response.content)
            assert response.content == body
            assert response[header[0]] == header[1]


def test_on_error_drf_response_is_rendered_everywhere(issuer: FakeIssuer) -> None:
    with override_settings(BBVERIFY=bbverify_settings(issuer), MIDDLEWARE=[],
                           BBVERIFY_DJANGO={"on_error": "djangoproj.hooks.drf_response"}):
        for middleware, where in (([], "/decorated"), (["bbverify.django.PipelineAuthMiddleware"], "/plain"),
                                  ([], "/api/default")):
            with override_settings(MIDDLEWARE=middleware):
                response = Client(raise_request_exception=False).get(where)
                assert response.status_code == 401, (where, response.content)
                assert response.json() == {"denied": "missing_token"}


def test_async_on_error_is_refused_at_start_up(issuer: FakeIssuer) -> None:
    with override_settings(BBVERIFY=bbverify_settings(issuer),
                           BBVERIFY_DJANGO={"on_error": "djangoproj.hooks.async_hook"}):
        errors = check_settings()
        assert [e.id for e in errors] == ["bbverify.E003"]
        assert "is an async function" in errors[0].msg
        with pytest.raises(ImproperlyConfigured, match="async"):
            PipelineAuthMiddleware(lambda request: None)


# -- f04: misspelt policies in composed / dynamic DRF permissions -----------------------------------


def test_policy_typos_in_drf_compositions_are_system_check_errors(issuer: FakeIssuer) -> None:
    class Composed(APIView):
        permission_classes = [HasPipelinePolicy("deplyo") | IsAdminUser]

    class Negated(APIView):
        permission_classes = [~HasPipelinePolicy("relase")]

    class Dynamic(APIView):
        def get_permissions(self) -> list[Any]:
            return [HasPipelinePolicy("dploy")]

    @method_decorator(require_pipeline(policy="deplo"), name="dispatch")
    class Plain(View):
        pass

    urls = types.ModuleType("f04_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("composed", Composed.as_view()), path("negated", Negated.as_view()),
        path("dynamic", Dynamic.as_view()), path("cbv", Plain.as_view()),
    ]
    with override_settings(ROOT_URLCONF=urls, BBVERIFY=_table(issuer), MIDDLEWARE=[]):
        errors = check_settings()
    assert {e.id for e in errors} == {"bbverify.E004"}
    assert sorted(e.msg.split("uses policy ")[1].split(":")[0] for e in errors) == [
        "'deplo'", "'deplyo'", "'dploy'", "'relase'"
    ]


# -- f05: HasPipelinePolicy composes with | -------------------------------------------------------


def test_has_pipeline_policy_composes_with_or(issuer: FakeIssuer) -> None:
    build = issuer.mint()
    deploy = issuer.mint(environment_uuid=issuer.environment_uuid)
    release = issuer.mint(branch="release")
    with attack(issuer, middleware=False):
        bastion = Client(REMOTE_ADDR="10.9.9.9")
        outside = Client()
        assert bastion.get("/drf/either").json() == {"pipeline": False}
        assert bastion.get("/drf/either", **_auth(build)).status_code == 200
        assert outside.get("/drf/either", **_auth(deploy)).json() == {"pipeline": True}
        refused = outside.get("/drf/either", **_auth(build))
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"].startswith("Bearer realm=")
        # Two instances OR-ed.
        assert outside.get("/drf/either-policy", **_auth(deploy)).status_code == 200
        assert outside.get("/drf/either-policy", **_auth(release)).status_code == 200
        assert outside.get("/drf/either-policy", **_auth(build)).status_code in (401, 403)
        assert outside.get("/drf/either-policy").status_code == 401


# -- f11: authentication never calls get_permissions() -------------------------------------------


def test_authentication_does_not_reenter_through_get_permissions(issuer: FakeIssuer) -> None:
    with attack(issuer, middleware=False):
        client = Client()
        assert client.get("/drf/status").json() == {"pipeline": False}
        deploy = issuer.mint(environment_uuid=issuer.environment_uuid)
        assert client.get("/drf/status", **_auth(deploy)).json() == {"pipeline": True}
        # The view's bbverify_policy applies while authenticating.
        assert client.get("/drf/status", **_auth(issuer.mint())).status_code == 403


# -- f13: one throttle bucket per repository --------------------------------------------------------


class ThreePerHour(UserRateThrottle):
    rate = "3/hour"


def test_drf_throttles_per_repository(issuer: FakeIssuer) -> None:
    @api_view(["POST"])
    @throttle_classes([ThreePerHour])
    def throttled(request: Request) -> Response:
        return Response({"by": request.auth.repository_uuid})

    urls = types.ModuleType("f13_urls")
    urls.urlpatterns = [path("throttled", throttled)]  # type: ignore[attr-defined]
    noisy = issuer.mint(repository_uuid="{11111111-1111-4111-8111-111111111111}")
    other = issuer.mint(repository_uuid="{22222222-2222-4222-8222-222222222222}")
    cache.clear()
    with override_settings(ROOT_URLCONF=urls, BBVERIFY=_table(issuer), MIDDLEWARE=[]):
        client = Client()
        codes = [client.post("/throttled", **_auth(noisy)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert client.post("/throttled", **_auth(other)).status_code == 200
    cache.clear()
    claims = Verifier(issuer=issuer.issuer, audience=issuer.audience).verify(noisy)
    user = PipelineUser(claims)
    assert user.pk == user.id == "{11111111-1111-4111-8111-111111111111}"


# -- f09: settings that silently turn protection off ----------------------------------------------


@pytest.mark.parametrize("name", ["MIDDLEWARES", "MIDDLEWARE_CLASSES"])
def test_middleware_under_a_setting_django_ignores(issuer: FakeIssuer, name: str) -> None:
    with override_settings(BBVERIFY=bbverify_settings(issuer), MIDDLEWARE=[],
                           **{name: ["bbverify.django.PipelineAuthMiddleware"]}):
        errors = check_settings()
        assert [e.id for e in errors] == ["bbverify.E006"]
        assert f"settings.{name} lists bbverify.django.PipelineAuthMiddleware" in errors[0].msg
    with override_settings(BBVERIFY=bbverify_settings(issuer),
                           MIDDLEWARE=["bbverify.django.PipelineAuthMiddleware"],
                           **{name: ["bbverify.django.PipelineAuthMiddleware"]}):
        assert check_settings() == []  # a stale copy next to the real one is harmless


def test_misspelt_rest_framework_key(issuer: FakeIssuer) -> None:
    from django.conf import settings

    block = {**settings.REST_FRAMEWORK, "DEFAULT_PERMISSION_CLASS": ["bbverify.drf.HasPipelinePolicy"]}
    with override_settings(BBVERIFY=bbverify_settings(issuer), REST_FRAMEWORK=block):
        errors = check_settings()
    assert [e.id for e in errors] == ["bbverify.E007"]
    assert "REST_FRAMEWORK['DEFAULT_PERMISSION_CLASS']" in errors[0].msg
    assert "DEFAULT_PERMISSION_CLASSES" in (errors[0].hint or "")

