"""The layout's rules, checked on the source: package dependencies run one way (imports inside
functions count too), and no source file outgrows a reading."""

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("adapters", "dflash", "train", "eval")
# What each package may import from the others: adapters wrap mlx-lm models, dflash decodes with
# them, train and eval use dflash.
ALLOWED = {"adapters": set(), "dflash": {"adapters"}, "train": {"adapters", "dflash"}, "eval": {"adapters", "dflash"}}
MAX_LINES = 400


def sources(package: str):
    return sorted((REPO / package).rglob("*.py"))


def imported_packages(path: Path, package: str) -> set:
    """The project packages that `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
    return found - {package}


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_run_one_way(package):
    for path in sources(package):
        imported = imported_packages(path, package)
        assert imported <= ALLOWED[package], f"{path.relative_to(REPO)} imports {sorted(imported - ALLOWED[package])}"


def test_the_allowed_dependencies_have_no_cycle():
    def reaches(start, goal, seen=()):
        return any(p == goal or (p not in seen and reaches(p, goal, seen + (p,))) for p in ALLOWED[start])

    assert not any(reaches(package, package) for package in PACKAGES)


@pytest.mark.parametrize("package", PACKAGES + ("tests",))
def test_no_source_file_over_400_lines(package):
    for path in sources(package):
        assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.relative_to(REPO)} is over {MAX_LINES} lines"


def test_tests_import_no_other_test_module():
    for path in sources("tests"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
                assert node.module == "tests.helpers", f"{path.name} imports {node.module}"
