"""A fake Bitbucket Cloud REST API 2.0 on 127.0.0.1, for ``bbverify lookup`` tests.

Serves the shapes of ``GET /2.0/workspaces/{workspace}``,
``/2.0/repositories/{workspace}/{repo_slug}`` and
``/2.0/repositories/{workspace}/{repo_slug}/environments`` (paginated with
``page``/``pagelen`` and an absolute ``next`` URL, as Bitbucket does), through
the suite's loopback harness (``tests/loopback.py``).
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loopback import Answer, JSONServer, Request, json_answer


def braced() -> str:
    return "{" + str(uuid.uuid4()) + "}"


@dataclass
class FakeRepo:
    slug: str
    uuid: str = field(default_factory=braced)
    environments: list[tuple[str, str]] = field(default_factory=list)  # (name, uuid)


class FakeBitbucket:
    """``workspaces``: slug -> (uuid, {repo slug: FakeRepo}). ``mode`` forces an answer."""

    def __init__(self, *, pagelen: int = 2) -> None:
        self.workspaces: dict[str, tuple[str, dict[str, FakeRepo]]] = {}
        self.credentials: set[str] = set()  # accepted Authorization header values
        self.mode: tuple[int, dict[str, str]] | None = None  # (status, headers) for every request
        self.next_origin: str | None = None  # put 'next' links on another origin
        self.delay = 0.0
        self.pagelen = pagelen
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization)
        self._server = JSONServer(respond=self._respond)

    def add_workspace(self, slug: str, repos: list[FakeRepo]) -> str:
        ws_uuid = braced()
        self.workspaces[slug] = (ws_uuid, {r.slug: r for r in repos})
        return ws_uuid

    def allow_basic(self, user: str, secret: str) -> None:
        self.credentials.add("Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode())

    def allow_bearer(self, token: str) -> None:
        self.credentials.add(f"Bearer {token}")

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> FakeBitbucket:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    def _respond(self, request: Request) -> Answer:
        authorization = request.headers.get("Authorization")
        self.requests.append((request.path, authorization))
        if self.delay:
            time.sleep(self.delay)
        status, body, headers = self.answer(request.path, authorization)
        return json_answer(body, status, headers)

    def answer(self, raw_path: str, authorization: str | None) -> tuple[int, Any, dict[str, str]]:
        if self.mode is not None:
            status, headers = self.mode
            return status, {"type": "error", "error": {"message": "forced"}}, headers
        if authorization not in self.credentials:
            return 401, {"type": "error", "error": {"message": "Unauthorized"}}, {}
        parts = urlsplit(raw_path)
        segments = [s for s in parts.path.split("/") if s]
        not_found = (404, {"type": "error", "error": {"message": "not found"}}, {})
        if segments[:2] == ["2.0", "workspaces"] and len(segments) == 3:
            ws = self.workspaces.get(segments[2])
            if ws is None:
                return not_found
            return (
                200,
                {"type": "workspace", "uuid": ws[0], "slug": segments[2], "name": segments[2].title()},
                {},
            )
        if segments[:2] == ["2.0", "repositories"] and len(segments) in (4, 5):
            ws = self.workspaces.get(segments[2])
            repo = ws[1].get(segments[3]) if ws else None
            if repo is None:
                return not_found
            if len(segments) == 4:
                return (
                    200,
                    {
                        "type": "repository",
                        "uuid": repo.uuid,
                        "slug": repo.slug,
                        "full_name": f"{segments[2]}/{repo.slug}",
                    },
                    {},
                )
            if segments[4] != "environments":
                return not_found
            page = int(parse_qs(parts.query).get("page", ["1"])[0])
            start = (page - 1) * self.pagelen
            items = repo.environments[start : start + self.pagelen]
            body: dict[str, Any] = {
                "pagelen": self.pagelen,
                "page": page,
                "size": len(repo.environments),
                "values": [
                    {
                        "type": "deployment_environment",
                        "uuid": env_uuid,
                        "name": name,
                        "slug": name.lower(),
                        "environment_type": {"type": "deployment_environment_type", "name": "Production"},
                    }
                    for name, env_uuid in items
                ],
            }
            if start + self.pagelen < len(repo.environments):
                origin = self.next_origin or self.url
                body["next"] = f"{origin}{parts.path}?page={page + 1}"
            return 200, body, {}
        return not_found
