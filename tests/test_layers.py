"""The pure packages stay pure: no event loop, sockets, threads or clocks.

Parses every module under shardmq/protocol, shardmq/routing and shardmq/auth
with ``ast`` (nothing is imported, so a violation cannot hide behind a lazy
import). ``auth/redis.py`` is the one I/O module of auth: it talks to Redis.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "shardmq"
PURE_PACKAGES = ("protocol", "routing", "auth")
#: Modules of the pure packages that are adapters to I/O by design.
IO_MODULES = frozenset({"auth/redis.py"})
FORBIDDEN = frozenset({"asyncio", "socket", "uvloop", "time", "selectors", "threading"})


def _modules() -> list[Path]:
    found: list[Path] = []
    for package in PURE_PACKAGES:
        found.extend(
            path
            for path in sorted((ROOT / package).rglob("*.py"))
            if path.relative_to(ROOT).as_posix() not in IO_MODULES
        )
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
    names = {p.relative_to(ROOT).as_posix() for p in _modules()}
    assert {"protocol/codec.py", "auth/passwd.py", "auth/acl.py"} <= names
    assert not names & IO_MODULES


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
