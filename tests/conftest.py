"""Shared fixtures: a tiny real TorchScript model, real face images, the data-set path.

Only what every test needs is imported here: torch and the training code load inside the
fixtures that use them, so tests of the load test, the protocol or the page do not pay for
them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
CLASSES = ["anger", "happiness", "sadness", "surprise", "neutral"]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained network exported through the real export path (fast to run)."""
    import torch

    from training.export import Deployed, export
    from training.network import FERNet, NetConfig

    torch.manual_seed(0)
    net = FERNet(NetConfig(crop=44, classes=5, conv_channels=(8, 8), local_channels=4))
    deployed = Deployed(net, size=48, crop=44, mean=128.0, std=64.0, tta="mirror")
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    export(deployed, path, {"name": "tiny", "classes": CLASSES, "metrics": {}})
    return path


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    """scikit-image's astronaut: a real, smiling, frontal face (512x512 RGB)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def datasets() -> Path:
    """../shared/datasets beside the project; tests that need the real data skip without."""
    if not DATASETS.is_dir():
        pytest.skip(f"data sets not found at {DATASETS} (../shared/datasets beside the project)")
    return DATASETS
