"""Every sample in README.md and docs/*.md runs as it stands.

Blocks are found automatically: add a fenced block to README.md or any
``docs/*.md`` page and it is tested by the next run. What is run:

* every ```` ```python ```` block, executed on its own in a fresh namespace
  (top-level ``await`` is allowed). A block that defines ``test_*`` functions
  has them called afterwards, each argument taken by name from the namespace
  (``bbverify_issuer`` is there, as with the pytest plugin);
* every ```` ```toml ```` block: parsed with ``tomllib``; if it has a
  ``[bbverify]`` table it is loaded with ``bbverify.config.verifier_from_toml``;
* every ```` ```sh ````/``bash``/``shell``/``console``/``env`` block that assigns
  ``BBVERIFY_*`` variables: those assignments are loaded with
  ``bbverify.config.verifier_from_env``.

Markers (an HTML comment on the line right before the opening fence; it does
not show on GitHub or in the API reference):

* ``<!-- docs-test: skip reason="..." -->``: not run. A reason is required
  (say why: it starts a server forever, it needs Redis, ...).
* ``<!-- docs-test: continue -->``: run this Python block in the namespace the
  previous Python block of the same page left, as if they were one file (for
  a page that builds an example up step by step).

Samples are written as users would write them, with their imports. The only
names a Python block gets for free are this fixture namespace (documented in
CONTRIBUTING.md too), all from one fake Bitbucket workspace:

====================  ======================================================
``token``             a valid token of a deployment step, from ``FakeIssuer.mint()``
                      (default lifetime): workspace ``acme``, repository
                      ``{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}``, environment
                      ``{bd715740-4d0a-4d35-8c4e-1f0a2b3c4d5e}``, branch ``main``
``issuer``            the ``bbverify.testing.FakeIssuer`` that signs it
``bbverify_issuer``   the same issuer (for ``test_*`` functions)
``verifier``          ``Verifier(workspace="acme", workspace_uuid=WORKSPACE_UUID)``
``WORKSPACE_UUID``    ``0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00`` (the ``workspaceUuid``)
``REPOSITORY_UUID``   ``{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}``
``ENVIRONMENT_UUID``  ``{bd715740-4d0a-4d35-8c4e-1f0a2b3c4d5e}``
====================  ======================================================

The fake workspace's tokens carry the real issuer
``https://api.bitbucket.org/2.0/workspaces/acme/pipelines-config/identity/oidc``,
so samples use ``workspace="acme"`` as users do. Nothing reaches the internet:
while a sample runs, every HTTPS request is answered in-process (``responses``):
Bitbucket's discovery and ``keys.json`` for any workspace by the fake issuer,
``https://ip-ranges.atlassian.com/`` by the packaged sample feed
(``bbverify.ipranges.SAMPLE_FEED``); any other address fails with a
connection error. Loopback requests pass through to real servers. Samples run
with a temporary directory as the working directory and without any
``BBVERIFY*`` variable of the developer's environment.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import logging
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from bbverify.config import verifier_from_env, verifier_from_toml
from bbverify.ipranges import SAMPLE_FEED
from bbverify.testing import FakeIssuer
from bbverify.verifier import Verifier, bitbucket_issuer

ROOT = Path(__file__).resolve().parent.parent

WORKSPACE = "acme"
WORKSPACE_UUID = "0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00"
REPOSITORY_UUID = "{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}"
ENVIRONMENT_UUID = "{bd715740-4d0a-4d35-8c4e-1f0a2b3c4d5e}"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<what>skip|continue)\b(?P<rest>.*?)-->\s*$")
_PYTHON = {"python", "py", "python3"}
_SHELL = {"sh", "bash", "shell", "console", "env", "dotenv", "shell-session"}


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None = None  # "skip" or "continue"
    reason: str = ""
    chain: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_pages() -> list[Path]:
    """README.md, CONTRIBUTING.md and every page under docs/ (new pages are picked up)."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def parse_blocks(path: Path) -> list[Block]:
    """Fenced blocks of a Markdown page, with the marker that precedes each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group("fence"), (m.group("info").strip().split() or [""])[0].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(
                lines[i][len(m.group("indent")) :] if lines[i].startswith(m.group("indent")) else lines[i]
            )
            i += 1
        i += 1  # the closing fence
        block = Block(path, start + 1, lang, "\n".join(body) + "\n")
        prev = lines[start - 1] if start > 0 else ""
        mm = _MARKER.match(prev)
        if mm:
            block.marker = mm.group("what")
            reason = re.search(r'reason\s*=\s*"([^"]*)"|reason\s*=\s*(\S.*?)\s*$', mm.group("rest"))
            block.reason = (reason.group(1) or reason.group(2) or "").strip() if reason else ""
        blocks.append(block)
    return blocks


def _collect() -> tuple[list[Block], list[Block], list[Block], list[str]]:
    """Python chains, TOML blocks, env blocks, and marker mistakes."""
    python: list[Block] = []
    toml: list[Block] = []
    env: list[Block] = []
    mistakes: list[str] = []
    for page in doc_pages():
        last: Block | None = None
        for block in parse_blocks(page):
            if block.marker == "skip" and not block.reason:
                mistakes.append(f'{block.id}: docs-test skip needs reason="..."')
            if block.lang in _PYTHON:
                if block.marker == "continue":
                    if last is None:
                        mistakes.append(f"{block.id}: docs-test continue with no Python block before it")
                        continue
                    last.chain.append(block)
                else:
                    block.chain = [block]
                    python.append(block)
                    last = block
            elif block.marker == "continue":
                mistakes.append(f"{block.id}: docs-test continue applies to Python blocks only")
            elif block.lang == "toml":
                toml.append(block)
            elif block.lang in _SHELL and env_assignments(block.text):
                env.append(block)
    return python, toml, env, mistakes


def env_assignments(text: str) -> dict[str, str]:
    """``BBVERIFY_*=value`` words of a shell sample (continuations joined, quotes removed)."""
    found: dict[str, str] = {}
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if "BBVERIFY_" not in line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        for word in words:
            if word == "export":
                continue
            name, sep, value = word.partition("=")
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                break  # the command starts: assignments only come before it
            if name.startswith("BBVERIFY_"):
                found[name] = value
    return found


PYTHON_BLOCKS, TOML_BLOCKS, ENV_BLOCKS, MARKER_MISTAKES = _collect()


class DocsIssuer(FakeIssuer):
    """The fake issuer, answering as Bitbucket's issuer for workspace ``acme``."""

    @property
    def issuer(self) -> str:
        return bitbucket_issuer(self.workspace)


@pytest.fixture(scope="module")
def docs_issuer() -> DocsIssuer:
    issuer = DocsIssuer(WORKSPACE, workspace_uuid="{" + WORKSPACE_UUID + "}")
    issuer.repository_uuid = REPOSITORY_UUID
    issuer.environment_uuid = ENVIRONMENT_UUID
    return issuer


_BITBUCKET = re.compile(
    r"https://api\.bitbucket\.org/2\.0/workspaces/(?P<slug>[^/]+)/pipelines-config/identity/oidc"
    r"/(?P<what>\.well-known/openid-configuration|keys\.json)"
)


@pytest.fixture
def offline(docs_issuer: DocsIssuer) -> Iterator[responses.RequestsMock]:
    """Answer Bitbucket and the Atlassian feed in-process; refuse the rest of the internet."""

    def bitbucket(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        m = _BITBUCKET.fullmatch((request.url or "").split("?", 1)[0])
        if m is None:
            return 404, {}, "{}"
        issuer = bitbucket_issuer(m.group("slug"))
        if m.group("what") == "keys.json":
            body: Any = docs_issuer.jwks()
        else:
            body = {
                "issuer": issuer,
                "jwks_uri": issuer + "/keys.json",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(re.compile(r"http://(127\.0\.0\.1|localhost|\[::1\])[:/]"))
        mock.add_callback(responses.GET, re.compile(r"https://api\.bitbucket\.org/.*"), callback=bitbucket)
        feed = SAMPLE_FEED.read_text(encoding="utf-8")
        mock.add(
            responses.GET,
            re.compile(r"https://ip-ranges\.atlassian\.com/?(\?.*)?"),
            body=feed,
            content_type="application/json",
        )
        yield mock


def fixture_namespace(issuer: DocsIssuer, tmp_path: Path) -> dict[str, Any]:
    """The names every Python sample may use without defining them (see the module docs)."""
    return {
        "__name__": "__docs__",
        "token": issuer.mint(environment_uuid=ENVIRONMENT_UUID),
        "issuer": issuer,
        "bbverify_issuer": issuer,
        "verifier": Verifier(workspace=WORKSPACE, workspace_uuid=WORKSPACE_UUID),
        "WORKSPACE_UUID": WORKSPACE_UUID,
        "REPOSITORY_UUID": REPOSITORY_UUID,
        "ENVIRONMENT_UUID": ENVIRONMENT_UUID,
        "tmp_path": tmp_path,
    }


def run_python(source: str, filename: str, namespace: dict[str, Any]) -> None:
    """Execute ``source`` in ``namespace`` (top-level ``await`` allowed), then its ``test_*`` functions."""
    defined_before = set(namespace)
    code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    for name, value in list(namespace.items()):
        if name.startswith("test_") and name not in defined_before and inspect.isfunction(value):
            arguments = {p: namespace[p] for p in inspect.signature(value).parameters}
            outcome = value(**arguments)
            if inspect.iscoroutine(outcome):
                asyncio.run(outcome)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Samples read os.environ as users' programs do: the developer's own settings must not leak in.
    for key in [k for k in os.environ if k.upper().startswith(("BBVERIFY", "BB_VERIFY"))]:
        monkeypatch.delenv(key)
    cwd = os.getcwd()
    # Samples configure logging as an application would (the audit logger at
    # INFO, say): restore every logger's level so later tests see the defaults.
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    levels = [(logger, logger.level) for logger in loggers]
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)
        for logger, level in levels:
            logger.setLevel(level)
        known = {logger.name for logger in loggers}
        for name in list(logging.root.manager.loggerDict):
            if name not in known:
                logging.getLogger(name).setLevel(logging.NOTSET)  # created by a sample


def test_markers_are_well_formed() -> None:
    assert MARKER_MISTAKES == []


def test_the_harness_finds_the_samples() -> None:
    """A change to the parser that silently finds nothing must fail."""
    readme = [b for b in PYTHON_BLOCKS if b.path.name == "README.md"]
    assert len(readme) >= 5
    assert any(b.path.name == "configuration.md" for b in TOML_BLOCKS)
    assert any(b.path.name == "configuration.md" for b in ENV_BLOCKS)


def test_parser_reads_markers_and_env(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        'x\n<!-- docs-test: skip reason="starts a server" -->\n```python\nraise SystemExit\n```\n'
        "```python\na = 1\n```\n<!-- docs-test: continue -->\n```python\nassert a == 1\n```\n",
        encoding="utf-8",
    )
    blocks = parse_blocks(page)
    assert [(b.lang, b.marker, b.reason) for b in blocks] == [
        ("python", "skip", "starts a server"),
        ("python", None, ""),
        ("python", "continue", ""),
    ]
    assert env_assignments(
        "BBVERIFY_A=1 BBVERIFY_B='x y' \\\n  python -c 'BBVERIFY_C=2'\n# BBVERIFY_D=3\n"
    ) == {
        "BBVERIFY_A": "1",
        "BBVERIFY_B": "x y",
    }


def test_run_python_calls_test_functions_and_awaits(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"bbverify_issuer": "the issuer"}
    run_python(
        "import asyncio\nawait asyncio.sleep(0)\nseen = []\n"
        "def test_x(bbverify_issuer):\n    seen.append(bbverify_issuer)\n",
        "x.md:1",
        namespace,
    )
    assert namespace["seen"] == ["the issuer"]
    with pytest.raises(AssertionError):
        run_python("def test_fails():\n    assert False\n", "x.md:1", {})


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_sample(
    block: Block, docs_issuer: DocsIssuer, offline: responses.RequestsMock, in_tmp: Path
) -> None:
    namespace = fixture_namespace(docs_issuer, in_tmp)
    for part in block.chain:
        if part.marker == "skip":
            pytest.skip(f"{part.id}: {part.reason}")
        run_python(part.text, part.id, namespace)


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=lambda b: b.id)
def test_toml_sample(block: Block, offline: responses.RequestsMock, in_tmp: Path) -> None:
    if block.marker == "skip":
        pytest.skip(f"{block.id}: {block.reason}")
    document = tomllib.loads(block.text)
    if "bbverify" in document:
        path = in_tmp / "bbverify.toml"
        path.write_text(block.text, encoding="utf-8")
        assert isinstance(verifier_from_toml(path), Verifier)


@pytest.mark.parametrize("block", ENV_BLOCKS, ids=lambda b: b.id)
def test_env_sample(block: Block, offline: responses.RequestsMock) -> None:
    if block.marker == "skip":
        pytest.skip(f"{block.id}: {block.reason}")
    assert isinstance(verifier_from_env(env_assignments(block.text)), Verifier)


def test_offline_refuses_the_internet(offline: responses.RequestsMock) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get("https://example.com/", timeout=5)


# -- samples that must stay ------------------------------------------------------------------------

# One marker per sample that documents a recipe or an API (issue 11): test_python_sample runs each of
# them; this checks that each is still there, exactly once, and not skipped.
DOCUMENTED_SAMPLES = {
    "adapters.md": [
        "from bbverify.starlette import PipelineAuthBackend, requires",
        "maybe = PipelineAuth(verifier, auto_error=False)",
        "request_client_ip(environ)",
        "def make_app() -> PipelineAuthMiddleware:",
    ],
    "configuration.md": ["verifier_from_layers(path, environ, leeway=2)"],
}


@pytest.mark.parametrize(("doc", "marker"), [(d, m) for d, ms in DOCUMENTED_SAMPLES.items() for m in ms])
def test_documented_sample_is_present_and_run(doc: str, marker: str) -> None:
    # A chain is a block and the "continue" blocks run after it, in one namespace.
    found = [b for b in PYTHON_BLOCKS if b.path.name == doc for part in b.chain if marker in part.text]
    assert len(found) == 1, f"{doc}: no single sample containing {marker!r}"
    assert all(part.marker != "skip" for part in found[0].chain), f"{found[0].id} is skipped"


def test_nginx_recipe_is_the_tested_config() -> None:
    # The nginx lines of docs/adapters.md are the ones tests/servers.py gives nginx in test_proxies.
    from servers import nginx_config

    text = (ROOT / "docs" / "adapters.md").read_text()
    recipe = re.search(r"```nginx\n(.*?)```", text, flags=re.S)
    assert recipe is not None
    tested = nginx_config("/tmp/x", 1, "unix:/run/app/app.sock")
    for line in recipe.group(1).splitlines():
        if line.strip() and line.strip() not in ("location / {", "}"):
            assert line.strip() in tested, line
