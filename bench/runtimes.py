"""CPU runtimes for the same model, side by side: CPU time per face and accuracy.

    python -m bench.runtimes                      # the shipped model, FER2013 PublicTest
    python -m bench.runtimes --threads 1 --batches 1,8,16 --reps 60

Runs, in one process and interleaved round by round (so a noisy machine slows all alike):
the TorchScript file as loaded, frozen + fused (the server's default until the int8 path),
and the int8 ONNX derivative (`python -m training.quantize`; streamfer/onnx_int8.py), each
exactly as the server's Predictor runs it with the model's default test-time averaging.
Then each runtime's accuracy on FER2013 PublicTest (the paper's five classes, original
labels) and how often the two agree. Prints a table and saves JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamfer.cli import opt, parse
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_MODEL
from training.data import load_folder

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RuntimesConfig:
    model: Path = opt(DEFAULT_MODEL, "the TorchScript model (its int8 derivative beside it)")
    threads: int = opt(1, "torch / ONNX Runtime threads")
    batches: str = opt("1,8,16", "batch sizes to time")
    reps: int = opt(40, "timed rounds per batch size")
    test: Path = opt(ROOT.parent / "shared" / "datasets" / "fer2013" / "test",
                     "FER2013 PublicTest folder ('' to skip accuracy)")
    out: Path = opt(ROOT / "bench" / "results" / "runtimes.json", "results JSON")


def main(argv: list[str] | None = None) -> None:
    a = parse(RuntimesConfig, argv, prog="python -m bench.runtimes",
              description=__doc__.split("\n\n")[0])
    torch.set_num_threads(a.threads)
    runtimes = {
        "torchscript as loaded": Predictor(a.model, device="cpu", optimize=False,
                                           runtime="torchscript"),
        "torchscript frozen + fused": Predictor(a.model, device="cpu", runtime="torchscript"),
        "onnx-int8": Predictor(a.model, device="cpu", runtime="onnx-int8"),
    }
    first = next(iter(runtimes.values()))
    size = first.input_size
    rng = np.random.default_rng(0)
    result: dict = {"model": a.model.name, "tta": first.tta, "threads": a.threads,
                    "cpu": _cpu_name(), "ms_per_face": {}, "accuracy": {}}
    for n in [int(b) for b in a.batches.split(",")]:
        faces = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        times: dict[str, list[float]] = {k: [] for k in runtimes}
        for pred in runtimes.values():
            pred.forward(faces)  # warm
        for _ in range(a.reps):
            for name, pred in runtimes.items():
                t0 = time.process_time()
                pred.forward(faces)
                times[name].append((time.process_time() - t0) * 1000 / n)
        row = {k: round(float(np.median(v)), 3) for k, v in times.items()}
        result["ms_per_face"][str(n)] = row
        base = row["torchscript frozen + fused"]
        print(f"batch {n:3d}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in row.items())
              + f"  (fused / int8 = {base / row['onnx-int8']:.2f}x)")
    if str(a.test) and a.test.is_dir():
        test = load_folder(a.test, first.classes, size)  # FER2013's folder names mapped
        faces, labels = test.images, test.labels
        preds = {}
        for name in ("torchscript frozen + fused", "onnx-int8"):
            pred = runtimes[name]
            probs = np.concatenate([pred.forward(faces[i:i + 64])
                                    for i in range(0, len(faces), 64)])
            preds[name] = probs.argmax(1)
            result["accuracy"][name] = round(float((preds[name] == labels).mean()), 4)
        agree = float((preds["onnx-int8"] == preds["torchscript frozen + fused"]).mean())
        result["accuracy"]["agreement"] = round(agree, 4)
        result["accuracy"]["faces"] = len(labels)
        print(f"FER2013 PublicTest ({len(labels)} faces, {', '.join(first.classes)}; original "
              f"labels, {first.tta} averaging): "
              + "  ".join(f"{k} {100 * v:.2f}%" for k, v in result["accuracy"].items()
                          if k not in ("faces", "agreement"))
              + f"  (same answer on {100 * agree:.1f}%)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {a.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
