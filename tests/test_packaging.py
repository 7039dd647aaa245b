"""Project files and package metadata (issue 17). CI (.ci/run) builds and installs the wheel itself."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_license_file_is_the_apache_2_0_text() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]


def test_changelog_follows_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "Keep a Changelog" in text and "Semantic Versioning" in text
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[0] == "Unreleased"
    assert PROJECT["version"] in headings
    for kind in re.findall(r"^### (\w+)", text, re.M):
        assert kind in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_metadata_has_urls_and_framework_classifiers() -> None:
    assert {"Homepage", "Source", "Issues", "Changelog", "Documentation"} <= set(PROJECT["urls"])
    classifiers = set(PROJECT["classifiers"])
    for framework in ("Pytest", "FastAPI", "Flask", "Django"):
        assert f"Framework :: {framework}" in classifiers


def test_readme_install_section_gives_installs_that_work_today() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    # Not published yet: no bare "pip install bbverify" from the index.
    assert not re.search(r"^pip install ['\"]?bbverify\b", install, re.M)
    assert "pip install ." in install and "python3 -m build" in install
    assert "dist/bbverify-" in install


def test_docs_extra_is_part_of_dev() -> None:
    extras = PROJECT["optional-dependencies"]
    assert any(dep.startswith("mkdocs>=") for dep in extras["docs"])
    assert any(dep.startswith("mkdocstrings[python]>=") for dep in extras["docs"])
    assert any(dep.startswith(("build>=", "build==")) for dep in extras["lint"])
    assert "docs" in extras["dev"][0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "mkdocs build --strict" in ci and "python -m build" in ci and "-py3-none-any.whl" in ci
    # --quiet hides mkdocs' warnings, and --strict then passes them.
    assert not re.search(r"mkdocs build[^\n]*(--quiet|-q\b)", ci)


def _shipped_texts() -> list[Path]:
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [ROOT / "README.md", *docs, *sorted((ROOT / "bbverify").rglob("*.py"))]


def test_no_install_line_asks_the_package_index_for_bbverify() -> None:
    """Not on PyPI yet: every install line, error message and docstring installs from a checkout (f08)."""
    pattern = re.compile(r"pip install[^\n`]*?['\"]?bbverify\[")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _shipped_texts()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits


def test_readme_install_section_lists_every_user_extra() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    tooling = {"test", "bench", "docs", "lint", "dev"}
    for extra in set(PROJECT["optional-dependencies"]) - tooling:
        assert f"pip install '.[{extra}]'" in install, extra


def test_docs_state_the_django_floor_pyproject_requires() -> None:
    extra = PROJECT["optional-dependencies"]["django"]
    (floor,) = [dep.split(">=", 1)[1] for dep in extra if dep.startswith("django>=")]
    text = (ROOT / "docs" / "django.md").read_text(encoding="utf-8")
    assert f"Django ({floor} or later)" in text
    assert not re.search(r"Django \((?!" + re.escape(floor) + r")[0-9.]+ or later\)", text)
