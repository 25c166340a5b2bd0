"""Nothing assumes five classes: an eight-class model (FER+'s, the tiny network) through the
real server -- the greeting, /ws replies, /api/predict (every face), /healthz -- and the load
test, which checks each reply's probabilities name the greeting's classes; and the shipped
eight-class model served by `python -m streamfer.serve --model models/ferplus-8class.pt`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from streamfer.model import Predictor
from streamfer.paths import FER8_MODEL
from streamfer.protocol import pack_frame
from streamfer.server.app import init_app
from tests.kit.fakecam import jpeg
from tests.kit.inproc import bound, config
from tests.kit.serverproc import Server, running_server
from training.data import FERPLUS8

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def face_jpeg(astronaut_rgb: np.ndarray) -> bytes:
    return jpeg(astronaut_rgb)


async def test_eight_classes_through_ws_and_api_predict(aiohttp_client: object,
                                                        tiny8_model_path: Path,
                                                        face_jpeg: bytes) -> None:
    torch.set_num_threads(1)
    predictor = Predictor(tiny8_model_path, device="cpu")
    client = await aiohttp_client(init_app(config(tiny8_model_path), predictor))  # type: ignore[operator]
    ws = await bound(client.ws_connect("/ws"))
    hello = await bound(ws.receive_json())
    assert hello["classes"] == list(FERPLUS8)
    gray = cv2.cvtColor(cv2.imdecode(np.frombuffer(face_jpeg, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2GRAY)
    _, crop = cv2.imencode(".jpg", cv2.resize(gray[60:220, 150:310], (64, 64)))
    await ws.send_bytes(pack_frame(1, crop.tobytes(), is_crop=True))
    reply = await bound(ws.receive_json())
    assert reply["status"] == "ok" and list(reply["probs"]) == list(FERPLUS8)
    assert sum(reply["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert reply["top"] == max(reply["probs"], key=reply["probs"].get)
    await ws.close()
    resp = await bound(client.post("/api/predict", data=face_jpeg))
    body = await resp.json()
    assert resp.status == 200 and list(body["probs"]) == list(FERPLUS8), body
    assert all(list(f["probs"]) == list(FERPLUS8) and f["top"] in FERPLUS8
               for f in body["faces"])
    health = await (await bound(client.get("/healthz"))).json()
    assert health["classes"] == list(FERPLUS8)


@pytest.fixture(scope="module")
def server8(tiny8_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("server8") / "server.log"
    with running_server(tiny8_model_path, ("--device", "cpu"), log_path=log_path) as server:
        yield server


def test_the_load_test_reads_the_classes_from_the_greeting(server8: Server) -> None:
    proc = subprocess.run([sys.executable, "-m", "streamfer.loadtest", "--url", server8.url,
                           "--clients", "2", "--fps", "10", "--seconds", "2", "--json",
                           "--target-ms", "10000", "--max-loss", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    s = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert s["classes"] == list(FERPLUS8) and s["ok"] > 0 and s["errors"] == 0
    assert not any(k.startswith("protocol") for k in s["errors_by_reason"])


def test_the_shipped_eight_class_model_serves_eight_classes(face_jpeg: bytes,
                                                           tmp_path: Path) -> None:
    """The real 8-class file on its int8 CPU runtime, as a user starts it: the server's
    health names its eight classes, and a real photo on /api/predict gets all eight, with
    the smiling astronaut read as happiness."""
    with running_server(FER8_MODEL, ("--device", "cpu"), log_path=tmp_path / "server.log") as s:
        assert s.health["classes"] == list(FERPLUS8), s.health
        assert s.health["model"] == FER8_MODEL.stem and s.health["runtime"] == "onnx-int8"
        base = s.base
        request = urllib.request.Request(base + "/api/predict", data=face_jpeg,
                                         headers={"Content-Type": "image/jpeg"})
        reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
    assert reply["status"] == "ok" and list(reply["probs"]) == list(FERPLUS8), reply
    assert sum(reply["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert reply["top"] == "happiness", reply
    assert reply["faces"] and all(list(f["probs"]) == list(FERPLUS8) for f in reply["faces"])
