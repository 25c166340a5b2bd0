"""bench/page_accuracy.py for real on a few webfaces-dev photos: the page's own detector and
crop in headless Chromium, the real server with the shipped model, a result in the schema.

Needs /usr/bin/chromium, the `playwright` package, `(cd web && npm ci)` (skipped without them,
or failed with STREAMFER_REQUIRE_BROWSER=1) and ../shared/datasets/webfaces-dev (skipped
without it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import page_accuracy
from streamfer import results
from streamfer.contract import read_metadata
from streamfer.paths import DEFAULT_MODEL
from streamfer.server import vendor
from tests.kit.browserkit import need_chromium, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent

need_chromium()
if vendor.find(ROOT / "web") is None:
    skip_or_fail(vendor.MISSING)


@pytest.mark.browser
def test_a_few_photos_through_the_page(datasets: Path, tmp_path: Path) -> None:
    webfaces = datasets / "webfaces-dev"
    if not webfaces.is_dir():
        pytest.skip(f"no webfaces-dev at {webfaces}")
    page_accuracy.main(["--data", str(webfaces), "--limit", "6", "--results", str(tmp_path)])
    rec = results.read(next(tmp_path.glob("*/page_accuracy.json")))
    classes = read_metadata(DEFAULT_MODEL).classes
    f, d = rec["figures"], rec["details"]
    assert f["photos"] == 6 and len(d["rows"]) == 6
    assert set(f["recall"]) == set(classes)
    assert f["faces_found"] > 0 and 0 <= f["balanced_accuracy"] <= 1
    assert f["detector"] == d["detector"]["name"] == "worker"  # the page's default
    assert d["page_errors"] == []
    for row in d["rows"]:
        assert row["top"] is None or row["top"] in classes, row
        if row["top"] is not None:
            assert row["status"] == "ok" and row["crop"] and row["bytes"] > 0
    assert sum(map(sum, d["confusion"])) == 6
    crops = sum(bool(row.get("crop")) for row in d["rows"])
    assert d["server_frames"]["full"] == 0 and d["server_frames"]["crop"] >= crops > 0
