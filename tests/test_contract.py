"""The model contract without torch: the metadata read straight from the TorchScript archive
is the metadata torch reads, and a CPU server's model and detector never import torch."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from streamfer import contract
from streamfer.contract import ModelError
from streamfer.detect import SPECS, WEIGHTS_DIR
from streamfer.paths import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("model", sorted((ROOT / "models").glob("*.pt")), ids=lambda p: p.name)
def test_metadata_without_torch_is_what_torch_reads(model: Path) -> None:
    _, meta = contract.read(model)
    assert contract.read_metadata(model) == meta and meta.classes


def test_a_file_that_is_not_a_model_is_refused_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        contract.read_metadata(tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(ModelError, match="not a TorchScript file"):
        contract.read_metadata(tmp_path / "text.pt")
    with zipfile.ZipFile(tmp_path / "bare.pt", "w") as z:
        z.writestr("bare/data.pkl", b"")
    with pytest.raises(ModelError, match="no 'classes'"):
        contract.read_metadata(tmp_path / "bare.pt")
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as z:
        z.writestr("bad/extra/metadata.json", "{not json")
    with pytest.raises(ModelError, match="not JSON"):
        contract.read_metadata(tmp_path / "bad.pt")


def test_the_cpu_servers_model_and_detector_do_not_import_torch() -> None:
    """In a fresh interpreter (torch installed here): the server's modules, the shipped model
    on its int8 runtime and BlazeFace on LiteRT, and then still no torch in sys.modules."""
    code = ("import sys, numpy as np; import streamfer.server.serve; "
            "from streamfer.model import Predictor; from streamfer.detect import load_detector; "
            f"p = Predictor({str(DEFAULT_MODEL)!r}, device='cpu'); "
            "assert p.runtime == 'onnx-int8' and p.device == 'cpu', p.runtime; "
            "p.forward(np.full((2, p.input_size, p.input_size), 99, np.uint8)); "
            "d = load_detector('cpu'); d.detect(np.full((120, 160), 99, np.uint8)); "
            "print(d.description); assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if (WEIGHTS_DIR / SPECS["short"].file).is_file():
        assert "LiteRT" in done.stdout
