"""Shared fixtures: a tiny real TorchScript model, real face images, the data-set path, the
real server in its own process (for the hardening tests and for the page's), the browser.

Only what every test needs is imported here: torch, the training code and the browser load
inside the fixtures that use them, so tests of the load test, the protocol or the page do not
pay for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from streamfer.paths import DEFAULT_DATASETS
from tests.kit import browserkit, serverproc

if TYPE_CHECKING:
    from streamfer.model import Predictor
    from tests.kit.inproc import MakeClient

ROOT = Path(__file__).resolve().parent.parent
DATASETS = DEFAULT_DATASETS  # ../shared/datasets beside the checkout, or STREAMFER_DATASETS
CLASSES = ["anger", "happiness", "sadness", "surprise", "neutral"]


@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's per-user state (--https's certificate) in a folder of the test run's,
    never the user's own ~/.local/state; servers started as subprocesses inherit it."""
    import os

    folder = tmp_path_factory.mktemp("xdg-state")
    os.environ["XDG_STATE_HOME"] = str(folder)
    return folder


def export_tiny(folder: Path, name: str, classes: tuple[str, ...], seed: int) -> Path:
    """A small untrained network with `classes`, exported through the real export path
    (fast to run) as `folder`/`name`.pt."""
    import torch

    from streamfer.contract import ModelMeta
    from training.export import Deployed, export
    from training.network import FERNet, NetConfig

    torch.manual_seed(seed)
    net = FERNet(NetConfig(crop=44, classes=len(classes), conv_channels=(8, 8), local_channels=4))
    deployed = Deployed(net, size=48, crop=44, mean=128.0, std=64.0, tta="mirror")
    path = folder / f"{name}.pt"
    export(deployed, path, ModelMeta(name=name, classes=classes, metrics={}))
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network with five classes, the model most tests serve."""
    return export_tiny(tmp_path_factory.mktemp("model"), "tiny", tuple(CLASSES), seed=0)


@pytest.fixture(scope="session")
def tiny8_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network with FER+'s eight classes (training.data.FERPLUS8's order): code that
    must not assume five classes is tested with it."""
    from training.data import FERPLUS8

    return export_tiny(tmp_path_factory.mktemp("model8"), "tiny8", tuple(FERPLUS8), seed=1)


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    """scikit-image's astronaut: a real, smiling, frontal face (512x512 RGB)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def astronaut_scene(astronaut_rgb: np.ndarray) -> np.ndarray:
    """Her head and shoulders as a selfie frames them, in a room (the fake cameras' scene):
    the face about a third of the frame high."""
    from tests.kit.fakecam import scene

    return scene(astronaut_rgb[0:340, 80:420])


@pytest.fixture(scope="module")
def frame_jpeg(astronaut_rgb: np.ndarray) -> bytes:
    """A full camera-like frame with one face (the astronaut), as JPEG."""
    from tests.kit.fakecam import jpeg

    return jpeg(astronaut_rgb)


@pytest.fixture(scope="module")
def predictor(tiny_model_path: Path) -> Predictor:
    """The tiny model on the CPU, one thread (the machine is shared), for the module's
    in-process servers (`make_client`)."""
    import torch

    from streamfer.model import Predictor

    torch.set_num_threads(1)
    return Predictor(tiny_model_path, device="cpu")


@pytest.fixture
def make_client(aiohttp_client: Any, predictor: Predictor, tiny_model_path: Path) -> MakeClient:
    """Starts the real server's application in the test process, with the tiny model and
    tests.kit.inproc's configuration, each keyword replacing one of its fields."""
    from streamfer.server.app import init_app
    from tests.kit.inproc import Client, config

    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(init_app(config(tiny_model_path, **overrides), predictor))
    return make


@pytest.fixture(scope="session")
def quantized(tiny_model_path: Path, astronaut_rgb: np.ndarray,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A copy of the tiny model with its int8 ONNX derivative beside it (what the server
    runs on the CPU), calibrated on real face crops (JPEG files); and those faces."""
    import shutil

    import cv2

    from streamfer import onnx_int8
    from training.quantize import QuantizeConfig, quantize

    folder = tmp_path_factory.mktemp("model-int8")
    model = folder / "tiny.pt"
    shutil.copy(tiny_model_path, model)
    gray = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)
    calib = folder / "calibration"
    calib.mkdir()
    rng = np.random.default_rng(0)
    faces = []
    for i in range(48):  # jittered crops around her face, as a detector's boxes vary
        x, y, side = 170 + rng.integers(-20, 20), 40 + rng.integers(-20, 20), rng.integers(
            120, 180)
        face = cv2.resize(gray[y:y + side, x:x + side], (48, 48), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(calib / f"face{i}.jpg"), face)
        faces.append(face)
    path = quantize(QuantizeConfig(model=str(model), data=str(calib), count=48, batch=16))
    assert path == onnx_int8.derived_path(model) and path.name == "tiny.int8.onnx"
    return model, np.stack(faces)


@pytest.fixture(scope="session")
def datasets() -> Path:
    """../shared/datasets beside the project; tests that need the real data skip without."""
    if not DATASETS.is_dir():
        pytest.skip(f"data sets not found at {DATASETS} (../shared/datasets beside the project)")
    return DATASETS


@pytest.fixture(scope="module")
def server_args() -> tuple[str, ...]:
    """The flags `server` starts with; a module overrides this fixture to choose its own."""
    return ("--device", "cpu")


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, server_args: tuple[str, ...],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[serverproc.Server]:
    """`python -m streamfer.serve` with the tiny model and `server_args`, in its own process
    on a free loopback port, for the module's tests."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with serverproc.running_server(tiny_model_path, server_args, log_path=log,
                                   start_timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def page_server(tiny_model_path: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[browserkit.Server]:
    """The server the page's tests open in a browser: the tiny (untrained, fast) model, since
    the page's behaviour is under test, not the model's accuracy."""
    with browserkit.serving(tiny_model_path,
                            tmp_path_factory.mktemp("server") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright, for the module's browsers (browserkit.phone)."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        yield p
