"""Django settings for bbverify's Django tests (a separate module: nothing leaks into other tests).

``BBVERIFY`` is replaced per test with ``override_settings`` (the fake issuer's
URL is only known at run time); the gunicorn/uvicorn tests read it from
``DJANGOPROJ_ISSUER`` / ``DJANGOPROJ_AUDIENCE`` / ``DJANGOPROJ_REPOSITORY`` instead.
"""

from __future__ import annotations

import os

SECRET_KEY = "bbverify-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
ROOT_URLCONF = "djangoproj.urls"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "bbverify.django",
]
MIDDLEWARE: list[str] = []
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["bbverify.drf.PipelineAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "bbverify.drf.exception_handler",
}

# Servers started by the tests pass the fake issuer in the environment.
BBVERIFY: dict[str, object] = {
    "issuer": os.environ.get("DJANGOPROJ_ISSUER", "https://issuer.invalid/oidc"),
    "audience": os.environ.get("DJANGOPROJ_AUDIENCE", "test-audience"),
}
if "DJANGOPROJ_REPOSITORY" in os.environ:
    BBVERIFY["workspace_uuid"] = os.environ["DJANGOPROJ_WORKSPACE_UUID"]
    BBVERIFY["rules"] = {
        "branches": ["main"],
        "max_step_minutes": 120,
        "repositories": [os.environ["DJANGOPROJ_REPOSITORY"]],
    }
if os.environ.get("DJANGOPROJ_MIDDLEWARE") == "1":
    MIDDLEWARE = ["bbverify.django.PipelineAuthMiddleware"]
    BBVERIFY_DJANGO = {"exclude_paths": ["/healthz"]}
