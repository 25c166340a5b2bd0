"""`pip install .` (not editable): the wheel carries the shipped model and the page, and the
installed server runs from anywhere, with no checkout beside it; installed into a fresh venv
it brings no torch, and the CPU server never imports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.venvs import Venv, build_wheel, clean_env, make_venv
from streamfer.detect import SPECS, WEIGHTS_DIR
from streamfer.onnx_int8 import derived_path
from streamfer.paths import DEFAULT_MODEL, FER8_MODEL
from streamfer.server import vendor
from tests.kit.serverproc import free_port, maps_opencv, maps_torch, running_server

ROOT = Path(__file__).resolve().parent.parent

WEIGHTS_FILE = WEIGHTS_DIR / SPECS["short"].file

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="Linux /proc")]


def test_a_non_editable_install_serves_the_page_and_predicts(
        tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    wheels, prefix, elsewhere = tmp_path / "wheels", tmp_path / "prefix", tmp_path / "cwd"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   timeout=300)
    (wheel,) = wheels.glob("streamfer-*.whl")
    # --ignore-installed: pip would otherwise uninstall the running environment's streamfer
    # (the developer's editable install) to "upgrade" it, although the target is elsewhere.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--ignore-installed", "--prefix", str(prefix), str(wheel)],
                   check=True, timeout=300)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix)}))
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import streamfer.paths as c; print(c.__file__); "
         "print(c.DEFAULT_MODEL); print(c.DEFAULT_WEB_DIR)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    module, model, web = (Path(line) for line in where.stdout.split())
    assert module.is_relative_to(site)  # the installed copy, not the checkout
    assert model.is_relative_to(prefix) and model.is_file()
    # the served models (the default and the eight-class option, each with its int8
    # derivative), not the training artefact they were fine-tuned from
    served = {p.name for p in model.parent.iterdir()}
    for m in (DEFAULT_MODEL, FER8_MODEL):
        assert {m.name, derived_path(m).name} <= served, served
    assert not any(n.startswith("fer2013-") for n in served), served
    assert web.is_relative_to(prefix) and (web / "index.html").is_file()
    assert (web / "streamfer.js").is_file() and (web / "examples" / "embed.html").is_file()

    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "streamfer.serve", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=elsewhere, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=2).read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    (tmp_path / "server.log").read_text())
                time.sleep(0.5)
        assert health["model"] == DEFAULT_MODEL.stem and health["runtime"] == "onnx-int8"
        page = urllib.request.urlopen(base + "/", timeout=10).read()
        assert b"<html" in page.lower()
        # The client, its example, and the Worker detector with what it imports.
        for path in ("/streamfer.js", "/examples/embed.html", "/detection/worker.js",
                     "/detection/engine.js", "/detection/index.js", "/crop.js"):
            assert urllib.request.urlopen(base + path, timeout=10).status == 200, path
        checkout = vendor.find(ROOT / "web")
        if checkout is not None and checkout.runtime is not None:  # the wheel was built with it
            for name in vendor.RUNTIME_FILES:  # LiteRT.js and both networks, under /vendor/
                url = f"{base}/{checkout.runtime.url}{name}"
                assert urllib.request.urlopen(url, timeout=10).status == 200, url
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR))
        request = urllib.request.Request(base + "/api/predict", data=jpeg.tobytes(),
                                         headers={"Content-Type": "image/jpeg"})
        reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert reply["status"] == "ok" and reply["top"] == "happiness", reply
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The wheel installed into a fresh venv, as README's run command installs it: no torch."""
    where = tmp_path_factory.mktemp("lean")
    wheel = build_wheel(where / "wheels")
    venv = make_venv(where / "venv", str(wheel))
    print(f"pip install of the wheel into a fresh venv: {venv.install_s:.1f} s, "
          f"{venv.size_mb():.0f} MB")
    return venv


def loadtest(venv: Venv, url: str, images: Path, kind: str) -> dict:
    """The installed load-test client: 2 s of one client at 10 fps; its JSON summary (every
    frame sent must be answered; how many it sent is the machine's business)."""
    done = subprocess.run([str(venv.python), "-m", "streamfer.loadtest", "--url", url,
                           "--images", str(images), "--kind", kind, "--clients", "1",
                           "--fps", "10", "--seconds", "2", "--json", "--target-ms", "60000",
                           "--max-loss", "1"],
                          capture_output=True, text=True, timeout=120, cwd=images,
                          env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_the_cpu_server_installs_and_runs_without_torch(
        lean_venv: Venv, tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    """`pip install` brings no torch (nor the tflite parser, nor OpenCV); the installed server
    streams crops and full frames over /ws and answers /api/predict, one process or two with
    an inference worker, and none of its processes ever loads PyTorch or OpenCV; /api/video,
    which needs OpenCV, says which extra brings it before reading the upload."""
    assert not lean_venv.has("torch") and not lean_venv.has("tflite")
    assert not lean_venv.has("cv2") and lean_venv.has("simplejpeg")
    assert lean_venv.has("onnxruntime") and lean_venv.has("ai_edge_litert")
    images = tmp_path / "images"
    images.mkdir()
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR))
    (images / "astronaut.jpg").write_bytes(jpeg.tobytes())
    model = installed_model(lean_venv)
    for args in ((), ("--processes", "2", "--inference-worker")):
        with running_server(model, args, log_path=tmp_path / f"server{len(args)}.log",
                            python=lean_venv.python, start_timeout=120) as server:
            assert server.health["runtime"] == "onnx-int8", server.health
            if WEIGHTS_FILE.is_file():  # the wheel carries the page's detector
                assert "LiteRT" in server.health["face_detector"], server.health
            for kind in ("crops", "frames"):
                summary = loadtest(lean_venv, server.url, images, kind)
                assert summary["answered"] == summary["sent"] == summary["ok"] > 0, summary
            base = server.base
            request = urllib.request.Request(base + "/api/predict", data=jpeg.tobytes(),
                                             headers={"Content-Type": "image/jpeg"})
            reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
            assert reply["status"] == "ok" and reply["top"] == "happiness", reply
            pids = server.pids()  # with args: parent, 2 front-ends, worker (+ multiprocessing's
            assert len(pids) >= (1 if not args else 4), pids  # resource tracker)
            assert server.health.get("inference_worker", server.pid) in pids
            assert not [pid for pid in pids if maps_torch(pid)]
            assert not [pid for pid in pids if maps_opencv(pid)]
            video = urllib.request.Request(base + "/api/video", data=b"\0" * 1024)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(video, timeout=60)
            body = json.loads(refused.value.read())
            assert refused.value.code == 501 and body["code"] == "not_installed", body
            assert "pip install 'streamfer[video]'" in body["error"], body


@pytest.mark.parametrize("args, what", [
    (("--runtime", "torchscript"), "--runtime torchscript"),
    (("--device", "cuda"), "--device cuda"),
    (("--device", "cuda", "--processes", "2", "--inference-worker"), "--device cuda"),
])
def test_without_torch_what_needs_it_names_the_extra(lean_venv: Venv, tmp_path: Path,
                                                     args: tuple[str, ...], what: str) -> None:
    done = subprocess.run([str(lean_venv.python), "-m", "streamfer.serve", "--host",
                           "127.0.0.1", "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=clean_env())
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and what in lines[0] and "pip install 'streamfer[gpu]'" in lines[0], (
        lines)


def test_where_torch_is_installed_the_cpu_server_still_never_imports_it(
        tmp_path: Path) -> None:
    """In a test or training environment (torch installed) the int8 server does not load it
    either; the TorchScript runtime does (the check can fail)."""
    with running_server(DEFAULT_MODEL, ("--device", "cpu"),
                        log_path=tmp_path / "int8.log") as server:
        assert server.health["runtime"] == "onnx-int8"
        assert not maps_torch(server.pid)
    with running_server(DEFAULT_MODEL, ("--device", "auto", "--runtime", "torchscript"),
                        log_path=tmp_path / "torchscript.log") as server:
        assert server.health["runtime"] == "torchscript"
        assert maps_torch(server.pid)


def installed_model(venv: Venv) -> Path:
    where = subprocess.run([str(venv.python), "-c", "from streamfer.paths import "
                            "DEFAULT_MODEL; print(DEFAULT_MODEL)"], capture_output=True,
                           text=True, check=True, cwd=venv.path, env=clean_env())
    return Path(where.stdout.strip())
