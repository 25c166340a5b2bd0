"""CPU cost per face of models as the server runs them, side by side in one process.

Each model is loaded by `streamfer.model.Predictor` (on the CPU its int8 ONNX derivative
where one was made from that file, else the frozen, fused TorchScript; each row names the
runtime), with its own preprocessing from the metadata, e.g. histogram equalisation, and
its default test-time averaging, on one thread; every round times one `forward` call per
model, in turn, so the machine's load hits all of them alike. Reports the median process CPU
time and wall time per face for each batch size, and their ratio to the first model.

    python -m bench.served_cost models/fer2013-5class.pt models/ferplus-5class.pt \\
        --results bench/results     # -> bench/results/<machine>/served_cost.json
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.machine import describe, machine_info
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.model import Predictor


@dataclass(frozen=True)
class ServedCostConfig:
    models: tuple[Path, ...] = opt((), "the models (.pt) to compare; ratios are to the first",
                                   positional=True)
    batches: tuple[int, ...] = opt((1, 16), "comma-separated batch sizes", comma=True)
    rounds: int = opt(30, "timed rounds (median)")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("served_cost", "result name")


def main(argv: list[str] | None = None) -> None:
    a = parse(ServedCostConfig, argv, prog="python -m bench.served_cost", description=__doc__)
    torch.set_num_threads(1)
    predictors = [Predictor(m, device="cpu") for m in a.models]
    faces = np.random.default_rng(0).integers(0, 256, (256, 48, 48), dtype=np.uint8)
    result: dict = {"machine": machine_info(), "threads": 1, "rounds": a.rounds, "rows": []}
    for n in a.batches:
        batch = faces[:n]
        for pr in predictors:
            for _ in range(3):
                pr.forward(batch)  # warm-up: TorchScript profiles its first calls
        cpu: list[list[float]] = [[] for _ in predictors]
        wall: list[list[float]] = [[] for _ in predictors]
        for _ in range(a.rounds):
            for i, pr in enumerate(predictors):
                c0, w0 = time.process_time(), time.perf_counter()
                pr.forward(batch)
                cpu[i].append((time.process_time() - c0) * 1e3 / n)
                wall[i].append((time.perf_counter() - w0) * 1e3 / n)
        base = statistics.median(cpu[0])
        for i, pr in enumerate(predictors):
            row = {"model": str(a.models[i]), "runtime": pr.runtime, "tta": pr.tta,
                   "preprocess": pr.preprocess, "batch": n,
                   "cpu_ms_per_face": statistics.median(cpu[i]),
                   "wall_ms_per_face": statistics.median(wall[i]),
                   "cpu_ratio_to_first": statistics.median(cpu[i]) / base}
            result["rows"].append(row)
            print(f"batch {n:3d}  {a.models[i].name:28s} {pr.tta:6s} {pr.preprocess:13s} "
                  f"cpu {row['cpu_ms_per_face']:.2f} ms/face  wall {row['wall_ms_per_face']:.2f}"
                  f"  x{row['cpu_ratio_to_first']:.2f}")
    print(describe(result["machine"]))
    figures = {"cpu_ms_per_face": {
        m.stem: {str(r["batch"]): round(r["cpu_ms_per_face"], 3)
                 for r in result["rows"] if r["model"] == str(m)} for m in a.models}}
    print("wrote", results.write(a.results, results.make(a.name, figures, result)))


if __name__ == "__main__":
    main()
