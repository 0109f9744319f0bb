"""core/ stays pure: stdlib + numpy + scipy, no clock, no environment, no I/O frameworks."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"
ALLOWED_THIRD_PARTY = {"numpy", "scipy"}
FORBIDDEN_MODULES = {"asyncio", "faust", "aiokafka", "kafka", "mode", "orjson", "time", "os",
                     "socket", "subprocess", "random", "pickle"}
# Attribute uses that read the clock or the environment.
FORBIDDEN_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"),
                   ("date", "today"), ("os", "environ"), ("os", "getenv")}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_only_stdlib_numpy_scipy() -> None:
    files = sorted(CORE.glob("*.py"))
    assert files, "core has no modules"
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in _imports(tree):
            if name in {"core", "__future__"}:
                continue
            assert name not in FORBIDDEN_MODULES, f"{path.name} imports {name}"
            assert name in ALLOWED_THIRD_PARTY or name in sys.stdlib_module_names, (
                f"{path.name} imports third-party {name}"
            )


def test_core_reads_neither_clock_nor_environment() -> None:
    for path in sorted(CORE.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) not in FORBIDDEN_CALLS, (
                    f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}"
                )


def test_boundary_check_catches_a_violation(tmp_path: Path) -> None:
    tree = ast.parse("import faust\nfrom datetime import datetime\nx = datetime.now()\n")
    assert "faust" in _imports(tree)
    uses = {(n.value.id, n.attr) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    assert ("datetime", "now") in uses & FORBIDDEN_CALLS
