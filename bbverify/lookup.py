"""Find the UUIDs behind workspace, repository and environment names (``bbverify lookup``).

Tokens carry UUIDs (``workspaceUuid``, ``repositoryUuid``,
``deploymentEnvironmentUuid``); people know slugs and environment names.
:func:`lookup` asks Bitbucket Cloud's REST API 2.0:

* ``GET /2.0/workspaces/{workspace}``: the workspace UUID,
* ``GET /2.0/repositories/{workspace}/{repo_slug}``: a repository UUID,
* ``GET /2.0/repositories/{workspace}/{repo_slug}/environments``: its
  deployment environments, paginated (``values`` and a ``next`` URL).

Credentials come from environment variables only (never a command-line flag,
which would land in shell history and process listings), first match wins:

==========================================  ===========================================
variables                                   sent as
==========================================  ===========================================
``BITBUCKET_ACCESS_TOKEN``                  ``Authorization: Bearer`` (a workspace,
                                            project or repository access token)
``BITBUCKET_EMAIL`` + ``BITBUCKET_API_TOKEN``  HTTP Basic (an Atlassian API token with
                                            read scopes for workspaces, repositories
                                            and pipelines)
``BITBUCKET_USERNAME`` + ``BITBUCKET_APP_PASSWORD``  HTTP Basic (a legacy app password)
==========================================  ===========================================

``BITBUCKET_API_URL`` overrides ``https://api.bitbucket.org`` (plain
``http://`` only on loopback, for tests). Requests follow no redirects and
no ``next`` link to another origin, so the credential goes nowhere else.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from .claims import try_normalize_uuid
from .errors import ConfigurationError, LookupFailed
from .fetch import check_fetch_url, private_session, read_body
from .workspaces import bitbucket_audience, bitbucket_issuer

__all__ = [
    "DEFAULT_API_URL",
    "Environment",
    "LookupFailed",
    "LookupResult",
    "Repository",
    "credentials_from_env",
    "lookup",
    "render_table",
    "render_toml",
]

DEFAULT_API_URL = "https://api.bitbucket.org"
MAX_PAGES = 50
MAX_BODY_BYTES = 1024 * 1024
_SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Environment:
    """A deployment environment: its name and braced UUID."""

    name: str
    uuid: str


@dataclass(frozen=True, slots=True)
class Repository:
    """A repository: its slug, braced UUID and deployment environments."""

    slug: str
    uuid: str
    environments: tuple[Environment, ...] = ()


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What ``bbverify lookup`` found."""

    workspace: str  #: the slug, as given (lowercase)
    workspace_uuid: str  #: braced, lowercase
    repositories: tuple[Repository, ...] = field(default=())

    @property
    def audience(self) -> str:
        """Bitbucket's default audience for this workspace's tokens."""
        return bitbucket_audience(self.workspace_uuid)

    @property
    def issuer(self) -> str:
        """The workspace's OIDC issuer URL."""
        return bitbucket_issuer(self.workspace)


def credentials_from_env(environ: Mapping[str, str]) -> tuple[str, str]:
    """``(header value for Authorization, which variables)`` from the environment.

    Raises :class:`ConfigurationError` naming the missing variable when none
    is set, or when only half of a pair is.
    """
    token = environ.get("BITBUCKET_ACCESS_TOKEN", "").strip()
    if token:
        return f"Bearer {token}", "BITBUCKET_ACCESS_TOKEN"
    for user_var, secret_var in (
        ("BITBUCKET_EMAIL", "BITBUCKET_API_TOKEN"),
        ("BITBUCKET_USERNAME", "BITBUCKET_APP_PASSWORD"),
    ):
        user, secret = environ.get(user_var, "").strip(), environ.get(secret_var, "").strip()
        if user and secret:
            pair = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
            return f"Basic {pair}", f"{user_var} + {secret_var}"
        if user or secret:
            given, missing = (user_var, secret_var) if user else (secret_var, user_var)
            raise ConfigurationError(f"is not set, but {given} is; set both", key=missing)
    raise ConfigurationError(
        "no Bitbucket credentials: set BITBUCKET_EMAIL and BITBUCKET_API_TOKEN (an Atlassian API "
        "token with read access to workspaces, repositories and pipelines), or BITBUCKET_ACCESS_TOKEN, "
        "or BITBUCKET_USERNAME and BITBUCKET_APP_PASSWORD",
        key="BITBUCKET_API_TOKEN",
    )


def _retry_after(value: str | None) -> int | None:
    # RFC 9110 section 10.2.3: delay-seconds or an HTTP-date.
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        return max(0, int(parsedate_to_datetime(value).timestamp() - time.time()))
    except (TypeError, ValueError, OverflowError):
        return None


class _Client:
    """GETs JSON from one origin, each request within ``timeout`` seconds in total."""

    def __init__(self, base_url: str, authorization: str, timeout: float, session: requests.Session) -> None:
        self.base = check_fetch_url(base_url.rstrip("/"), "BITBUCKET_API_URL")
        origin = urlsplit(self.base)
        self.origin = (origin.scheme, origin.netloc)
        self.authorization = authorization
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            raise ConfigurationError("must be between 0 and 300 seconds", key="timeout")
        self.timeout = float(timeout)
        self.session = session

    def get(self, url: str, what: str) -> dict[str, Any]:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self.origin:
            # A 'next' link elsewhere would carry the credential to another host.
            raise LookupFailed(f"Bitbucket pointed {what} at another origin ({parts.netloc}); not followed")
        headers = {
            "Authorization": self.authorization,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": "bbverify",
        }
        deadline = time.monotonic() + self.timeout
        answer = f"Bitbucket's answer for {what}"
        try:
            with self.session.get(
                url, headers=headers, timeout=self.timeout, allow_redirects=False, stream=True
            ) as resp:
                status = resp.status_code
                if status != 200:
                    raise _refusal(status, what, _retry_after(resp.headers.get("Retry-After")))
                too_large = LookupFailed(f"{answer} exceeds {MAX_BODY_BYTES} bytes")
                too_slow = LookupFailed(f"{answer} took more than {self.timeout:g} s")
                body = read_body(resp, MAX_BODY_BYTES, deadline, too_large, too_slow)
        except requests.RequestException as exc:
            raise LookupFailed(f"cannot reach {self.base} for {what}: {type(exc).__name__}") from None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise LookupFailed(f"Bitbucket's answer for {what} is not JSON", status=status) from None
        if not isinstance(data, dict):
            raise LookupFailed(f"Bitbucket's answer for {what} is not a JSON object", status=status)
        return data


def _refusal(status: int, what: str, retry_after: int | None) -> LookupFailed:
    if status == 401:
        message = (
            f"Bitbucket refused the credentials (401) for {what}: check the token or password, and "
            "for an API token that BITBUCKET_EMAIL is your Atlassian account email"
        )
    elif status == 403:
        message = (
            f"the credentials may not read {what} (403): the token needs read scopes for workspaces, "
            "repositories and pipelines (environments), and access to this workspace"
        )
    elif status == 404:
        message = f"{what} was not found (404): check the slug, or whether these credentials can see it"
    elif status == 429:
        wait = f"; retry in {retry_after} s" if retry_after is not None else "; retry later"
        message = f"Bitbucket rate-limited the lookup of {what} (429){wait}"
    else:
        message = f"Bitbucket answered HTTP {status} for {what}"
    return LookupFailed(message, status=status, retry_after=retry_after)


def _uuid(data: Mapping[str, Any], what: str) -> str:
    uuid = try_normalize_uuid(data.get("uuid"))
    if uuid is None:
        raise LookupFailed(f"Bitbucket's answer for {what} has no valid 'uuid'")
    return uuid


def _slug(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SLUG_RE.fullmatch(value):
        raise ConfigurationError(f"{value!r} is not a slug", key=what)
    return value


def lookup(
    workspace: str,
    repositories: Sequence[str] = (),
    *,
    authorization: str,
    base_url: str = DEFAULT_API_URL,
    timeout: float = 10.0,
    session: requests.Session | None = None,
) -> LookupResult:
    """Look up a workspace's UUID and, for each repository slug, its UUID and environments.

    ``authorization`` is the ``Authorization`` header value (see
    :func:`credentials_from_env`); ``timeout`` bounds each request, in
    seconds. Raises :class:`LookupFailed` for an answer other than 200
    (with a message for 401, 403, 404 and 429), and
    :class:`ConfigurationError` for a bad slug or base URL.
    """
    slug = bitbucket_issuer(workspace).split("/workspaces/", 1)[1].split("/", 1)[0]
    client = _Client(base_url, authorization, timeout, session or private_session())
    ws = client.get(f"{client.base}/2.0/workspaces/{quote(slug)}", f"workspace {slug!r}")
    found: list[Repository] = []
    for repo in repositories:
        repo_slug = _slug(repo, "repository")
        what = f"repository {slug}/{repo_slug}"
        base = f"{client.base}/2.0/repositories/{quote(slug)}/{quote(repo_slug)}"
        data = client.get(base, what)
        environments: list[Environment] = []
        url: str | None = base + "/environments"
        for _ in range(MAX_PAGES):
            if url is None:
                break
            page = client.get(url, f"the environments of {slug}/{repo_slug}")
            values = page.get("values")
            if not isinstance(values, list):
                raise LookupFailed(f"the environments page of {slug}/{repo_slug} has no 'values' list")
            for item in values:
                if isinstance(item, dict):
                    raw_name = item.get("name")
                    # Names reach a terminal and TOML comments: no control characters.
                    name = _CONTROL_RE.sub("", raw_name)[:200] if isinstance(raw_name, str) else "?"
                    environments.append(Environment(name, _uuid(item, "an environment")))
            nxt = page.get("next")
            url = nxt if isinstance(nxt, str) and nxt else None
        else:
            raise LookupFailed(f"more than {MAX_PAGES} pages of environments for {slug}/{repo_slug}")
        found.append(Repository(repo_slug, _uuid(data, what), tuple(environments)))
    return LookupResult(slug, _uuid(ws, f"workspace {slug!r}"), tuple(found))


def render_table(result: LookupResult) -> str:
    """A plain-text table of what was found."""
    rows: list[tuple[str, str, str]] = [
        ("workspace", result.workspace, result.workspace_uuid),
        ("audience", "(default)", result.audience),
        ("issuer", "", result.issuer),
    ]
    for repo in result.repositories:
        rows.append(("repository", repo.slug, repo.uuid))
        for env in repo.environments:
            rows.append(("environment", f"{repo.slug} / {env.name}", env.uuid))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  VALUE"]
    lines += [f"{k:<{widths[0]}}  {n:<{widths[1]}}  {v}" for k, n, v in rows]
    return "\n".join(lines) + "\n"


def render_toml(result: LookupResult) -> str:
    """A ready ``[bbverify]`` snippet: workspace, UUID pin, repositories, a deploy policy."""
    out = [
        "[bbverify]",
        f'workspace = "{result.workspace}"',
        f'workspace_uuid = "{result.workspace_uuid}"  # default audience: {result.audience}',
    ]
    if result.repositories:
        out += ["", "[bbverify.rules]", "repositories = ["]
        out += [f'    "{r.uuid}",  # {r.slug}' for r in result.repositories]
        out.append("]")
    deployable = [r for r in result.repositories if r.environments]
    if deployable:
        out += ["", "[bbverify.policies.deploy]", "allow = ["]
        for r in deployable:
            names = ", ".join(e.name for e in r.environments)
            envs = ", ".join(f'"{e.uuid}"' for e in r.environments)
            out.append(f"    # {r.slug}: {names}")
            out.append(f'    {{ repositories = ["{r.uuid}"], environments = [{envs}] }},')
        out.append("]")
    return "\n".join(out) + "\n"
