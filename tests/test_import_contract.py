"""The import contract, read from the code (AST), not from a running process.

What each layer may import, at module level (imports inside functions load on use, and
``if TYPE_CHECKING:`` blocks never run):

- ``lifelong`` (the library) never imports ``service``; outside its job modules (which read
  a policy) it never imports ``policies`` either.
- ``policies`` imports nothing of ``lifelong`` or ``service``.
- Nothing the serving process loads reaches torch: every ``service`` module except the
  worker entry points, and every ``lifelong`` module that the service imports.
- Inside ``lifelong``, each sub-package's docstring states what it may import ("May import:
  ..."; words in parentheses are imports made inside functions) and whether it imports torch
  ("Never imports torch", optionally "except ``module``"). The docstring is the rule: this
  test reads it and checks every module of the package against it.

Imports are followed transitively through the repository's own modules, so a torch import
three modules away is caught where it enters, with the chain that leads to it.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lifelong", "service", "policies")
WORKERS = {"service.workers.export_worker", "service.workers.adapt_worker", "service.workers.worker_io"}
"""Worker entry points: separate processes, which load torch inside ``main`` when they run."""
POLICY_READERS = {"lifelong.jobs.adapt", "lifelong.jobs.bn_adapt"}
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
    assert "lifelong.space.config" in mods and "service.daemon.core" in mods and "policies" in mods
    assert "torch" in imports_of("lifelong.nn.supernet")
    chain = chain_to("lifelong.jobs.export", "torch")
    assert chain is not None and chain[0] == "lifelong.jobs.export" and chain[-1] == "torch"


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
    # nor the onnx package (about 25 MB with ml_dtypes): the service reads models with
    # onnxruntime and builds graphs only in the CLI's and the workers' functions
    chain = chain_to(module, "onnx")
    assert chain is None, "onnx in the serving process: " + " -> ".join(chain or [])


def test_modules_that_say_they_are_torch_free_are() -> None:
    claims = ("No torch here", "Torch-free", "torch-free")
    claimed = [m for m, p in _modules().items() if any(c in (ast.get_docstring(ast.parse(p.read_text())) or "") for c in claims)]  # fmt: skip
    assert {"lifelong.device.threads", "service.daemon.profile_status"} <= set(claimed), claimed
    bad = {m: chain_to(m, "torch") for m in claimed if chain_to(m, "torch") is not None}
    assert not bad, {m: " -> ".join(c or []) for m, c in bad.items()}


def _subpackages(top: str) -> list[str]:
    return sorted(p.parent.name for p in (ROOT / top).glob("*/__init__.py"))


def _top_modules(top: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / top).glob("*.py") if p.stem != "__init__")


@cache
def package_rule(top: str, package: str) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """``(may_import, torch_exempt)`` read from ``<top>/<package>/__init__.py``: the sibling
    packages and top-level modules of ``top`` it may import at module level (None: any), and
    the modules exempt from "never imports torch" (None: the package imports torch)."""
    doc = ast.get_docstring(ast.parse((ROOT / top / package / "__init__.py").read_text())) or ""
    said = re.search(r"May import: (.*?)\.\n", doc, re.S)
    assert said, f"{top}/{package}/__init__.py does not say what it may import ('May import: ...')"
    text = re.sub(r"\([^)]*\)", "", said.group(1))
    siblings = set(_subpackages(top) + _top_modules(top))
    may = None if "any package" in text else frozenset(re.findall(r"\b(\w+)\b", text)) & siblings
    torch = re.search(r"Never imports torch(?:, except ((?:``\w+``(?:, )?)+))?", doc)
    exempt = None if torch is None else frozenset(re.findall(r"``(\w+)``", torch.group(1) or ""))
    return may, exempt


def forbidden_imports(module: str, imported: frozenset[str]) -> list[str]:
    """The modules of its own top-level package that ``module`` imports at module level
    against its sub-package's rule."""
    parts = module.split(".")
    if len(parts) < 3 or parts[0] not in ("lifelong", "service"):
        return []
    top, own = parts[0], parts[1]
    may, _ = package_rule(top, own)
    if may is None:
        return []
    return sorted(m for m in imported if m.startswith(top + ".") and m.split(".")[1] not in {own, *may})


IN_SUBPACKAGES = sorted(m for m in _modules() if m.count(".") >= 2 and m.split(".")[0] in ("lifelong", "service"))


def _said_torch_free(module: str) -> bool:
    top, package, name = module.split(".")[:3]
    _, exempt = package_rule(top, package)
    return exempt is not None and name not in exempt


def test_every_subpackage_states_its_rule() -> None:
    assert {"space", "nn", "train", "data", "deploy", "device", "predictor", "search", "drift", "jobs", "persist"} <= set(_subpackages("lifelong"))  # fmt: skip
    assert {"daemon", "serving", "state", "drift", "workers", "api", "cli", "demo"} <= set(_subpackages("service"))
    for top in ("lifelong", "service"):
        for package in _subpackages(top):
            may, _ = package_rule(top, package)
            assert may is None or package not in may


@pytest.mark.parametrize("module", IN_SUBPACKAGES)
def test_each_subpackage_imports_only_what_its_docstring_allows(module: str) -> None:
    top, package = module.split(".")[:2]
    bad = forbidden_imports(module, imports_of(module))
    assert not bad, f"{module} imports {bad}; {top}/{package}/__init__.py allows {sorted(package_rule(top, package)[0] or [])}"  # fmt: skip


@pytest.mark.parametrize("module", [m for m in IN_SUBPACKAGES if _said_torch_free(m)])
def test_subpackages_that_never_import_torch_do_not(module: str) -> None:
    chain = chain_to(module, "torch")
    assert chain is None, "torch in a torch-free package: " + " -> ".join(chain or [])


def test_a_forbidden_import_is_caught_and_a_lazy_one_is_not() -> None:
    source = """
from lifelong.space.config import SubnetConfig
from lifelong.nn.supernet import Supernet
from service.daemon.core import Daemon

def later():
    from lifelong.train.trainer import TrainConfig
"""
    imported = frozenset(_top_level_imports(ast.parse(source).body))
    assert forbidden_imports("lifelong.space.fake", imported) == ["lifelong.nn.supernet", "lifelong.nn.supernet.Supernet"]  # fmt: skip
    assert forbidden_imports("lifelong.jobs.fake", imported) == [], "jobs may import any package"
    assert forbidden_imports("service.state.fake", imported) == ["service.daemon.core", "service.daemon.core.Daemon"]  # fmt: skip
    assert package_rule("lifelong", "deploy")[1] == {"export"} and package_rule("lifelong", "nn")[1] is None
    assert package_rule("service", "workers")[1] == {"adapt_worker", "export_worker", "worker_io"}
