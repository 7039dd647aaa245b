"""Settings of the example Django project: a deploy API that only Bitbucket Pipelines steps can call.

Fill in your workspace (or set the environment variables) to run it for real;
``run.py --fake`` replaces them with a fake issuer on 127.0.0.1.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_app.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "bbverify.django",  # system checks: every BBVERIFY mistake is reported at start-up
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["bbverify.drf.PipelineAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["bbverify.drf.HasPipelinePolicy"],  # the default policy
    "UNAUTHENTICATED_USER": None,
    # Refusals byte for byte as every bbverify adapter answers them (RFC 6750 + JSON).
    "EXCEPTION_HANDLER": "bbverify.drf.exception_handler",
}

# The keys of the TOML [bbverify] table (docs/configuration.md).
PRODUCTION_ENV = os.environ.get("EXAMPLE_PRODUCTION_ENV", "{bd715740-4d0a-4d35-8c4e-1f0a2b3c4d5e}")
BBVERIFY = {
    "workspace": os.environ.get("EXAMPLE_WORKSPACE", "acme"),
    "workspace_uuid": os.environ.get("EXAMPLE_WORKSPACE_UUID", "{0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00}"),
    "default_policy": "build",
    "policies": {
        # Any step of this workspace (steps of at most two hours) may read.
        "build": {"allow": [{"max_step_minutes": 120}]},
        # Only deployment steps to production may deploy.
        "deploy": {"allow": [{"environments": [PRODUCTION_ENV]}]},
    },
}
BBVERIFY_DJANGO = {
    # Behind one reverse proxy, say 1; None (the default) trusts only REMOTE_ADDR.
    "trusted_proxies": None,
}
