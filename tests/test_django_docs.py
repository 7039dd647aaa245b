"""Every Python block of docs/django.md and the README's Django section runs as it stands (own process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")
pytest.importorskip("rest_framework")

ROOT = Path(__file__).resolve().parent.parent
BLOCK_RE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# A block that defines settings must also be valid settings, checked as Django would check them.
EPILOGUE = """
if "BBVERIFY" in dir():
    import types
    from bbverify.django.conf import build_config
    ours = {k: v for k, v in dict(globals()).items() if k.startswith("BBVERIFY")}
    build_config(types.SimpleNamespace(**ours))
    print("settings checked")
"""


def _blocks() -> list[tuple[str, str]]:
    found = [(f"docs/django.md#{i}", code) for i, code in enumerate(BLOCK_RE.findall(
        (ROOT / "docs" / "django.md").read_text()))]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Django and Django REST framework", 1)
    if len(section) == 2:
        body = section[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        found += [(f"README.md#django{i}", code) for i, code in enumerate(BLOCK_RE.findall(body))]
    return found


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[w for w, _ in _blocks()])
def test_block_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BBVERIFY_", "DJANGO"))}
    result = subprocess.run(
        [sys.executable, "-c", code + EPILOGUE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{where}:\n{result.stderr[-3000:]}"
    if re.search(r"^BBVERIFY\w* = ", code, re.M):
        assert "settings checked" in result.stdout
