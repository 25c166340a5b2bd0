"""`pip install .` (not editable): the wheel carries the shipped model and the page, and the
installed server runs from anywhere, with no checkout beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.serverproc import free_port
from streamfer.paths import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


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
    assert web.is_relative_to(prefix) and (web / "index.html").is_file()

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
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR))
        request = urllib.request.Request(base + "/api/predict", data=jpeg.tobytes(),
                                         headers={"Content-Type": "image/jpeg"})
        reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert reply["status"] == "ok" and reply["top"] == "happiness", reply
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
