"""The example's views: a health check, a DRF viewset protected by the named policy "deploy"."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from rest_framework import viewsets
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from bbverify.drf import HasPipelinePolicy, PipelineAuthentication


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@api_view(["GET"])
def whoami(request: Request) -> Response:
    """Any step (the default policy "build"): who is calling."""
    return Response(dict(request.auth.summary()))


class DeploymentViewSet(viewsets.ViewSet):
    """POST /deploy: only tokens the "deploy" policy admits (deployment steps to production)."""

    authentication_classes = (PipelineAuthentication,)
    permission_classes = (HasPipelinePolicy("deploy"),)

    def create(self, request: Request) -> Response:
        claims = request.auth  # the verified PipelineClaims
        return Response({"deploying_to": claims.deployment_environment_uuid, "by": str(request.user)})
