"""The model contract: the one reader and writer of an exported model file.

An exported model is a TorchScript file whose `predict(faces, tta)` takes N x 1 x S x S faces
(0-255) and returns N x C probabilities; `metadata.json` rides inside it (and beside it as
NAME.json) with everything the server needs besides the weights: class names, input size,
normalisation, the test-time-averaging modes and default, the preprocessing, the network
config (so training can rebuild it), metrics and the command that made it. `ModelMeta` is its
typed form, and the only code that knows its keys: `read` and `read_metadata` parse it into one,
`write` writes one (training/export.py), and the server, training, export, quantisation and the
benchmarks read its attributes.

A TorchScript file is a zip archive, its extra files under `<archive>/extra/`:
`read_metadata` takes the metadata from there with `zipfile`, without PyTorch, so a CPU server
running the int8 derivative (streamfer/onnx_int8.py) never imports torch. Nothing here
imports training code, nor torch until a TorchScript module is loaded or saved.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
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


# What every exported model's "input" says besides its size: grayscale, 0-255 pixels.
_INPUT = {"channels": 1, "range": "0-255", "dtype": "uint8 or float32"}


@dataclass(frozen=True)
class ModelMeta:
    """A model file's metadata, typed: what the server needs to run the model (classes, input
    size, averaging modes, preprocessing), what training needs to rebuild it (network config,
    crop, normalisation) and what describes it (name, metrics, command, any notes).

    Only `classes` is required of a file; every other key has the default an older file
    implies. `notes` holds every key this class does not name (a shipped model's recipe, how it
    was chosen), kept as written."""

    classes: tuple[str, ...]
    name: str = ""
    input_size: int = 48  # the side of the square faces the model takes
    crop: int | None = None  # the side of the crops the network sees (training)
    mean: float | None = None  # the normalisation the weights expect
    std: float | None = None
    tta_default: str = "mirror"
    tta_modes: tuple[str, ...] = TTA_MODES
    preprocess: str = "none"  # faces.PREPROCESS_MODES: what the training faces looked like
    network: dict[str, Any] | None = None  # training.network.NetConfig's fields
    logit_adjust: dict[str, Any] | None = None  # {"tau", "prior", ...}: training/calibrate.py
    params: int | None = None
    train_data: str | None = None
    metrics: dict[str, Any] | None = None
    command: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelMeta:
        """Parse the JSON object of `metadata.json`; raises ModelError if it has no classes."""
        if not isinstance(raw, Mapping) or not raw.get("classes"):
            raise ModelError(f"{METADATA} has no 'classes' list")
        named = {f.name for f in fields(cls)} - {"input_size", "notes"}
        rest = {k: v for k, v in raw.items() if k not in named and k not in ("format", "input")}
        got = {k: v for k, v in raw.items() if k in named}
        size = (raw.get("input") or {}).get("size", 48)
        try:
            return cls(**{
                **got,
                "classes": tuple(str(c) for c in got["classes"]),
                "name": str(got.get("name") or ""),
                "input_size": int(size),
                "crop": None if got.get("crop") is None else int(got["crop"]),
                "mean": None if got.get("mean") is None else float(got["mean"]),
                "std": None if got.get("std") is None else float(got["std"]),
                "tta_default": str(got.get("tta_default", "mirror")),
                "tta_modes": tuple(str(m) for m in got.get("tta_modes", TTA_MODES)),
                "preprocess": str(got.get("preprocess", "none")),
                "notes": rest,
            })
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{METADATA} is malformed: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON object `write` stores: the file's format, then the geometry, the network,
        what the model predicts, how it was made, then the notes; keys left unset are left
        out."""
        out: dict[str, Any] = {"format": FORMAT,
                               "input": {"size": self.input_size, **_INPUT},
                               "crop": self.crop, "mean": self.mean, "std": self.std,
                               "tta_default": self.tta_default,
                               "tta_modes": list(self.tta_modes), "network": self.network,
                               "name": self.name or None, "classes": list(self.classes),
                               "preprocess": self.preprocess, "params": self.params,
                               "train_data": self.train_data, "metrics": self.metrics,
                               "command": self.command, "logit_adjust": self.logit_adjust}
        return {**{k: v for k, v in out.items() if v is not None}, **self.notes}

    def with_notes(self, notes: Mapping[str, Any]) -> ModelMeta:
        """This metadata with `notes` added (or replacing what they name: the name, metrics,
        command...); raises ValueError for a key that says what the weights compute (FIXED)."""
        check_notes(notes)
        return ModelMeta.from_dict({**self.to_dict(), **notes})

    def with_geometry(self, *, input_size: int, crop: int, mean: float, std: float,
                      tta_default: str, network: dict[str, Any]) -> ModelMeta:
        """This metadata with what export derives from the network itself (DERIVED and the
        network config): it is never kept from an older file nor set by hand."""
        return replace(self, input_size=input_size, crop=crop, mean=mean, std=std,
                       tta_default=tta_default, tta_modes=TTA_MODES, network=network)


# Keys that describe the file's format and geometry: export derives them from the network.
DERIVED = frozenset({"format", "input", "crop", "mean", "std", "tta_default", "tta_modes"})
# Keys no note may set: they say what the weights compute.
FIXED = DERIVED | {"network", "classes", "preprocess", "logit_adjust"}


def check_notes(notes: Mapping[str, Any]) -> None:
    """Raise ValueError if `notes` would set a key that says what the weights compute."""
    fixed = FIXED & notes.keys()
    if fixed:
        raise ValueError(f"metadata {sorted(fixed)} says what the weights compute and "
                         "cannot be set by a note")


def read(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelMeta]:
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


def read_metadata(path: str | Path) -> ModelMeta:
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


def _parse(path: Path, text: str) -> ModelMeta:
    try:
        raw = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: {METADATA} inside it is not JSON: {exc}") from exc
    try:
        return ModelMeta.from_dict(raw)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc


def write(scripted: torch.jit.ScriptModule, path: str | Path, meta: ModelMeta) -> Path:
    """Save `scripted` with `meta` inside it and beside it (NAME.json); returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta.to_dict(), indent=2, sort_keys=False)
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
