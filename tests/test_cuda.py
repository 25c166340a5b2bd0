"""The CUDA path, on a machine with a GPU (skipped cleanly elsewhere, CI included): the
server's predictor through its pinned staging buffer, the real server on the GPU, and a
short fit on the GPU (bf16 autocast, single-process NCCL DDP) whose export runs on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from streamfer.model import Predictor
from streamfer.paths import DEFAULT_MODEL
from streamfer.protocol import pack_frame
from streamfer.server.app import init_app
from streamfer.server.config import ServeConfig
from tests.test_fit import make_faces
from training import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = DEFAULT_MODEL  # the model the server runs by default


def faces(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def test_predictor_on_cuda_matches_cpu_through_the_staging_buffer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Full float32 on the GPU for this comparison: cuDNN's default TF32 convolutions differ
    # from the CPU by ~3e-4, which is rounding, not the mixed-up batch this test looks for.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu = Predictor(SHIPPED_MODEL, device="cpu", runtime="torchscript")  # the float reference
    gpu = Predictor(SHIPPED_MODEL, device="cuda", max_batch=4)
    assert gpu.device == "cuda" and gpu._staging is not None
    assert gpu._staging.is_pinned()
    # Back-to-back batches reuse the pinned buffer; each result must be its own batch's
    # (a copy that raced the next fill would show up as the wrong probabilities).
    batches = [faces(n, seed) for seed, n in enumerate((1, 4, 3, 9, 2))]  # 9 > max_batch
    results = [gpu.forward(b) for b in batches]
    for b, got in zip(batches, results, strict=True):
        np.testing.assert_allclose(got, cpu.forward(b), atol=2e-4)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    for mode in ("ten", "centre"):
        gpu.tta = cpu.tta = mode
        np.testing.assert_allclose(gpu.forward(batches[1]), cpu.forward(batches[1]), atol=2e-4)


async def test_server_on_cuda_answers_a_websocket_frame(aiohttp_client: Any,
                                                       astronaut_rgb: np.ndarray) -> None:
    cfg = ServeConfig(model=SHIPPED_MODEL, host="127.0.0.1", port=0, device="cuda",
                      workers=1, deadline_ms=20_000, web_dir=ROOT / "no-such-web-dir")
    predictor = Predictor(SHIPPED_MODEL, device="cuda")
    client = await aiohttp_client(init_app(cfg, predictor))
    health = await (await client.get("/healthz")).json()
    assert health["device"].startswith("cuda")
    # A face crop as the page sends it (no server-side detection: OpenCV 5 builds lack the
    # Haar cascades, and this test is about the GPU).
    gray = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)[60:220, 150:310]
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(gray, (64, 64)))
    assert ok
    ws = await client.ws_connect("/ws")
    await ws.receive_json()  # hello
    await ws.send_bytes(pack_frame(1, jpeg.tobytes(), is_crop=True))
    reply = await ws.receive_json()
    assert reply["status"] == "ok", reply
    assert reply["top"] == "happiness"
    await ws.close()


def test_blazeface_on_cuda_gives_the_cpus_boxes_in_one_batch(
        astronaut_rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamfer.detect import SPECS, WEIGHTS_DIR, BlazeFace

    if not (WEIGHTS_DIR / SPECS["short"].file).is_file():
        pytest.skip("BlazeFace weights not installed (`npm ci` in web/)")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    gray = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)
    frames = [gray, cv2.resize(gray, (320, 240)), np.fliplr(gray).copy()] * 11  # 33 frames
    cpu, gpu = BlazeFace(device="cpu"), BlazeFace(device="cuda")
    prepared = [gpu.prepare(f) for f in frames]
    regress, scores = gpu.infer(np.stack([x for x, _ in prepared]))
    for i, (f, (_, where)) in enumerate(zip(frames, prepared, strict=True)):
        got = gpu.decode(regress[i], scores[i], where, f.shape[:2])
        want = cpu.detect(f)
        assert len(got) == len(want) == 1
        assert all(abs(a - b) <= 1 for a, b in zip(got[0].box.to_list(),
                                                   want[0].box.to_list(), strict=True))


async def test_server_on_cuda_detects_full_frames_in_the_batched_stage(
        aiohttp_client: Any, astronaut_rgb: np.ndarray) -> None:
    from streamfer.detect import SPECS, WEIGHTS_DIR

    if not (WEIGHTS_DIR / SPECS["short"].file).is_file():
        pytest.skip("BlazeFace weights not installed (`npm ci` in web/)")
    cfg = ServeConfig(model=SHIPPED_MODEL, host="127.0.0.1", port=0, device="cuda",
                      workers=2, deadline_ms=20_000, web_dir=ROOT / "no-such-web-dir")
    client = await aiohttp_client(init_app(cfg, Predictor(SHIPPED_MODEL, device="cuda")))
    health = await (await client.get("/healthz")).json()
    assert "BlazeFace" in health["face_detector"] and "cuda" in health["face_detector"]
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    ws = await client.ws_connect("/ws")
    await ws.receive_json()  # hello
    for i in range(3):
        await ws.send_bytes(pack_frame(i, jpeg.tobytes()))
        reply = await ws.receive_json()
        assert reply["status"] == "ok" and reply["top"] == "happiness", reply
    assert "track" in reply["timings_ms"]
    await ws.close()


def fit_args(tmp_path: Path, *extra: str) -> list[str]:
    make_faces(tmp_path / "data")
    return ["--data", "folder", "--data-root", str(tmp_path / "data"), "--classes", "happy,sad",
            "--val-root", str(tmp_path / "data"), "--epochs", "2", "--batch", "8", *extra]


def torchrun(tmp_path: Path, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", "-m", "training.fit",
           *fit_args(tmp_path, "--out", str(tmp_path / "ddp"))]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_fit_on_cuda_exports_a_model_the_cpu_runs(tmp_path: Path) -> None:
    model = tmp_path / "gpu.pt"
    metrics = fit.main(fit_args(tmp_path, "--device", "cuda", "--out", str(tmp_path / "run"),
                                "--export", str(model)))
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    m = torch.jit.load(str(model), map_location="cpu")
    probs = m(torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8))
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_torchrun_one_process_per_gpu_uses_nccl(tmp_path: Path) -> None:
    done = torchrun(tmp_path, torch.cuda.device_count())
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"device cuda:0 x{torch.cuda.device_count()}" in done.stderr
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert len(metrics["history"]["epoch"]) == 2


def test_more_processes_than_gpus_is_a_clear_error(tmp_path: Path) -> None:
    done = torchrun(tmp_path, torch.cuda.device_count() + 1)
    assert done.returncode != 0
    assert "has no GPU of its own" in done.stderr
