"""The model contract: the one reader and writer of an exported model file.

An exported model is a TorchScript file whose `predict(faces, tta)` takes N x 1 x S x S faces
(0-255) and returns N x C probabilities; `metadata.json` rides inside it (and beside it as
NAME.json) with everything the server needs besides the weights: class names, input size,
normalisation, the test-time-averaging modes and default, the preprocessing, the network
config (so training can rebuild it), metrics and the command that made it. training/export.py
writes it through `write`; training, export and the benchmarks read it through `read`.

A TorchScript file is a zip archive, its extra files under `<archive>/extra/`:
`read_metadata` takes the metadata from there with `zipfile`, without PyTorch, so a CPU server
running the int8 derivative (streamfer/onnx_int8.py) never imports torch. Nothing here
imports training code, nor torch until a TorchScript module is loaded or saved.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FORMAT = "streamfer-torchscript-1"
METADATA = "metadata.json"
TTA_MODES = ("ten", "mirror", "centre")  # test-time averaging: 10 crops, centre + mirror, centre
TTA_VIEWS = {"ten": 10, "mirror": 2, "centre": 1}  # views per face of each mode


class ModelError(RuntimeError):
    """The model file is missing, unreadable, or lacks the metadata the server needs."""


def read(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a model file (on the CPU) and its metadata, or raise ModelError saying why not."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    extra = {METADATA: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ModelError(f"{path} is not a loadable TorchScript file: {exc}") from exc
    return module, _parse(path, extra[METADATA])


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A model file's metadata, read from the zip archive TorchScript writes, without torch;
    raises ModelError saying why not (the same checks as `read`, but the network itself is
    not loaded: a file whose archive holds corrupt weights passes here)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist()
                     if n.count("/") == 2 and n.endswith(f"/extra/{METADATA}")]
            text = archive.read(names[0]).decode() if names else ""
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not a TorchScript file: {exc}") from exc
    return _parse(path, text)


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        meta = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: {METADATA} inside it is not JSON: {exc}") from exc
    if not isinstance(meta, dict) or not meta.get("classes"):
        raise ModelError(f"{path}: {METADATA} has no 'classes' list")
    return meta


def input_size(meta: dict[str, Any]) -> int:
    """The side of the square faces the model takes."""
    return int(meta.get("input", {}).get("size", 48))


def write(scripted: torch.jit.ScriptModule, path: str | Path, meta: dict[str, Any]) -> Path:
    """Save `scripted` with `meta` inside it and beside it (NAME.json); returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, **meta}, indent=2, sort_keys=False)
    replace_atomically(path, lambda tmp: torch.jit.save(scripted, str(tmp),
                                                        _extra_files={METADATA: text}))
    replace_atomically(path.with_suffix(".json"), lambda tmp: tmp.write_text(text + "\n"))
    return path


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Have `write` fill a temporary file beside `path`, then rename it over `path`.

    A reader (a server starting, a run resuming) then finds the old file or the new one, never
    half of one, and a write killed or failing part-way leaves the old file whole and no
    temporary behind. Used for every file the server or a resumed run reads back.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
