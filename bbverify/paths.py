"""The path a request routes on, as ASGI and WSGI servers hand it over.

Exclusions, rules and audit records use this path, so an ASGI and a WSGI
deployment of the same configuration decide alike.
"""

from __future__ import annotations

__all__ = ["routing_path", "wsgi_path"]


def routing_path(path: str | None, root_path: str | None = None) -> str:
    """The path the wrapped application routes on.

    WSGI: ``PATH_INFO`` decoded by :func:`wsgi_path` (a dispatcher moves
    its prefix to ``SCRIPT_NAME``), so call it with ``root_path=None``. ASGI: ``path`` holds
    the full path and ``root_path`` the part consumed by mounts and the
    server's ``--root-path`` (ASGI HTTP scope spec; Starlette's ``Mount``
    since 0.35 extends ``root_path`` and leaves ``path`` whole), so the
    application routes on ``path`` minus a leading ``root_path``. An empty
    result is ``"/"``. Exclusions and audit records use this path, so an
    ASGI and a WSGI deployment of the same configuration decide alike.
    """
    text = path if isinstance(path, str) and path else "/"
    # The same cut as Starlette's router (starlette._utils.get_route_path):
    # only at a segment boundary, so "/v10" is not under "/v1".
    if root_path and isinstance(root_path, str) and text.startswith(root_path):
        rest = text[len(root_path) :]
        if not rest or rest.startswith("/"):
            text = rest or "/"
    return text


def wsgi_path(path_info: object) -> str:
    """``PATH_INFO`` decoded the PEP 3333 way: the server's bytes as latin-1, read as UTF-8.

    A WSGI server passes the URL-decoded path bytes as a latin-1 "native
    string" (PEP 3333, "Unicode Issues"), so ``/café`` arrives as ``/cafÃ©``.
    ASGI servers hand over the decoded text (uvicorn decodes UTF-8, invalid
    bytes become U+FFFD), and Werkzeug's ``request.path`` does the same as
    here, so exclusions and audit paths agree across ASGI, WSGI and Flask.
    A value that is not a latin-1 string (a server that already decoded it)
    is used as it is. Returns the path for :func:`routing_path`.
    """
    if not isinstance(path_info, str) or not path_info:
        return "/"
    if path_info.isascii():
        return path_info
    try:
        raw = path_info.encode("latin-1")
    except UnicodeEncodeError:
        return path_info
    return raw.decode("utf-8", errors="replace")

