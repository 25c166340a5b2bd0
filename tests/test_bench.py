"""The benchmark scripts run end to end (tiny model, seconds-long settings) and save results.

These check that each script works and writes what docs/BENCHMARKS.md reads; the figures
themselves come from full runs on an idle machine, not from here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamfer import results

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def bench(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    module = "bench." + script.removesuffix(".py")  # as the docs run them: python -m bench.NAME
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_decode_bench(tmp_path: Path) -> None:
    proc = bench("decode.py", "--repeats", "2", "--number", "5", "--results", str(tmp_path))
    rec = results.read(next(tmp_path.glob("*/decode.json")))
    result = rec["details"]
    assert list(rec["figures"]["payloads"]) == [r["payload"] for r in result["rows"]]
    assert [r["payload"] for r in result["rows"]] == ["frame 320 px colour", "crop 96 px gray"]
    for r in result["rows"]:
        assert r["served_us"] > 0 and r["opencv_us"] > 0 and r["pillow_us"] > 0
        assert r["served_over_opencv"] == pytest.approx(r["served_us"] / r["opencv_us"],
                                                        rel=0.05)
        assert r["max_abs_pixel_diff"] <= 1  # the served decoder reads OpenCV's pixels
    assert result["rows"][0]["shape"] == [320, 320] and result["rows"][1]["shape"] == [96, 96]
    assert result["machine"]["cpu"] and "served/opencv" in proc.stdout


def test_model_batches(tiny_model_path: Path, tmp_path: Path) -> None:
    proc = bench("model", "batches", "--model", str(tiny_model_path), "--device", "cpu",
                 "--max-batch", "4", "--repeats", "2", "--warmup", "1", "--min-seconds", "0",
                 "--server-batch", "4", "--out-dir", str(tmp_path))
    rec = results.read(next(tmp_path.glob("*/model_cpu.json")))
    result = rec["details"]
    assert rec["figures"]["tta"] == "mirror" and set(rec["figures"]["ms_per_face"]) == {
        "1", "2", "4"}
    rows = result["rows"]
    assert [(r["variant"], r["tta"], r["batch"]) for r in rows] == [
        (v, m, n) for v in ("optimized", "as-loaded") for m in ("centre", "mirror", "ten")
        for n in (1, 2, 4)]
    for r in rows:
        assert r["ms_per_face"] == pytest.approx(r["ms_per_batch"] / r["batch"], rel=0.01)
        assert r["cpu_ms_per_face"] > 0
    default = result["server_default"]
    assert default["tta"] == "mirror" and default["batch_measured"] == 4
    assert default["variant"] == "optimized"  # what the server runs
    assert "ms CPU per face" in proc.stdout


def test_model_runtimes_times_and_scores_each_runtime(quantized: tuple[Path, object],
                                                     tmp_path: Path) -> None:
    """The CPU runtimes of one model side by side, as the datasheet's CPU rows read them,
    and each one's accuracy on a labelled folder (here a handful of random faces)."""
    import cv2
    import numpy as np

    model, _ = quantized
    rng = np.random.default_rng(0)
    for folder in ("angry", "happy", "neutral", "sad", "surprise"):
        (tmp_path / "test" / folder).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "test" / folder / f"{i}.png"),
                        rng.integers(0, 256, (48, 48), np.uint8))
    proc = bench("model", "runtimes", "--model", str(model), "--batches", "1,4", "--rounds",
                 "3", "--test", str(tmp_path / "test"), "--out-dir", str(tmp_path / "out"))
    rec = results.read(next((tmp_path / "out").glob("*/model_cpu.json")))
    f = rec["figures"]
    for key in ("int8_ms_per_face", "fused_torchscript_ms_per_face",
                "torchscript_as_loaded_ms_per_face"):
        assert set(f[key]) == {"1", "4"} and min(f[key].values()) > 0
    assert set(f["fer2013_publictest_accuracy"]) == {"int8", "fused_torchscript"}
    assert 0 <= f["int8_agreement_with_fused"] <= 1 and rec["details"]["faces"] == 10
    assert "fused / int8" in proc.stdout


def test_model_served_compares_models_as_served(tiny_model_path: Path,
                                               quantized: tuple[Path, object],
                                               tmp_path: Path) -> None:
    """Two models as the server runs them: one with its int8 derivative, one without."""
    import shutil

    model, _ = quantized
    plain = shutil.copy(tiny_model_path, tmp_path / "plain.pt")
    bench("model", "served", str(model), str(plain), "--batches", "1,2", "--rounds", "3",
          "--out-dir", str(tmp_path / "out"))
    rec = results.read(next((tmp_path / "out").glob("*/model_served.json")))
    rows = rec["details"]["rows"]
    assert [(Path(r["model"]), r["batch"]) for r in rows] == [
        (m, n) for n in (1, 2) for m in (model, plain)]
    assert [r["runtime"] for r in rows[:2]] == ["onnx-int8", "torchscript"]
    assert all(r["cpu_ratio_to_first"] == 1 for r in rows[::2])
    assert {k: set(v) for k, v in rec["figures"]["cpu_ms_per_face"].items()} == {
        "tiny": {"1", "2"}, "plain": {"1", "2"}}


def test_a_benchmark_without_its_mode_is_a_usage_error() -> None:
    for module in ("bench.model", "bench.server"):
        proc = subprocess.run([sys.executable, "-m", module, "nope"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr
        assert proc.stderr.count("\n") == 1


def test_first_calls_times_each_batch_size_cold_and_warmed(tiny_model_path: Path,
                                                          tmp_path: Path) -> None:
    proc = bench("model", "first-calls", "--model", str(tiny_model_path), "--device", "cpu",
                 "--max-batch", "5", "--threads", "1", "--out-dir", str(tmp_path))
    rec = results.read(next(tmp_path.glob("*/first_calls_cpu.json")))
    assert list(rec["figures"]["first_call_ms"]) == ["1", "2", "3", "5"]
    result = rec["details"]
    assert result["device"] == "cpu" and result["warm_up_s"] >= 0
    for key in ("cold_ms", "warm_ms"):
        assert list(result[key]) == ["1", "2", "3", "5"]  # SIZES up to --max-batch
        assert all(len(t) == 3 and min(t) > 0 for t in result[key].values())
    assert "after warm_up" in proc.stdout


@pytest.mark.slow
def test_server_ramp_ramps_both_configurations(tiny_model_path: Path, tmp_path: Path) -> None:
    bench("server", "ramp", "--model", str(tiny_model_path), "--step-seconds", "0.5",
          "--pause", "0.1", "--max-clients", "2", "--fps", "10", "--out-dir", str(tmp_path),
          "--warmup-seconds", "0.3",
          "--server-arg=--device=cpu")
    path = next(tmp_path.glob("*/server_ramp_crops.json"))
    rec = results.read(path)
    result = rec["details"]
    assert list(rec["figures"]["phones"]) == list(result["best_clients"])
    assert list(result["best_clients"]) == ["micro-batching (server default)",
                                            "one at a time (--max-batch 1)"]
    single = result["results"]["one at a time (--max-batch 1)"]
    assert "--max-batch" in single["server_args"]
    for res in result["results"].values():
        assert res["steps"] and all(s["sent"] == s["answered"] for s in res["steps"])
        assert res["passed"]
    for s in single["steps"]:
        assert set(s["batch"]["counts"]) <= {"1"}  # --max-batch 1 really ran one at a time
    assert path.with_suffix(".png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_server_fixed_load_variants(tiny_model_path: Path, tmp_path: Path) -> None:
    bench("server", "fixed", "--model", str(tiny_model_path), "--clients", "1",
          "--seconds", "1", "--fps", "10", "--out-dir", str(tmp_path), "--warmup-seconds", "0.3",
          "--server-arg=--device=cpu")
    path = next(tmp_path.glob("*/server_fixed.json"))
    rec = results.read(path)
    rows = {r["variant"]: r for r in rec["details"]["rows"]}
    assert list(rec["figures"]["variants"]) == list(rows)
    assert list(rows) == ["crops, mirror (default)", "frames, mirror", "frames, mirror, haar",
                          "crops, centre", "crops, ten"]
    assert "haar" in rows["frames, mirror, haar"]["server_args"]
    for r in rows.values():
        assert r["sent"] == r["answered"] > 0 and r["errors"] == 0
        assert r["tta"] == r["server_tta"]  # the server's greeting confirms the mode
    assert rows["frames, mirror"]["kind"] == "frames"
    assert path.with_suffix(".png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_server_overhead_splits_server_cpu_into_model_and_the_rest(tiny_model_path: Path,
                                                                    tmp_path: Path) -> None:
    proc = bench("server", "overhead", "--model", str(tiny_model_path), "--clients", "2",
                 "--seconds", "1.5", "--fps", "10", "--repeats", "1", "--rounds", "5",
                 "--warmup-seconds", "0.3", "--out-dir", str(tmp_path),
                 "--variant", "here=", "--variant", "one at a time=--max-batch 1",
                 "--tree", f"here={ROOT}", "--server-arg=--device=cpu")
    rec = results.read(next(tmp_path.glob("*/server_overhead.json")))
    rows = {r["variant"]: r for r in rec["details"]["rows"]}
    assert list(rec["figures"]["variants"]) == list(rows)
    assert list(rows) == ["here", "one at a time"]
    assert rows["here"]["tree"] == str(ROOT) and rows["one at a time"]["flags"] == [
        "--max-batch", "1"]
    for r in rows.values():
        run = r["runs"][0]
        assert run["answered"] == run["sent"] > 0 and run["cpu_s"] > 0
        assert r["model_cpu_ms_per_frame"] > 0
        assert r["outside_model_cpu_ms_per_frame"] == pytest.approx(
            r["server_cpu_ms_per_frame"] - r["model_cpu_ms_per_frame"], abs=1e-6)
    assert set(rows["one at a time"]["runs"][0]["batch_counts"]) == {"1"}
    assert "outside" in proc.stdout


def test_webfaces_e2e_scores_every_photo_and_lists_the_refused(tiny_model_path: Path,
                                                               tmp_path: Path) -> None:
    """Each photo goes through the real server's /api/predict; a file the server refuses (a
    WebP named .jpg, as webfaces-dev holds one) counts as wrong and is listed, not a crash."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for folder in ("angry", "happy", "neutral", "sad", "surprise"):
        (tmp_path / "web" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "web" / folder / "Someone_1.jpg"),
                    rng.integers(0, 256, (120, 100, 3), np.uint8))
    ok, webp = cv2.imencode(".webp", rng.integers(0, 256, (64, 64, 3), np.uint8))
    assert ok
    (tmp_path / "web" / "sad" / "not_a_jpeg.jpg").write_bytes(webp.tobytes())
    bench("webfaces_e2e.py", "--model", str(tiny_model_path), "--data", str(tmp_path / "web"),
          "--detectors", "haar", "--results", str(tmp_path / "results"))
    rec = results.read(next((tmp_path / "results").glob("*/webfaces_e2e.json")))
    assert rec["figures"]["detectors"]["haar"]["photos"] == 6
    r = rec["details"]["detectors"]["haar"]
    assert r["photos"] == 6 and set(r["per_class_recall"]) == {
        "anger", "happiness", "neutral", "sadness", "surprise"}
    assert [Path(p).name for p in r["errors"]["bad_image"]] == ["not_a_jpeg.jpg"]
    assert r["with_face"] <= 5 / 6
    by_photo = {row["photo"]: row for row in r["rows"]}  # what each photo got
    assert len(by_photo) == 6 and by_photo["sad/not_a_jpeg.jpg"]["top"] is None
    assert by_photo["sad/Someone_1.jpg"]["label"] == "sadness"


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_parts(tmp_path: Path) -> None:
    """bench/gpu_check.sh on the CPU, tiny durations: every part runs and writes its file
    (the CUDA tests skip here; on a GPU machine the same script times the GPU)."""
    proc = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--cpu", "--quick",
                           "--processes", "2", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout + proc.stderr
    assert "mode=cpu" in summary and summary.count("   exit 0,") == 4, summary
    assert "skipped" in (tmp_path / "cuda_tests.log").read_text()
    model = results.read(next(tmp_path.glob("*/model_cpu.json")))
    assert model
    for name, layouts in (("server_ramp_crops", ("2 processes",
                                                 "2 processes + inference worker")),
                          ("server_ramp_frames", ("1 process, detection batched on the cpu",
                                           "2 processes + inference worker"))):
        result = results.read(next(tmp_path.glob(f"*/{name}.json")))["details"]
        assert list(result["best_clients"]) == list(layouts), result["best_clients"]
        for res in result["results"].values():
            assert res["steps"] and all(s["sent"] == s["answered"] for s in res["steps"])


def test_training_views_bench_times_the_views_and_the_network(tmp_path: Path) -> None:
    """bench.training_views draws the shipped recipe's views in the training process and in
    --workers processes through training.fit's own code, times a network's step, and saves
    what BENCHMARKS.md's table reads."""
    proc = bench("training_views.py", "--steps", "3", "--workers", "0,1", "--nets", "paper",
                 "--device", "cpu", "--results", str(tmp_path))
    rec = results.read(next(tmp_path.glob("*/training_views.json")))
    f = rec["figures"]
    assert set(f["views"]) == {"0", "1"} and f["device"] == "cpu"
    assert all(v["batches_per_s"] > 0 for v in f["views"].values())
    paper = f["nets"]["paper"]
    assert paper["steps_per_s"] > 0 and paper["processes_to_keep_up"] >= 1
    assert "network paper" in proc.stdout
