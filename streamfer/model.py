"""The model as the server runs it: load, pick a device, warm up, predict.

The file format is training/export.py's contract (streamfer/contract.py): a TorchScript file
that `torch.jit.load` alone runs, its metadata (class names, input size, test-time-averaging
modes) inside as `metadata.json`. On the CPU the server runs the int8 ONNX derivative of that
file when it was made from it (streamfer/onnx_int8.py): then only the metadata is read from
the TorchScript archive and torch is never imported, so a CPU server installs and runs
without it. The TorchScript itself (`--runtime torchscript`, CUDA, or no derivative) needs
PyTorch: `pip install 'streamfer[gpu]'`. Nothing here imports training code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamfer import contract, onnx_int8
from streamfer.contract import ModelError
from streamfer.faces import PREPROCESS_MODES, preprocess_faces
from streamfer.optional import TorchMissing, has_torch, import_torch, may_have_cuda

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without one is an error,
    not a fallback."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    if device == "auto":
        device = "cuda" if may_have_cuda() and import_torch("CUDA").cuda.is_available() \
            else "cpu"
    if device == "cuda" and not import_torch("--device cuda").cuda.is_available():
        raise ModelError("--device cuda asked for, but torch sees no CUDA device")
    return device


def check_torch(model: str | Path, device: str, runtime: str) -> None:
    """Before starting any process: TorchMissing when torch is not installed and these
    settings surely need it (CUDA, the TorchScript runtime, or no int8 derivative to run).
    A derivative that turns out stale is found later, by the Predictor, with the same error."""
    if has_torch():
        return
    if device == "cuda":
        raise TorchMissing("--device cuda")
    if runtime == "torchscript":
        raise TorchMissing("--runtime torchscript")
    if not onnx_int8.derived_path(model).is_file():
        raise TorchMissing(f"the TorchScript model (no {onnx_int8.derived_path(model).name} "
                           "beside it: python -m training.quantize makes it)")


load_metadata = contract.read  # the model file and its metadata (streamfer/contract.py)


def optimized_for_cpu(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """The module frozen (weights become constants, batch norm folds into the convolutions)
    and passed through `torch.jit.optimize_for_inference` (oneDNN's fused, pre-packed conv
    kernels): less CPU time per face with the same probabilities (`python -m bench.model
    batches` times both side by side; docs/BENCHMARKS.md). Where a TorchScript pass fails on
    some model or torch version, the module runs as loaded, with a warning.
    """
    import torch

    try:
        frozen = torch.jit.freeze(module.eval(), preserved_attrs=["predict"])
        return torch.jit.optimize_for_inference(frozen, other_methods=["predict"])
    except Exception as exc:  # any failure here must not stop the server
        log.warning("running the model as loaded: optimising it for the CPU failed: %s", exc)
        return module


class Predictor:
    """Faces in (N x S x S uint8), class probabilities out (N x C float32), one thread.

    Not thread-safe: the server calls `forward` from its single inference thread only. On
    CUDA, batches go through a reused pinned host buffer so the host->device copy is
    asynchronous (non_blocking); reading the result back synchronises before it is reused.
    With the int8 derivative (`runtime == "onnx-int8"`) `module` is None and torch is not
    imported; `threads` > 0 also sets torch's thread count where the TorchScript runs.
    """

    def __init__(self, path: str | Path, *, device: str = "auto", tta: str | None = None,
                 max_batch: int = 64, optimize: bool = True, runtime: str = "auto",
                 threads: int = 0) -> None:
        meta = contract.read_metadata(path)
        self.path = Path(path)
        self.metadata: contract.ModelMeta = meta
        self.name: str = meta.name or self.path.stem
        self.classes: list[str] = list(meta.classes)
        self.input_size: int = meta.input_size
        self.tta_modes: list[str] = list(meta.tta_modes)
        self.tta: str = tta or meta.tta_default
        if self.tta not in self.tta_modes:
            raise ModelError(f"tta {self.tta!r} is not one of this model's {self.tta_modes}")
        # What the model's training faces looked like; the server must feed it the same.
        self.preprocess: str = meta.preprocess
        if self.preprocess not in PREPROCESS_MODES:
            raise ModelError(f"{path}: metadata preprocess {self.preprocess!r} is not one of "
                             f"{PREPROCESS_MODES}; a newer streamfer may be needed")
        self.device: str = resolve_device(device)
        self.int8, why = self._int8(runtime, threads)
        self.runtime = "onnx-int8" if self.int8 is not None else "torchscript"
        self.module: torch.jit.ScriptModule | None = None
        self.optimized = False
        self._staging: torch.Tensor | None = None
        if self.int8 is None:
            self._load_torchscript(f"the TorchScript model ({why})", optimize, max_batch,
                                   threads)

    def _load_torchscript(self, what: str, optimize: bool, max_batch: int,
                          threads: int) -> None:
        torch = import_torch(what)
        if threads:
            torch.set_num_threads(threads)
        module, _ = load_metadata(self.path)
        self.module = module.to(self.device).eval()
        if optimize and self.device == "cpu":
            self.module = optimized_for_cpu(self.module)
        self.optimized = self.module is not module
        if self.device == "cuda":
            self._staging = torch.empty((max_batch, self.input_size, self.input_size),
                                        dtype=torch.uint8).pin_memory()

    def _int8(self, runtime: str, threads: int) -> tuple[onnx_int8.Int8Session | None, str]:
        """The int8 ONNX derivative on the CPU when asked for (or 'auto' and it is there and
        matches this model); otherwise None and why not: the TorchScript runs. It runs on
        `threads` threads, one when 0: a server's other cores are better spent on the decode
        threads, the event loop and other processes than on splitting one small batch (one
        thread held more clients than two on a 2-core machine: docs/notebook/, the speed
        history)."""
        if runtime not in onnx_int8.RUNTIMES:
            raise ValueError(f"runtime must be one of {onnx_int8.RUNTIMES}")
        if runtime == "torchscript":
            return None, "--runtime torchscript"
        if self.device != "cpu":
            if runtime == "onnx-int8":
                raise ModelError("--runtime onnx-int8 runs on the CPU only")
            return None, f"--device {self.device}"
        session, why = onnx_int8.load_for(self.path, self.tta, threads or 1)
        if session is None:
            if runtime == "onnx-int8":
                raise ModelError(f"--runtime onnx-int8: {why}")
            log.info("running the TorchScript model: %s", why)
        return session, why

    def forward(self, faces: np.ndarray) -> np.ndarray:
        """N x S x S uint8 faces -> N x C probabilities (rows sum to 1)."""
        if faces.ndim != 3 or faces.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(f"expected N x {self.input_size} x {self.input_size} faces, "
                             f"got {faces.shape}")
        faces = preprocess_faces(np.ascontiguousarray(faces, dtype=np.uint8), self.preprocess)
        if self.int8 is not None:  # its averaging (self.tta: load_for checks) is baked in
            return self.int8(faces)
        import torch

        assert self.module is not None
        with torch.inference_mode():
            x = torch.from_numpy(faces)
            if self.device == "cuda":
                n = x.shape[0]
                if self._staging is not None and n <= self._staging.shape[0]:
                    staged = self._staging[:n]
                    staged.copy_(x)
                else:
                    staged = x.pin_memory()
                x = staged.to(self.device, non_blocking=True)
            probs = self.module.predict(x.unsqueeze(1), self.tta)
            return probs.float().cpu().numpy()

    def warm_up(self, max_batch: int, rounds: int = 3) -> None:
        """Run batches first so that compilation lands at start-up, not on the first users.

        TorchScript profiles and optimises its graph on the first calls, and CUDA initialises
        lazily. On CUDA its fuser also specialises the graph for each new input shape, which
        stalled a GPU server for ~0.3 s the first time the batcher formed a batch of a new size
        (`python -m bench.server ramp`), so there every size up to `max_batch` is run; on the CPU
        nothing is compiled per shape and the smallest and largest sizes suffice.
        """
        sizes = (range(1, max_batch + 1) if self.device == "cuda"
                 else sorted({1, max_batch}))
        for n in sizes:
            faces = np.full((n, self.input_size, self.input_size), 128, np.uint8)
            for _ in range(rounds):
                self.forward(faces)
        log.debug("warmed up %s on %s with batches up to %d", self.name, self.device, max_batch)
