"""Imports point downwards only, as docs/architecture.md draws the rooms."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "server": set(),
    "hsm": {"store", "sam", "server", "mobile_stub", "rp_client", "aiohttp"},
    "store": {"hsm", "sam", "server", "mobile_stub", "rp_client", "aiohttp"},
    "sam": {"server", "mobile_stub", "rp_client", "aiohttp"},
    "mobile_stub": {"hsm", "store", "sam", "server", "rp_client"},
    "rp_client": {"hsm", "store", "sam", "server", "mobile_stub"},
}
# devtools/ holds helpers for tests and demos: nothing that ships imports it.
for _forbidden in FORBIDDEN.values():
    _forbidden.add("devtools")


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    offenders = {name: bad for name, bad in offenders.items() if bad}

    assert not offenders, f"{package} imports what it must not: {offenders}"
