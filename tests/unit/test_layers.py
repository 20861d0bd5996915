"""The packages form layers that import one way (ARCHITECTURE.md), checked on every import statement
of every module, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"rlhf", "rlhf_core", "registry", "service", "workers", "training", "rlhf_serve", "benchmarks", "tests"}
# package -> what it may import from the project (a module and everything below it)
ALLOWED = {
    "training": {"training"},
    "rlhf_core": {"rlhf_core", "rlhf.v1", "training.config"},
    "registry": {"registry", "rlhf_core", "rlhf.v1"},
    "service": {"service", "registry", "rlhf_core", "rlhf.v1", "training"},
    "workers": {"workers", "registry", "rlhf_core", "rlhf.v1", "training"},
}
NOT_IN_TRAINING = {"redis", "celery", "grpc"}


def imported_names(path: Path) -> list[str]:
    """`a.b` for `import a.b`, `a.b.c` for `from a.b import c` (absolute imports only)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def within(name: str, modules: set[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_names(path):
            top = name.split(".")[0]
            if (top in PROJECT and not within(name, ALLOWED[package])) or (package == "training" and top in NOT_IN_TRAINING):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)
