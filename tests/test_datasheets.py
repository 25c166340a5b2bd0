"""The datasheets (docs/RESULTS.md, docs/BENCHMARKS.md) are what their result files make.

A committed table that differs from `python -m bench.datasheets`'s output fails here, as does a
result file outside the one schema of streamfer/results.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import datasheets
from streamfer import results

FILES = sorted(datasheets.RESULTS_DIR.glob("*/*.json"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_result_file_parses_in_the_schema(path: Path) -> None:
    record = results.read(path)
    assert path == results.path_for(datasheets.RESULTS_DIR, record), (
        "a result file lives at <machine id>/<name>.json"
    )
    assert record["command"] and record["commit"], "every file names its command and commit"


def test_no_stray_files_in_bench_results() -> None:
    stray = [
        p.relative_to(datasheets.RESULTS_DIR)
        for p in datasheets.RESULTS_DIR.rglob("*")
        if p.is_file() and p.name != "README.md" and p not in FILES
        and p.relative_to(datasheets.RESULTS_DIR).parts[0] != "gpu_check"
        and not (p.suffix == ".png" and p.with_suffix(".json") in FILES)  # a result's figure
    ]
    assert not stray, f"not a result file at <machine>/<name>.json (or its <name>.png): {stray}"


@pytest.mark.parametrize("doc", sorted(datasheets.DOCS))
def test_committed_tables_are_what_the_files_make(doc: str) -> None:
    path = datasheets.DOCS[doc]
    text = path.read_text()
    made = datasheets.render(text, doc, results.read_all(datasheets.RESULTS_DIR))
    assert made == text, (
        f"{path.name}'s tables differ from their result files: "
        "run `python -m bench.datasheets` and commit the result"
    )


def test_every_table_names_its_files() -> None:
    rs = results.read_all(datasheets.RESULTS_DIR)
    for name, (_, make) in datasheets.TABLES.items():
        body = "\n".join(make(rs))
        assert "../bench/results/" in body, f"table {name!r} names no result file"


def test_check_mode_reports_a_stale_table(tmp_path: Path, monkeypatch) -> None:
    docs = {}
    for doc, path in datasheets.DOCS.items():
        docs[doc] = tmp_path / path.name
        docs[doc].write_text(path.read_text())
    original = docs["benchmarks"].read_text()
    docs["benchmarks"].write_text(original.replace("| amd-epyc-2cpu |", "| edited by hand |", 1))
    monkeypatch.setattr(datasheets, "DOCS", docs)
    monkeypatch.setattr(datasheets, "ROOT", tmp_path)
    assert datasheets.main(["--check"]) == 1
    assert docs["benchmarks"].read_text() != original, "--check changes nothing"
    assert datasheets.main([]) == 0
    assert docs["benchmarks"].read_text() == original
    assert datasheets.main(["--check"]) == 0


def test_results_write_then_read_round_trips(tmp_path: Path) -> None:
    record = results.make(
        "unit_probe", {"x": 1}, command="python -m bench.probe", machine={"id": "test-1cpu"}
    )
    path = results.write(tmp_path, record)
    assert path == tmp_path / "test-1cpu" / "unit_probe.json"
    assert results.read(path)["figures"] == {"x": 1}
    json.loads(path.read_text())
