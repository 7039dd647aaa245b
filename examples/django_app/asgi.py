"""ASGI entry point: ``uvicorn django_app.asgi:application`` (from the examples directory)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")
application = get_asgi_application()
