"""Writing a benchmark's result: one record in streamfer.results' schema, and a line on the
console saying where it went (the benchmarks report on stdout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamfer import results


def save(root: Path, name: str, figures: dict[str, Any], details: dict[str, Any]) -> Path:
    """Writes the result `name` under `root`/<machine>/ and prints its path; the path."""
    path = results.write(root, results.make(name, figures, details))
    print(f"wrote {path}")
    return path
