"""The package's module structure: true ``__all__`` lists, cross-module imports of public names,
no import cycles, and a one-line job in every module docstring."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bbverify"
# Importing __main__ runs the command line.
NOT_IMPORTED = {"bbverify.__main__"}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every bbverify import in ``name``.

    Imports inside functions and ``if TYPE_CHECKING:`` blocks count too: a cycle
    deferred to call time is still a cycle.
    """
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "bbverify":
                target = node.module
            else:
                continue
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    found.append((node.lineno, f"{target}.{alias.name}", None))
                else:
                    found.append((node.lineno, target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "bbverify"]
    return found


def test_the_scan_sees_the_package() -> None:
    assert {"bbverify", "bbverify.verifier", "bbverify.errors", "bbverify.django.flow"} <= set(MODULES)
    assert ("bbverify.errors", "ConfigurationError") in {(m, n) for _, m, n in _imports("bbverify.config")}


@pytest.mark.parametrize("name", sorted(set(MODULES) - NOT_IMPORTED))
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list)
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
    assert len(module.__all__) == len(set(module.__all__))


def test_cross_module_imports_use_public_names() -> None:
    private = []
    for name in sorted(MODULES):
        for line, target, imported in _imports(name):
            if imported is None or target == name:
                continue
            if imported not in importlib.import_module(target).__all__:
                private.append(f"{name}:{line} imports {imported} from {target}")
    assert private == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self-loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph() -> dict[str, set[str]]:
    # The package root counts like any module: cli imports __version__ from it.
    return {
        name: {target for _, target, _ in _imports(name) if target in MODULES and target != name}
        for name in MODULES
    }


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_bbverify_modules() -> None:
    graph = _graph()
    assert {"bbverify.console", "bbverify.errors"} <= graph["bbverify.cli"], "the scan sees cli's imports"
    assert "bbverify.console" in graph["bbverify.demo"]
    assert _cycles(graph) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_states_its_job_in_its_docstrings_first_line(name: str) -> None:
    docstring = ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8")))
    assert docstring, f"{name} has no docstring"
    first, _, rest = docstring.partition("\n")
    # One summary sentence on its own line (PEP 257), then the details.
    assert first.endswith("."), first
    assert rest == "" or rest.startswith("\n"), f"{name}: the summary runs onto a second line"
    assert 10 < len(first) <= 106


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_architecture_names_only_modules_that_exist() -> None:
    import re

    section = _readme_section("Architecture")
    named = set(re.findall(r"`([a-z_]+\.py)`", section))
    assert named, "the architecture section names no module"
    files = {p.name for p in PACKAGE.rglob("*.py")}
    assert named <= files, f"README's architecture names modules that do not exist: {sorted(named - files)}"


def test_readme_places_every_module() -> None:
    """Every module is placed in the README: on the token's path (Architecture) or in the layout."""
    import re

    text = _readme_section("Architecture") + _readme_section("Development")
    named = set(re.findall(r"`([a-z_]+\.py|[a-z_]+/)`", text))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name in {"__init__.py", "__main__.py"}:
            continue
        if rel.name in named or (len(rel.parts) > 1 and f"{rel.parts[0]}/" in named):
            continue
        missing.append(str(rel))
    assert not missing, f"modules the README's Architecture/Development sections do not place: {missing}"


def test_readme_architecture_steps_name_real_functions() -> None:
    """The names the architecture section gives for the flow exist where it says."""
    from bbverify import audit, claims, context, guard, keys, token, verifier

    assert hasattr(verifier, "_Call") and hasattr(verifier._Call, "start")
    assert hasattr(keys.RemoteKeySet, "_look_up") and hasattr(keys.RemoteKeySet, "current_keys")
    assert hasattr(token, "JWSReader") and hasattr(token.CompactJWS, "verify_signature")
    assert hasattr(claims, "check_claims") and hasattr(claims.PipelineClaims, "from_payload")
    assert hasattr(context, "RequestContext") and hasattr(audit, "record")
    assert hasattr(guard, "Refusal") and hasattr(guard, "Guard")
    section = _readme_section("Architecture")
    for name in ("_Call", "_look_up", "current_keys", "JWSReader", "check_claims", "from_payload", "record"):
        assert name in section
