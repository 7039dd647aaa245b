"""WSGI entry point: ``gunicorn django_app.wsgi`` (from the examples directory)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")
application = get_wsgi_application()
