"""The folders by job keep their import directions (docs/ARCHITECTURE.md): the server and
training use the shared modules of streamfer/ and never each other, the shared modules use
neither, the load test is a client without torch, the test kit the benchmarks share does not
use them, and no program edits sys.path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "streamfer" / "serve.py"  # `python -m streamfer.serve`: runs the server


def imports(path: Path) -> set[str]:
    """Every module a file imports, absolute (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def files(*globs: str) -> list[Path]:
    return sorted(p for g in globs for p in ROOT.glob(g))


def offending(paths: list[Path], *banned: str) -> dict[str, list[str]]:
    out = {}
    for p in paths:
        bad = sorted(m for m in imports(p) if any(m == b or m.startswith(b + ".") for b in banned))
        if bad:
            out[str(p.relative_to(ROOT))] = bad
    return out


SHARED = [p for p in files("streamfer/*.py") if p != SHIM]


@pytest.mark.parametrize(("where", "banned"), [
    ("shared", ("streamfer.server", "training", "bench", "tests")),
    ("server", ("training", "bench", "tests")),
    ("training", ("streamfer.server", "bench", "tests")),
    ("loadtest", ("streamfer.server", "training", "torch", "bench", "tests")),
    ("kit", ("bench",)),
])
def test_import_directions(where: str, banned: tuple[str, ...]) -> None:
    paths = {"shared": SHARED, "server": files("streamfer/server/*.py"),
             "training": files("training/*.py"), "loadtest": files("streamfer/loadtest/*.py"),
             "kit": files("tests/kit/*.py")}
    assert paths[where], f"no {where} modules found"
    assert offending(paths[where], *banned) == {}


def test_no_program_edits_sys_path() -> None:
    edits = []
    for p in files("streamfer/**/*.py", "training/*.py", "bench/*.py", "tests/kit/*.py"):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                edits.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert edits == []
