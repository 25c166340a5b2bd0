"""The shipped TorchScript model alone: how fast is one micro-batch, per test-time averaging?

For batch sizes 1, 2, 4, ..., 256 and each averaging mode (centre: 1 view per face, mirror: 2,
ten: 10), times one call as the server's worker makes it -- a CPU uint8 N x 1 x 48 x 48 batch
moved to the device, `m.predict(x, mode)`, probabilities back on the CPU -- and reports the
median ms per batch, ms per face, faces/s, and on CPU the process CPU time per face (what a
core pays per face, the figure that sizes a deployment). On the CPU the model is timed both as
the server runs it (frozen and fused at load, streamfer.model.optimized_for_cpu) and as
loaded, side by side in one run.

    python -m bench.model_bench                         # CPU (and CUDA when available)
    python -m bench.model_bench --device cpu --threads 1 --max-batch 256 --repeats 7
    python -m bench.model_bench --model /tmp/tiny.pt --max-batch 4 --repeats 2 --out-dir /tmp
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.machine import describe, machine_info
from streamfer import contract, results
from streamfer.cli import opt, parse
from streamfer.model import DEVICES, optimized_for_cpu
from streamfer.paths import DEFAULT_MODEL
from streamfer.server.config import ServeConfig

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


MODES = tuple(reversed(contract.TTA_MODES))  # cheapest first
# The server's defaults (streamfer.server.serve): the largest batch it fills when busy, and the
# averaging (its default is the model's own `tta_default`, "mirror" for the shipped models).
SERVER_DEFAULT_MAX_BATCH = ServeConfig().max_batch
SERVER_DEFAULT_TTA = "mirror"


CPU_VARIANTS = ("optimized", "as-loaded")


@dataclass(frozen=True)
class ModelBenchConfig:
    model: Path = opt(DEFAULT_MODEL, "the TorchScript model to time")
    device: str = opt("auto", "cpu, cuda, or auto (cpu, plus cuda when available)", DEVICES)
    max_batch: int = opt(256, "largest batch; sizes are the powers of two up to it")
    modes: tuple[str, ...] = opt(MODES, "comma-separated TTA modes", MODES, comma=True)
    repeats: int = opt(7, "timed repeats (median)")
    warmup: int = opt(2, "untimed calls first")
    min_seconds: float = opt(0.2, "each repeat loops calls until at least this long (small "
                             "batches)")
    threads: int = opt(1, "torch.set_num_threads (the server's worker uses 1 by default)")
    server_batch: int = opt(SERVER_DEFAULT_MAX_BATCH, "the server's max batch, for the "
                            "CPU-per-face line")
    server_tta: str = opt(SERVER_DEFAULT_TTA, "the server's averaging, for the CPU-per-face "
                          "line", MODES)
    out_dir: Path = opt(results.ROOT, "results root: writes "
                        "<root>/<machine>/model_DEVICE.json")
    cpu_variants: tuple[str, ...] = opt(CPU_VARIANTS, "on the CPU, time the model as the "
                                        "server runs it (optimized: frozen and fused at load, "
                                        "the default) and/or as loaded, side by side",
                                        CPU_VARIANTS, comma=True)

    def __post_init__(self) -> None:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available")
        if not self.model.is_file():
            raise ValueError(f"model not found: {self.model} (train and export one, or pass "
                             "--model)")
        if self.max_batch < 1 or self.repeats < 1 or self.threads < 1:
            raise ValueError("--max-batch, --repeats and --threads must be >= 1")

    @property
    def devices(self) -> tuple[str, ...]:
        if self.device == "auto":
            return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        return (self.device,)


def parse_args(argv: list[str] | None = None) -> ModelBenchConfig:
    return parse(ModelBenchConfig, argv, prog="python -m bench.model_bench",
                 description=__doc__.split("\n\n")[0])


def batch_sizes(max_batch: int) -> list[int]:
    sizes, n = [], 1
    while n <= max_batch:
        sizes.append(n)
        n *= 2
    return sizes


def time_call(fn, warmup: int, repeats: int, min_seconds: float,
              sync) -> tuple[float, float]:
    """Median wall ms and median process-CPU ms of one call, over `repeats` repeats."""
    for _ in range(warmup):
        fn()
    sync()
    walls, cpus = [], []
    for _ in range(repeats):
        calls = 0
        w0, c0 = time.perf_counter(), time.process_time()
        while True:
            fn()
            calls += 1
            sync()
            if time.perf_counter() - w0 >= min_seconds:
                break
        walls.append((time.perf_counter() - w0) / calls * 1e3)
        cpus.append((time.process_time() - c0) / calls * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def bench_device(model: torch.jit.ScriptModule, device: str, cfg: ModelBenchConfig,
                 size: int, variant: str = "as-loaded") -> list[dict]:
    m = model.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for mode in cfg.modes:
        for n in batch_sizes(cfg.max_batch):
            x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=gen)

            def call(x=x, mode=mode) -> torch.Tensor:
                with torch.inference_mode():
                    return m.predict(x.to(device), mode).cpu()

            wall_ms, cpu_ms = time_call(call, cfg.warmup, cfg.repeats, cfg.min_seconds, sync)
            row = {"device": device, "variant": variant, "tta": mode, "batch": n,
                   "ms_per_batch": round(wall_ms, 3), "ms_per_face": round(wall_ms / n, 4),
                   "faces_per_s": round(n / wall_ms * 1e3, 1)}
            if device == "cpu":
                row["cpu_ms_per_face"] = round(cpu_ms / n, 4)
            rows.append(row)
            print(f"{device:5s} {variant:10s} {mode:7s} {n:4d} {wall_ms:10.3f} {wall_ms / n:10.4f} "
                  f"{n / wall_ms * 1e3:10.1f}" +
                  (f" {cpu_ms / n:12.4f}" if device == "cpu" else ""), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    model, meta = contract.read(cfg.model)
    model = model.eval()
    size = meta.input_size
    info = machine_info()
    print(f"model {cfg.model} ({meta.name}), input {size} px, torch "
          f"{torch.__version__}, {cfg.threads} thread(s); {describe(info)}")
    for device in cfg.devices:
        print(f"{'dev':5s} {'variant':10s} {'tta':7s} {'N':>4s} {'ms/batch':>10s} {'ms/face':>10s} "
              f"{'faces/s':>10s}" + (f" {'cpu ms/face':>12s}" if device == "cpu" else ""))
        variants = cfg.cpu_variants if device == "cpu" else ("as-loaded",)
        rows = []
        for variant in variants:
            m = optimized_for_cpu(model) if variant == "optimized" else model
            rows += bench_device(m, device, cfg, size, variant)
        result = {"benchmark": "model", "model": str(cfg.model), "model_name": meta.name,
                  "device": device, "torch": torch.__version__, "threads": cfg.threads,
                  "config": {"repeats": cfg.repeats, "warmup": cfg.warmup,
                             "min_seconds": cfg.min_seconds, "max_batch": cfg.max_batch},
                  "machine": info, "rows": rows}
        if device == "cuda":
            result["gpu"] = torch.cuda.get_device_name()
        default = [r for r in rows if r["tta"] == cfg.server_tta
                   and r["batch"] <= cfg.server_batch and r["variant"] == variants[0]]
        if device == "cpu" and default:
            at = max(default, key=lambda r: r["batch"])
            single = min(default, key=lambda r: r["batch"])
            result["server_default"] = {"variant": variants[0], "tta": cfg.server_tta,
                                        "max_batch": cfg.server_batch,
                                        "batch_measured": at["batch"],
                                        "cpu_ms_per_face": at["cpu_ms_per_face"],
                                        "cpu_ms_per_face_batch1": single["cpu_ms_per_face"]}
            print(f"server default ({variants[0]}, {cfg.server_tta}, batches of {at['batch']}): "
                  f"{at['cpu_ms_per_face']} ms CPU per face "
                  f"(batch 1: {single['cpu_ms_per_face']} ms)")
        served = [r for r in rows if r["tta"] == cfg.server_tta and r["variant"] == variants[0]]
        figures = {"model": meta.name, "tta": cfg.server_tta,
                   "runtime": f"TorchScript{' on CUDA' if device == 'cuda' else ''}, "
                              f"{variants[0]}",
                   "threads": cfg.threads,
                   "ms_per_face": {str(r["batch"]): r["ms_per_face"] for r in served}}
        if device == "cuda":
            figures["faces_per_s"] = {str(r["batch"]): r["faces_per_s"] for r in served}
        elif "server_default" in result:
            figures["server_default_cpu_ms_per_face"] = result["server_default"][
                "cpu_ms_per_face"]
        out = results.write(cfg.out_dir, results.make(f"model_{device}", figures, result))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
