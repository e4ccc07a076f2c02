"""The import contract, read from the code (AST), not from a running process.

What each layer may import, at module level (imports inside functions load on use, and
``if TYPE_CHECKING:`` blocks never run):

- ``lifelong`` (the library) never imports ``service``; outside its job modules (which read
  a policy) it never imports ``policies`` either.
- ``policies`` imports nothing of ``lifelong`` or ``service``.
- Nothing the serving process loads reaches torch: every ``service`` module except the
  worker entry points, and every ``lifelong`` module that the service imports.

Imports are followed transitively through the repository's own modules, so a torch import
three modules away is caught where it enters, with the chain that leads to it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lifelong", "service", "policies")
WORKERS = {"service.export_worker", "service.adapt_worker", "service.worker_io"}
"""Worker entry points: separate processes, which load torch inside ``main`` when they run."""
POLICY_READERS = {"lifelong.adapt_job", "lifelong.bn_adapt_job"}
"""Library jobs that run on a policy handed to them (in a worker process)."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]) -> list[str]:
    out: list[str] = []
    for node in body:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]  # a submodule imported by name
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            out += _top_level_imports(node.body) + _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            out += _top_level_imports(node.body)
            for h in node.handlers:
                out += _top_level_imports(h.body)
            out += _top_level_imports(node.orelse) + _top_level_imports(node.finalbody)
    return out


@cache
def imports_of(module: str) -> frozenset[str]:
    """What ``module`` imports when it is imported: repository modules by their full name
    (and the packages above them, whose ``__init__`` runs), others by their top-level name."""
    known = _modules()
    tree = ast.parse(known[module].read_text(), filename=str(known[module]))
    out: set[str] = set()
    for name in _top_level_imports(tree.body):
        if name.split(".")[0] in PACKAGES:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in known and prefix != module:
                    out.add(prefix)
        else:
            out.add(name.split(".")[0])
    return frozenset(out)


def chain_to(module: str, target: str) -> list[str] | None:
    """The shortest import chain from ``module`` to ``target`` (a module or a top-level
    package name), or None."""
    seen, frontier = {module: [module]}, [module]
    while frontier:
        nxt = []
        for m in frontier:
            if m not in _modules():
                continue
            for dep in sorted(imports_of(m)):
                if dep in seen:
                    continue
                seen[dep] = seen[m] + [dep]
                if dep == target or dep.split(".")[0] == target:
                    return seen[dep]
                nxt.append(dep)
        frontier = nxt
    return None


def test_the_reader_finds_the_repository_and_follows_chains() -> None:
    mods = _modules()
    assert "lifelong.space" in mods and "service.daemon" in mods and "policies" in mods
    assert "torch" in imports_of("lifelong.supernet")
    chain = chain_to("lifelong.export_job", "torch")
    assert chain is not None and chain[0] == "lifelong.export_job" and chain[-1] == "torch"


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("lifelong")))
def test_the_library_never_imports_the_service(module: str) -> None:
    assert chain_to(module, "service") is None, " -> ".join(chain_to(module, "service") or [])
    if module not in POLICY_READERS:
        chain = chain_to(module, "policies")
        assert chain is None, f"the library reads policies only in its jobs: {' -> '.join(chain or [])}"


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("policies")))
def test_policies_import_nothing_of_ours(module: str) -> None:
    for other in ("lifelong", "service"):
        assert chain_to(module, other) is None, " -> ".join(chain_to(module, other) or [])


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("service") and m not in WORKERS))
def test_nothing_the_serving_process_loads_reaches_torch(module: str) -> None:
    chain = chain_to(module, "torch")
    assert chain is None, "torch in the serving process: " + " -> ".join(chain or [])


def test_modules_that_say_they_are_torch_free_are() -> None:
    claims = ("No torch here", "Torch-free", "torch-free")
    claimed = [m for m, p in _modules().items() if any(c in (ast.get_docstring(ast.parse(p.read_text())) or "") for c in claims)]  # fmt: skip
    assert {"lifelong.threads", "service.profile_status"} <= set(claimed), claimed
    bad = {m: chain_to(m, "torch") for m in claimed if chain_to(m, "torch") is not None}
    assert not bad, {m: " -> ".join(c or []) for m, c in bad.items()}
