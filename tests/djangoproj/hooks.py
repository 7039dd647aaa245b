"""An ``on_error`` hook for the tests (``BBVERIFY_DJANGO["on_error"]``)."""

from __future__ import annotations

from django.http import JsonResponse

from bbverify.errors import VerificationError


def on_error(error: VerificationError) -> JsonResponse | None:
    if error.code == "expired":
        return None  # keep the default answer
    return JsonResponse({"refused": error.code}, status=error.status_code)


NOT_CALLABLE = 3
