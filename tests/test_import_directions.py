"""DESIGN.md's dependency directions, checked on the source: which project packages each package may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "workloads", "forecasters", "optimizers", "workers", "simulator", "executors", "db", "controller")

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "workloads": {"core"},
    "forecasters": {"core", "workloads"},
    "optimizers": {"core"},
    "workers": {"core"},
    "simulator": {"core", "workloads", "workers"},
    "executors": {"core"},
    "db": {"core"},
    "controller": set(PACKAGES),
}
# The simulator may use only the pure-Python parts of workers (no torch in a simulation).
SIMULATOR_WORKERS_MODULES = {"workers", "workers.scheduler", "workers.kv_pool"}
# Modules of workers that the simulator shares must stay free of torch.
PURE_WORKER_MODULES = ("workers/scheduler.py", "workers/kv_pool.py")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_design_allows(package: str) -> None:
    bad = []
    for path in _sources(package):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_simulator_uses_only_pure_worker_modules() -> None:
    bad = []
    for path in _sources("simulator"):
        for name in _imports(path):
            if name.split(".")[0] == "workers":
                module = ".".join(name.split(".")[:2])
                if module not in SIMULATOR_WORKERS_MODULES and name not in SIMULATOR_WORKERS_MODULES:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def _pure_closure() -> set[Path]:
    """The shared modules and every workers module they import, transitively."""
    seen: set[Path] = set()
    todo = [ROOT / m for m in PURE_WORKER_MODULES]
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "workers" and len(parts) > 1:
                todo.append(ROOT / "workers" / f"{parts[1]}.py")
    return seen


def test_shared_engine_logic_does_not_import_torch() -> None:
    closure = _pure_closure()
    assert {ROOT / m for m in PURE_WORKER_MODULES} <= closure
    heavy = {
        str(p.relative_to(ROOT)): [n for n in _imports(p) if n.split(".")[0] in {"torch", "triton"}] for p in closure
    }
    heavy = {k: v for k, v in heavy.items() if v}
    assert not heavy, f"modules the simulator shares must stay pure Python: {heavy}"


def test_every_package_docstring_says_what_it_may_import() -> None:
    for package in PACKAGES:
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
        assert "May import" in doc, f"{package}/__init__.py docstring must say what it may import"
