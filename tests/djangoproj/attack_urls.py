"""A URLconf with the spellings a security tester used to reach views (tests/test_django_fail_closed.py).

One view under an i18n prefix and a case-insensitive ``re_path``; a
"secrets" view under an unanchored ``re_path`` and an optional-prefix regex
next to an excluded ``/public/`` prefix; DRF views that compose
``HasPipelinePolicy`` or read ``request.user`` in ``get_permissions()``.
"""

from __future__ import annotations

from typing import Any

from django.conf.urls.i18n import i18n_patterns
from django.http import HttpRequest, JsonResponse
from django.urls import include, path, re_path
from rest_framework.decorators import api_view
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bbverify.drf import HasPipelinePolicy


def deploy(request: HttpRequest) -> JsonResponse:
    claims = request.pipeline_claims  # type: ignore[attr-defined]
    return JsonResponse({"deployed_by": None if claims is None else claims.repository_uuid})


def secrets(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"secret": "s3cr3t"})


def static(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse({"file": name})


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


class FromBastion(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        return bool(request.META.get("REMOTE_ADDR") == "10.9.9.9")


class Either(APIView):
    permission_classes = [HasPipelinePolicy("deploy") | FromBastion]

    def get(self, request: Request) -> Response:
        return Response({"pipeline": request.auth is not None})


class EitherPolicy(APIView):
    permission_classes = [HasPipelinePolicy("deploy") | HasPipelinePolicy("release")]

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class Status(APIView):
    bbverify_policy = "deploy"

    def get_permissions(self) -> list[Any]:
        # The DRF idiom: permissions depend on who the caller is.
        if self.request.user is not None:
            return [HasPipelinePolicy("deploy")]
        return [AllowAny()]

    def get(self, request: Request) -> Response:
        return Response({"pipeline": request.user is not None})


@api_view(["POST"])
def throttled(request: Request) -> Response:
    return Response({"by": request.auth.repository_uuid})


urlpatterns = [
    re_path(r"(?i)^admin-deploy/$", deploy),
    re_path(r"api/v1/secrets", secrets),
    re_path(r"^(?:public/)?api/v2/secrets/$", secrets),
    path("public/<str:name>", static),
    path("healthz", healthz),
    path("drf/either", Either.as_view()),
    path("drf/either-policy", EitherPolicy.as_view()),
    path("drf/status", Status.as_view()),
    path("drf/throttled", throttled),
    path("ns/", include(([path("deploy", deploy, name="deploy")], "ops"))),
    *i18n_patterns(path("deploy/", deploy, name="deploy"), prefix_default_language=False),
]
