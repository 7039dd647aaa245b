from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz),
    path("whoami", views.whoami),
    path("deploy", views.DeploymentViewSet.as_view({"post": "create"})),
]
