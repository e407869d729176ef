"""The pure packages stay pure: no event loop, sockets, threads or clocks.

Parses every module under shardmq/protocol and shardmq/routing with ``ast``
(nothing is imported, so a violation cannot hide behind a lazy import).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "shardmq"
PURE_PACKAGES = ("protocol", "routing")
FORBIDDEN = frozenset({"asyncio", "socket", "uvloop", "time", "selectors", "threading"})


def _modules() -> list[Path]:
    found: list[Path] = []
    for package in PURE_PACKAGES:
        found.extend(sorted((ROOT / package).rglob("*.py")))
    return found


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def test_pure_packages_exist() -> None:
    assert any(p.name == "codec.py" for p in _modules())


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_io_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = _imported_roots(tree) & FORBIDDEN
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_checker_catches_forbidden_imports() -> None:
    tree = ast.parse(
        "import asyncio\nfrom time import monotonic\nimport os.path\n__import__('socket')\n"
    )
    assert _imported_roots(tree) & FORBIDDEN == {"asyncio", "time", "socket"}
