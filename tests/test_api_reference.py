"""The API reference: docstring references resolve, and a broken one fails the build.

CI runs ``mkdocs build --strict`` on the real documentation (.ci/run). Here:
every Sphinx-style role in bbverify's docstrings (``:class:`~bbverify.Verifier```,
``:meth:`warm_up```) names something that exists, and the strict build really
fails on a docstring that documents a parameter the function does not have.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import bbverify

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?(\.?[\w.]+)`")
MODULES = [m.name for m in pkgutil.iter_modules(bbverify.__path__) if m.name != "__main__"]


def _resolve(module: ModuleType, target: str) -> None:
    """Find ``target`` as Sphinx would: absolute, module-relative, or a member of a class here."""
    parts = target.lstrip(".").split(".")
    if not target.startswith("."):
        for i in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for part in parts[i:]:
                if not hasattr(obj, part):
                    raise LookupError(f"{module.__name__}: {target!r} names nothing")
                obj = getattr(obj, part)
            return
    scopes: list[object] = [module]
    scopes += [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
    for scope in scopes:
        obj = scope
        try:
            for part in parts:
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return
    # An instance attribute (``#: ...`` documented, set in a method): ``self.name = ...``.
    assigned = re.compile(rf"\bself\.{re.escape(parts[-1])}\s*[:=]")
    for scope in scopes[1:]:
        if len(parts) == 1 and assigned.search(inspect.getsource(scope)):
            return
    raise LookupError(f"{module.__name__}: {target!r} names nothing")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_references_resolve(name: str) -> None:
    module = importlib.import_module(f"bbverify.{name}")
    source = inspect.getsource(module)
    for match in ROLE.finditer(source):
        _resolve(module, match.group(1))


def test_resolver_catches_a_broken_reference() -> None:
    with pytest.raises(LookupError):
        _resolve(bbverify, "bbverify.NoSuchThing")
    with pytest.raises(LookupError):
        _resolve(importlib.import_module("bbverify.verifier"), "nope_method")


def test_strict_build_fails_on_a_broken_docstring(tmp_path: Path) -> None:
    pytest.importorskip("mkdocstrings")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# x\n\n::: sample\n", encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: x\ntheme: {name: mkdocs}\nplugins:\n  - mkdocstrings:\n"
        "      handlers: {python: {paths: [.], options: {docstring_style: google}}}\n",
        encoding="utf-8",
    )

    def build(docstring: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "sample.py").write_text(
            f'def f(a: int) -> int:\n    """{docstring}"""\n    return a\n', encoding="utf-8"
        )
        return subprocess.run(
            # Not -q: it hides the warnings, and --strict then lets them pass (as .ci/run knows).
            [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    good = build("Double.\n\n    Args:\n        a: a number.\n    ")
    assert good.returncode == 0, good.stderr
    broken = build("Double.\n\n    Args:\n        b: not a parameter.\n    ")
    assert broken.returncode != 0
    assert "does not appear in the function signature" in broken.stderr
