"""The Python samples issue 11 added to the docs run as they stand (each in a fresh namespace)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
# One marker per sample: the recipe or API each one documents.
SAMPLES = {
    "adapters.md": [
        "from bbverify.starlette import PipelineAuthBackend, requires",
        "maybe = PipelineAuth(verifier, auto_error=False)",
        "request_client_ip(environ)",
        "def make_app() -> PipelineAuthMiddleware:",
    ],
    "configuration.md": ["verifier_from_layers(path, environ, leeway=2)"],
}


def blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.mark.parametrize(("doc", "marker"), [(d, m) for d, ms in SAMPLES.items() for m in ms])
def test_sample_runs(doc: str, marker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.upper().startswith("BBVERIFY")]:
        monkeypatch.delenv(key)
    found = [b for b in blocks(doc) if marker in b]
    assert len(found) == 1, f"{doc}: no single sample containing {marker!r}"
    exec(compile(found[0], f"{doc}:{marker}", "exec"), {"__name__": "docs_sample"})


def test_nginx_recipe_is_the_tested_config() -> None:
    # The nginx lines of docs/adapters.md are the ones tests/servers.py gives nginx in test_proxies.
    from servers import nginx_config

    text = (DOCS / "adapters.md").read_text()
    recipe = re.search(r"```nginx\n(.*?)```", text, flags=re.S)
    assert recipe is not None
    tested = nginx_config("/tmp/x", 1, "unix:/run/app/app.sock")
    for line in recipe.group(1).splitlines():
        if line.strip() and line.strip() not in ("location / {", "}"):
            assert line.strip() in tested, line
