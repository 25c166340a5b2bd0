"""The page's live recording in real headless Chromium against the real server, with an
eight-class model: all eight classes shown with their own glyphs, the timeline kept in the
page, "Download CSV" saving it (Playwright's download event) in the video tool's columns,
and no request leaving for anywhere but this server. The same skips as tests/test_browser.py
(Chromium, playwright: browserkit.need_chromium)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamfer.video.timeline import columns
from tests.kit.browserkit import Server, need_chromium, open_page, phone, serving
from tests.kit.fakecam import shaking, write_y4m
from training.data import FERPLUS8

pytestmark = pytest.mark.browser
WAIT_MS = 30_000

need_chromium()


@pytest.fixture(scope="module")
def server8(tiny8_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tiny8_model_path, tmp_path_factory.mktemp("srv") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def camera(astronaut_scene: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_y4m(tmp_path_factory.mktemp("cam") / "scene.y4m", shaking(astronaut_scene))


def test_the_live_timeline_downloads_as_csv_with_eight_classes(server8: Server, camera: Path,
                                                               playwright: Any,
                                                               tmp_path: Path) -> None:
    with phone(playwright, camera, accept_downloads=True) as context:
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        page = open_page(context, server8.url)
        page.wait_for_selector('#status[data-state="streaming"]', timeout=WAIT_MS)
        page.wait_for_function(
            "Number(document.getElementById('download-csv').dataset.rows) >= 5",
            timeout=WAIT_MS)
        bars = page.eval_on_selector_all(
            "#bars li", "els => els.map(e => [e.dataset.class, e.querySelector('.e').textContent])")
        with page.expect_download(timeout=WAIT_MS) as info:
            page.click("#download-csv")
        saved = tmp_path / "timeline.csv"
        info.value.save_as(saved)
        filename = info.value.suggested_filename
        chart_drawn = page.evaluate("""() => {
            const c = document.getElementById('timeline-chart');
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return px.some((v, i) => i % 4 === 3 && v > 0);
        }""")
        errors = page.errors
    assert errors == []
    assert [name for name, _ in bars] == list(FERPLUS8)
    glyphs = [glyph for _, glyph in bars]
    assert len(set(glyphs)) == 8 and "🙂" not in glyphs  # a glyph of its own for each
    assert filename.startswith("streamfer-") and filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert list(rows[0]) == columns(list(FERPLUS8))
    assert len(rows) >= 5
    times = [float(r["time_s"]) for r in rows]
    assert times == sorted(times) and times[0] == 0.0
    for r in rows:
        assert sum(float(r[c]) for c in FERPLUS8) == pytest.approx(1.0, abs=1e-3)
        assert r["top"] in FERPLUS8 and r["face_id"] == "1" and int(r["w"]) > 0
    assert chart_drawn
    # The page talks to its own server only (the CSV is made in the page: a blob: URL).
    assert all(u.startswith((server8.url, server8.url.replace("http", "ws"), "blob:", "data:"))
               for u in requests), requests
