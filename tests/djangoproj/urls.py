from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.register("deployments", views.DeploymentViewSet, basename="deployments")

urlpatterns = [
    path("healthz", views.healthz),
    path("plain", views.plain, name="plain"),
    path("plain-async", views.plain_async),
    path("decorated", views.decorated),
    path("optional", views.optional),
    path("decorated-async", views.decorated_async),
    path("decorated-deploy", views.decorated_deploy),
    path("api/whoami", views.WhoAmI.as_view()),
    path("api/default", views.DefaultPolicy.as_view()),
    path("api/", include(router.urls)),
]
