"""The house rules, read from the code: the one-way flow and the contract written once.

Every module's imports (module level and inside functions) are read with ``ast``; nothing is
imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from common import checkpoint_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "api", "bench", "common", "datagen", "jobs", "pipelines", "train", "ui")
# Who may import whom (top-level package names); "app" is app.py.
ALLOWED = {
    "common": set(),
    "datagen": {"common"},
    "train": {"common", "datagen"},
    "pipelines": {"common"},
    # The app's training jobs run the training CLIs as processes; they import train/ only to check
    # a command line with the CLI's own parser and to export the reviewed images.
    "jobs": {"common", "train"},
    "ui": {"common", "jobs", "pipelines"},
    "api": {"common", "pipelines"},
    "app": {"api", "common", "jobs", "pipelines", "ui"},
    "bench": {"bench", "common", "datagen", "pipelines"},
}
# The benchmarks' shared harness; a benchmark never imports another benchmark.
BENCH_HARNESS = "bench.common"


def _project_modules() -> dict[str, Path]:
    modules = {"app": ROOT / "app.py"}
    for package in PACKAGES[1:]:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _project_modules()


def imported_names(path: Path) -> set[str]:
    """Absolute module names ``path`` imports, wherever the import statement stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # "from train import report" imports the module train.report.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _project_imports(path: Path) -> set[str]:
    return {name for name in imported_names(path) if name.split(".")[0] in PACKAGES and name in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_one_way_flow(module):
    package = module.split(".")[0]
    wrong = sorted(
        name for name in _project_imports(MODULES[module]) if name.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert not wrong, f"{module} ({MODULES[module].relative_to(ROOT)}) may not import {wrong}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("bench.") and m != BENCH_HARNESS))
def test_a_benchmark_never_imports_another(module):
    others = sorted(
        name for name in _project_imports(MODULES[module]) if name.startswith("bench.") and name != BENCH_HARNESS
    )
    assert not others, f"{module} imports other benchmarks {others}; move what they share to a public function"


def test_the_rule_checker_sees_a_violation(tmp_path):
    # The checks above pass only if imports are really read: a planted one must be found.
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from train.segmentation import data as seg\n    import pipelines.registry\n")
    assert {"train.segmentation", "train.segmentation.data", "pipelines.registry"} <= imported_names(planted)


CONTRACT = {value: name for name, value in vars(checkpoint_files).items() if name.isupper() and isinstance(value, str)}


def _string_constants(path: Path) -> set[str]:
    """String literals of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "common.checkpoint_files"))
def test_checkpoint_file_names_and_keys_are_spelled_once(module):
    respelled = sorted(_string_constants(MODULES[module]) & CONTRACT.keys())
    assert not respelled, (
        f"{module} spells {respelled} itself; use common.checkpoint_files."
        f"{', '.join(CONTRACT[value] for value in respelled)}"
    )
