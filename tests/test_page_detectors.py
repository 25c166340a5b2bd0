"""bench/page_detectors.py, the in-page detector benchmark: its flags, and a real run in
headless Chromium on a face it must find, with the page's network on the CPU and on WebGL.

Needs /usr/bin/chromium, the `playwright` package and `(cd web && npm ci)`; skips without
them. The face is scikit-image's astronaut, so it runs in CI without ../shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import pytest

from bench import page_detectors as bench
from streamfer import results
from streamfer.server import vendor

ROOT = Path(__file__).resolve().parent.parent


def test_flags_come_from_the_config() -> None:
    args = bench.parse_args([])
    assert args.specs() == ["short/webgl", "short/cpu"] and args.haar and not args.calibrate
    args = bench.parse_args(["--models", "short/cpu,short/cpu@320", "--models", "full",
                             "--no-haar", "--limit", "3"])
    assert args.specs() == ["short/cpu", "short/cpu@320", "full"]
    assert (args.haar, args.limit) == (False, 3)
    assert bench.parse_spec("short") == ("short", vendor.INFERENCE, 0)
    assert bench.parse_spec("short/webgl@320") == ("short", "webgl", 320)
    assert bench.parse_spec("litert-auto") == ("litert-auto", "worker", 0)
    assert bench.parse_spec("litert-full/main") == ("litert-full", "main", 0)


@pytest.mark.parametrize("argv", [["--models", "short/gpu"], ["--models", "blaze"],
                                  ["--models", "litert-auto/cpu"], ["--models", "litert-near"],
                                  ["--models", "tasks/cpu"], ["--models", "faceapi-tiny/cpu"]])
def test_bad_detectors_are_usage_errors(argv: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert "python -m bench.page_detectors: error: " in capsys.readouterr().err


def run_bench(tmp_path: Path, astronaut_rgb: Any, models: str) -> dict[str, Any]:
    """The benchmark's result details for `models` on one photo: her face in the middle, as
    in a webfaces photo."""
    face = astronaut_rgb[20:320, 110:410]
    (tmp_path / "photos" / "happy").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "photos" / "happy" / "astronaut.jpg"),
                cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    out = tmp_path / "results"
    bench.main(["--data", str(tmp_path / "photos"), "--limit", "1", "--no-haar",
                "--models", models, "--results", str(out)])
    details: dict[str, Any] = results.read(next(out.glob("*/page_detectors.json")))["details"]
    return details


@pytest.mark.browser
def test_cpu_and_webgl_inference_find_the_same_face(tmp_path: Path, astronaut_rgb: Any,
                                                    capsys: Any) -> None:
    """The page's BlazeFace, network on the CPU (what the page runs) and on WebGL, on the six
    camera-like variants of one photo: both find the face wherever it is findable."""
    pytest.importorskip("playwright.sync_api")
    if not Path(bench.CHROMIUM).exists():
        pytest.skip(f"no Chromium at {bench.CHROMIUM}")
    if vendor.find(ROOT / "web") is None:
        pytest.skip(vendor.MISSING)
    result = run_bench(tmp_path, astronaut_rgb, "short/cpu,short/webgl")
    assert result["frames"] == 6
    rows = result["rows"]
    assert set(rows) == {"short/cpu (page)", "short/webgl (page)"}
    for row in rows.values():
        assert row["frames"] == 6 and row["ms_median"] > 0
        assert row["recall"] >= 5 / 6, row  # (the 160 px `small` one may be missed)
    assert rows["short/cpu (page)"]["recall_by_variant"] == \
        rows["short/webgl (page)"]["recall_by_variant"]
    assert "short/cpu (page)" in capsys.readouterr().out  # the table is printed


@pytest.mark.browser
def test_litert_engine_in_a_worker_and_on_the_main_thread(tmp_path: Path, astronaut_rgb: Any
                                                          ) -> None:
    """web/detection/ (LiteRT.js) as the bench runs it, each frame searched whole: in the
    Worker and on the main thread it finds the face in all six variants, the 160 px `small`
    one included (the full-range network), with the same boxes."""
    pytest.importorskip("playwright.sync_api")
    if not Path(bench.CHROMIUM).exists():
        pytest.skip(f"no Chromium at {bench.CHROMIUM}")
    found = vendor.find(ROOT / "web")
    if found is None or found.runtime is None:
        pytest.skip(vendor.MISSING)
    rows = run_bench(tmp_path, astronaut_rgb, "litert-auto/worker,litert-auto/main")["rows"]
    for row in rows.values():
        assert row["frames"] == 6 and row["recall"] == 1.0, row
    assert rows["litert-auto/worker (page)"]["recall_by_variant"] == \
        rows["litert-auto/main (page)"]["recall_by_variant"]
