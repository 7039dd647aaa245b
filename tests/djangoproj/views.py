"""Views of the test project: plain (decorated or not), async, and DRF."""

from __future__ import annotations

import asyncio
import threading

from django.http import HttpRequest, JsonResponse
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bbverify.django import require_pipeline
from bbverify.drf import HasPipelinePolicy, PipelineAuthentication


def _answer(request: HttpRequest) -> JsonResponse:
    claims = getattr(request, "pipeline_claims", None)
    return JsonResponse(
        {
            "subject": None if claims is None else claims.subject,
            "client_ip": getattr(request, "pipeline_client_ip", None),
            "thread": threading.current_thread().name,
        }
    )


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def plain(request: HttpRequest) -> JsonResponse:
    """Not decorated: protected only when the middleware is on."""
    return _answer(request)


async def plain_async(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@require_pipeline
def decorated(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@require_pipeline(optional=True)
def optional(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@require_pipeline(policy="deploy")
def decorated_deploy(request: HttpRequest) -> JsonResponse:
    return _answer(request)


@require_pipeline()
async def decorated_async(request: HttpRequest) -> JsonResponse:
    # Proves the view ran on the event loop (no thread hop).
    asyncio.get_running_loop()
    return _answer(request)


class WhoAmI(APIView):
    """DRF with the default classes from settings (PipelineAuthentication + IsAuthenticated)."""

    def get(self, request: Request) -> Response:
        return Response({"subject": request.user.username, "repository": request.auth.repository_uuid})


class DefaultPolicy(APIView):
    authentication_classes = [PipelineAuthentication]
    permission_classes = [HasPipelinePolicy()]

    def get(self, request: Request) -> Response:
        return Response({"subject": request.auth.subject})


class DeploymentViewSet(viewsets.ViewSet):
    authentication_classes = [PipelineAuthentication]
    permission_classes = [HasPipelinePolicy("deploy")]

    def list(self, request: Request) -> Response:
        return Response({"environment": request.auth.deployment_environment_uuid})

    def create(self, request: Request) -> Response:
        return Response({"deploying": request.auth.deployment_environment_uuid}, status=201)


