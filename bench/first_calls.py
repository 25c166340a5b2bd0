"""What the first call of each batch size costs, cold and after `Predictor.warm_up`.

TorchScript optimises its graph on the first calls, and on CUDA its fuser compiles a new
specialisation for each input shape it has not seen. A server that warmed up only a couple of
batch sizes then stalls the first time the micro-batcher forms a batch of a new size: on an
H200 that stall reached 0.2 s and failed a load step at 32 clients (docs/BENCHMARKS.md). This
times three successive calls at each of several batch sizes on a freshly loaded model (after
one call of batch 1, so that CUDA's own start-up is not counted), then the same on a model
warmed up as the server does it.

    python -m bench.first_calls --device cuda       # bench/results/<machine>/first_calls_cuda.json
    python -m bench.first_calls --device cpu --threads 1
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.machine import describe, machine_info
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.model import DEVICES, Predictor
from streamfer.paths import DEFAULT_MODEL
from streamfer.server.config import ServeConfig

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


SIZES = (1, 2, 3, 5, 8, 13, 21, 32)


def calls(predictor: Predictor, sizes: tuple[int, ...], repeats: int = 3) -> dict[int, list]:
    """ms of `repeats` successive calls per batch size, in order."""
    side = predictor.input_size
    out: dict[int, list] = {}
    for n in sizes:
        faces = np.full((n, side, side), 100, np.uint8)
        times = []
        for _ in range(repeats):
            if predictor.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            predictor.forward(faces)  # returns host numpy: the result is complete
            times.append(round((time.perf_counter() - t) * 1e3, 2))
        out[n] = times
    return out


@dataclass(frozen=True)
class FirstCallsConfig:
    model: Path = opt(DEFAULT_MODEL, "the TorchScript model to load")
    device: str = opt("auto", "where the model runs", DEVICES)
    max_batch: int = opt(ServeConfig().max_batch, "the largest batch timed and warmed up")
    threads: int = opt(0, "torch threads (0: torch's default)")
    out_dir: Path = opt(results.ROOT, "results root: writes "
                        "<root>/<machine>/first_calls_DEVICE.json")


def main(argv: list[str] | None = None) -> dict:
    a = parse(FirstCallsConfig, argv, prog="python -m bench.first_calls", description=__doc__)
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = tuple(n for n in SIZES if n <= a.max_batch)
    cold = Predictor(a.model, device=a.device, max_batch=a.max_batch)
    calls(cold, (1,), repeats=1)
    result: dict = {"benchmark": "first_calls", "model": str(a.model),
                    "device": str(cold.device), "torch": torch.__version__,
                    "machine": machine_info(), "cold_ms": calls(cold, sizes)}
    warm = Predictor(a.model, device=a.device, max_batch=a.max_batch)
    t = time.perf_counter()
    warm.warm_up(a.max_batch)
    result["warm_up_s"] = round(time.perf_counter() - t, 2)
    result["warm_ms"] = calls(warm, sizes)
    if cold.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    print(f"{describe(result['machine'])}; {result['device']}, torch {torch.__version__}")
    print(f"ms of three successive calls; warm-up of sizes up to {a.max_batch} took "
          f"{result['warm_up_s']} s")
    print(f"{'batch':>5}  {'cold model':<26} {'after warm_up':<26}")
    for n in sizes:
        print(f"{n:>5}  {result['cold_ms'][n]!s:<26} {result['warm_ms'][n]!s:<26}")
    figures = {"device": str(cold.device), "warm_up_s": result["warm_up_s"],
               "first_call_ms": {str(n): result["cold_ms"][n][0] for n in sizes},
               "warmed_first_call_ms": {str(n): result["warm_ms"][n][0] for n in sizes}}
    out = results.write(a.out_dir, results.make(f"first_calls_{cold.device}", figures, result))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
