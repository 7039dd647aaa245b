"""An ``on_error`` hook for the tests (``BBVERIFY_DJANGO["on_error"]``)."""

from __future__ import annotations

from django.http import JsonResponse

from bbverify.errors import VerificationError


def on_error(error: VerificationError) -> JsonResponse | None:
    if error.code == "expired":
        return None  # keep the default answer
    return JsonResponse({"refused": error.code}, status=error.status_code)


NOT_CALLABLE = 3


def drf_response(error: VerificationError) -> object:
    """A DRF ``Response``: rendered as JSON by the middleware and the decorator."""
    from rest_framework.response import Response

    return Response({"denied": error.code}, status=error.status_code)


def plain_text(error: VerificationError) -> object:
    """An ``ErrorResponse`` whose body is not JSON."""
    from bbverify.http import ErrorResponse

    headers = (("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="x"'))
    return ErrorResponse(401, headers, b"denied\n")


def retry_date(error: VerificationError) -> object:
    """An ``ErrorResponse`` whose ``Retry-After`` is an HTTP-date (RFC 9110 section 10.2.3)."""
    from bbverify.http import ErrorResponse

    return ErrorResponse(
        503, (("Content-Type", "application/json"), ("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT")), b"{}"
    )


async def async_hook(error: VerificationError) -> JsonResponse:
    return JsonResponse({"custom": True}, status=error.status_code)
