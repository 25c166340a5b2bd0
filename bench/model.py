"""The model alone, without the server: CPU (or GPU) time per face.

    python -m bench.model batches                   # by batch size and averaging, CPU (+ CUDA)
    python -m bench.model batches --device cuda --max-batch 256 --modes mirror,ten
    python -m bench.model runtimes                  # the CPU runtimes of one model, + accuracy
    python -m bench.model served models/fer2013-5class.pt models/ferplus-5class.pt
    python -m bench.model first-calls --device cuda   # each batch size's first call, cold
    python -m bench.model batches --model /tmp/tiny.pt --max-batch 4 --repeats 2 --out-dir /tmp

Every mode writes one result file in the one schema (streamfer/results.py) under
`--out-dir`'s `<machine>/` folder: `batches` model_DEVICE.json, `runtimes` model_cpu.json
(the datasheet's CPU rows), `served` model_served.json, `first-calls` first_calls_DEVICE.json.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from bench.machine import describe, machine_info
from bench.modes import Mode
from bench.modes import main as run_mode
from bench.record import save
from streamfer import contract, results
from streamfer.cli import opt
from streamfer.model import DEVICES
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from streamfer.server.config import ServeConfig

TTA_MODES = tuple(reversed(contract.TTA_MODES))  # cheapest first
# The server's defaults (streamfer.server.serve): the largest batch it fills when busy, and the
# averaging (its default is the model's own `tta_default`, "mirror" for the shipped models).
SERVER_DEFAULT_MAX_BATCH = ServeConfig().max_batch
SERVER_DEFAULT_TTA = "mirror"
CPU_VARIANTS = ("optimized", "as-loaded")
AS_LOADED, FUSED, INT8 = "torchscript as loaded", "torchscript frozen + fused", "onnx-int8"
Faces = Callable[[np.ndarray], np.ndarray]  # N x S x S uint8 faces -> N x C probabilities


# -- what every mode shares ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelBenchConfig:
    """The settings every mode has."""

    threads: int = opt(1, "torch / ONNX Runtime threads (the server's int8 runtime uses 1)",
                       at_least=1)
    out_dir: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to `max_batch`."""
    sizes, n = [], 1
    while n <= max_batch:
        sizes.append(n)
        n *= 2
    return sizes


def random_faces(n: int, size: int, seed: int = 0) -> np.ndarray:
    """N x size x size uint8 faces: the model's speed does not depend on what they show."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def time_call(fn: Callable[[], object], warmup: int, repeats: int, min_seconds: float,
              sync: Callable[[], None]) -> tuple[float, float]:
    """Median wall ms and median process-CPU ms of one call, over `repeats` repeats (each
    loops calls for at least `min_seconds`, so small batches are timed over many calls)."""
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


def interleaved(calls: dict[str, Callable[[], object]], n: int, rounds: int,
                warmup: int = 3, seed: int = 0) -> dict[str, tuple[float, float]]:
    """{name: (median CPU ms, median wall ms) per face} of each call (on `n` faces), every
    round making all of them in a fresh random order: a noisy machine slows all alike, and
    none always meets caches full of the same other model's weights, which slows small
    batches."""
    rng = np.random.default_rng(seed)
    for call in calls.values():
        for _ in range(warmup):  # TorchScript profiles its first calls
            call()
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    wall: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name in rng.permutation(list(calls)):
            c0, w0 = time.process_time(), time.perf_counter()
            calls[name]()
            cpu[name].append((time.process_time() - c0) * 1e3 / n)
            wall[name].append((time.perf_counter() - w0) * 1e3 / n)
    return {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in calls}


def _save(cfg: ModelBenchConfig, name: str, figures: dict, details: dict) -> Path:
    return save(cfg.out_dir, name, figures, details)


def _check_model(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"model not found: {path} (train and export one, or pass --model)")


# -- batches ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchesConfig(ModelBenchConfig):
    model: Path = opt(DEFAULT_MODEL, "the TorchScript model to time")
    device: str = opt("auto", "cpu, cuda, or auto (cpu, plus cuda when available)", DEVICES)
    max_batch: int = opt(256, "largest batch; sizes are the powers of two up to it",
                         at_least=1)
    modes: tuple[str, ...] = opt(TTA_MODES, "comma-separated TTA modes", TTA_MODES,
                                 comma=True)
    repeats: int = opt(7, "timed repeats (median)", at_least=1)
    warmup: int = opt(2, "untimed calls first", at_least=0)
    min_seconds: float = opt(0.2, "each repeat loops calls until at least this long (small "
                             "batches)", at_least=0)
    server_batch: int = opt(SERVER_DEFAULT_MAX_BATCH, "the server's max batch, for the "
                            "CPU-per-face line")
    server_tta: str = opt(SERVER_DEFAULT_TTA, "the server's averaging, for the CPU-per-face "
                          "line", TTA_MODES)
    cpu_variants: tuple[str, ...] = opt(CPU_VARIANTS, "on the CPU, time the model as the "
                                        "server runs it (optimized: frozen and fused at load, "
                                        "the default) and/or as loaded, side by side",
                                        CPU_VARIANTS, comma=True)

    def __post_init__(self) -> None:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available")
        _check_model(self.model)

    @property
    def devices(self) -> tuple[str, ...]:
        import torch

        if self.device == "auto":
            return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        return (self.device,)


def _time_device(model, device: str, cfg: BatchesConfig, size: int,
                 variant: str) -> list[dict]:
    import torch

    m = model.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for mode in cfg.modes:
        for n in batch_sizes(cfg.max_batch):
            x = torch.from_numpy(random_faces(n, size))[:, None]

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


def batches(cfg: BatchesConfig) -> int:
    """The TorchScript model by batch size and test-time averaging, CPU and/or CUDA.

    For batch sizes 1, 2, 4, ... up to --max-batch and each averaging mode (centre: 1 view
    per face, mirror: 2, ten: 10), times one call as the server's worker makes it -- a CPU
    uint8 N x 1 x S x S batch moved to the device, `m.predict(x, mode)`, probabilities back
    on the CPU -- and reports the median ms per batch, ms per face, faces/s, and on the CPU
    the process CPU time per face (what a core pays per face, the figure that sizes a
    deployment). On the CPU the model is timed both as the server runs it (frozen and fused
    at load, streamfer.model.optimized_for_cpu) and as loaded, side by side in one run.
    Writes model_cpu / model_cuda."""
    import torch

    from streamfer.model import optimized_for_cpu

    torch.set_num_threads(cfg.threads)
    model, meta = contract.read(cfg.model)
    model = model.eval()
    info = machine_info()
    print(f"model {cfg.model} ({meta.name}), input {meta.input_size} px, torch "
          f"{torch.__version__}, {cfg.threads} thread(s); {describe(info)}")
    for device in cfg.devices:
        print(f"{'dev':5s} {'variant':10s} {'tta':7s} {'N':>4s} {'ms/batch':>10s} {'ms/face':>10s} "
              f"{'faces/s':>10s}" + (f" {'cpu ms/face':>12s}" if device == "cpu" else ""))
        variants = cfg.cpu_variants if device == "cpu" else ("as-loaded",)
        rows = []
        for variant in variants:
            m = optimized_for_cpu(model) if variant == "optimized" else model
            rows += _time_device(m, device, cfg, meta.input_size, variant)
        result = {"benchmark": "model", "model": str(cfg.model), "model_name": meta.name,
                  "device": device, "torch": torch.__version__, "threads": cfg.threads,
                  "config": {"repeats": cfg.repeats, "warmup": cfg.warmup,
                             "min_seconds": cfg.min_seconds, "max_batch": cfg.max_batch},
                  "machine": info, "rows": rows}
        if device == "cuda":
            result["gpu"] = torch.cuda.get_device_name()
        served = [r for r in rows if r["tta"] == cfg.server_tta and r["variant"] == variants[0]]
        default = [r for r in served if r["batch"] <= cfg.server_batch]
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
        _save(cfg, f"model_{device}", figures, result)
    return 0


# -- runtimes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimesConfig(ModelBenchConfig):
    model: Path = opt(DEFAULT_MODEL, "the TorchScript model (its int8 derivative beside it)")
    batches: tuple[int, ...] = opt((1, 8, 16), "comma-separated batch sizes", comma=True,
                                   at_least=1)
    rounds: int = opt(40, "timed rounds per batch size (median)", at_least=1)
    test: str = opt(str(DEFAULT_DATASETS / "fer2013" / "test"),
                    "FER2013 PublicTest folder ('' to skip accuracy)")
    name: str = opt("model_cpu", "result name")

    def __post_init__(self) -> None:
        _check_model(self.model)


def runtimes(cfg: RuntimesConfig) -> int:
    """One model's CPU runtimes side by side: CPU time per face, and accuracy.

    In one process, interleaved round by round in a shuffled order: the TorchScript file as
    loaded, frozen + fused, and the int8 ONNX derivative (`python -m training.quantize`;
    streamfer/onnx_int8.py), each exactly as the server's Predictor runs it with the model's
    default test-time averaging. Then each runtime's accuracy on FER2013 PublicTest (the
    paper's five classes, original labels) and how often it agrees with the fused
    TorchScript. Writes model_cpu (the datasheet's CPU rows)."""
    import torch

    from streamfer.model import Predictor
    from training.data import load_folder

    torch.set_num_threads(cfg.threads)
    served = Predictor(cfg.model, device="cpu", runtime="onnx-int8", threads=cfg.threads)
    runners: dict[str, Faces] = {
        AS_LOADED: Predictor(cfg.model, device="cpu", optimize=False,
                             runtime="torchscript").forward,
        FUSED: Predictor(cfg.model, device="cpu", runtime="torchscript").forward,
        INT8: served.forward,
    }
    result: dict = {"model": cfg.model.name, "tta": served.tta, "threads": cfg.threads,
                    "machine": machine_info(), "rounds": cfg.rounds, "ms_per_face": {},
                    "fused_over": {}, "accuracy": {}, "agreement_with_fused": {}}
    print(describe(result["machine"]))
    for n in cfg.batches:
        faces = random_faces(n, served.input_size)
        row = {k: round(cpu, 3) for k, (cpu, _) in interleaved(
            {k: partial(run, faces) for k, run in runners.items()}, n, cfg.rounds).items()}
        result["ms_per_face"][str(n)] = row
        result["fused_over"][str(n)] = {k: round(row[FUSED] / v, 2) for k, v in row.items()}
        print(f"batch {n:3d}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in row.items())
              + f"  (fused / int8 = {row[FUSED] / row[INT8]:.2f}x)", flush=True)
    result["load_after"] = machine_info()["loadavg_1m"]
    if cfg.test and Path(cfg.test).is_dir():
        test = load_folder(Path(cfg.test), served.classes, served.input_size)
        preds = {}
        for name, run in runners.items():
            if name == AS_LOADED:
                continue  # the same arithmetic as fused, to 1e-5
            probs = np.concatenate([run(test.images[i:i + 64])
                                    for i in range(0, len(test.images), 64)])
            preds[name] = probs.argmax(1)
            result["accuracy"][name] = round(float((preds[name] == test.labels).mean()), 4)
            result["agreement_with_fused"][name] = round(
                float((preds[name] == preds[FUSED]).mean()), 4)
        result["faces"] = len(test.labels)
        print(f"FER2013 PublicTest ({len(test.labels)} faces, {', '.join(served.classes)}; "
              f"original labels, {served.tta} averaging):")
        for name, acc in result["accuracy"].items():
            print(f"  {name}: {100 * acc:.2f}% ({100 * (acc - result['accuracy'][FUSED]):+.2f}"
                  f" points; same answer as fused on "
                  f"{100 * result['agreement_with_fused'][name]:.1f}%)")
    ms = result["ms_per_face"]
    figures = {"model": cfg.model.stem, "tta": served.tta, "threads": cfg.threads,
               "int8_ms_per_face": {b: r[INT8] for b, r in ms.items()},
               "fused_torchscript_ms_per_face": {b: r[FUSED] for b, r in ms.items()},
               "torchscript_as_loaded_ms_per_face": {b: r[AS_LOADED] for b, r in ms.items()}}
    if result["accuracy"]:
        figures["fer2013_publictest_accuracy"] = {"int8": result["accuracy"][INT8],
                                                  "fused_torchscript": result["accuracy"][FUSED]}
        figures["int8_agreement_with_fused"] = result["agreement_with_fused"][INT8]
    _save(cfg, cfg.name, figures, result)
    return 0


# -- served -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedConfig(ModelBenchConfig):
    models: tuple[Path, ...] = opt((), "the models (.pt) to compare; ratios are to the first",
                                   positional=True)
    batches: tuple[int, ...] = opt((1, 16), "comma-separated batch sizes", comma=True,
                                   at_least=1)
    rounds: int = opt(30, "timed rounds per batch size (median)", at_least=1)
    name: str = opt("model_served", "result name")

    def __post_init__(self) -> None:
        for m in self.models:
            _check_model(m)
        if len(set(self.models)) < len(self.models):
            raise ValueError("name each model once")


def served(cfg: ServedConfig) -> int:
    """Several models as the server runs them, side by side: CPU cost per face.

    Each model is loaded by `streamfer.model.Predictor` (on the CPU its int8 ONNX derivative
    where one was made from that file, else the frozen, fused TorchScript; each row names the
    runtime), with its own preprocessing from the metadata, e.g. histogram equalisation, and
    its default test-time averaging; rounds interleave the models as `runtimes` does.
    Reports the median process CPU time and wall time per face for each batch size, and
    their ratio to the first model. Writes model_served."""
    import torch

    from streamfer.model import Predictor

    torch.set_num_threads(cfg.threads)
    predictors = {str(m): Predictor(m, device="cpu", threads=cfg.threads) for m in cfg.models}
    result: dict = {"machine": machine_info(), "threads": cfg.threads, "rounds": cfg.rounds,
                    "rows": []}
    for n in cfg.batches:
        times = interleaved({k: partial(p.forward, random_faces(n, p.input_size))
                             for k, p in predictors.items()}, n, cfg.rounds)
        base = times[str(cfg.models[0])][0]
        for model, pr in predictors.items():
            cpu, wall = times[model]
            row = {"model": model, "runtime": pr.runtime, "tta": pr.tta,
                   "preprocess": pr.preprocess, "batch": n, "cpu_ms_per_face": cpu,
                   "wall_ms_per_face": wall, "cpu_ratio_to_first": cpu / base}
            result["rows"].append(row)
            print(f"batch {n:3d}  {Path(model).name:28s} {pr.tta:6s} {pr.preprocess:13s} "
                  f"cpu {cpu:.2f} ms/face  wall {wall:.2f}  x{cpu / base:.2f}", flush=True)
    print(describe(result["machine"]))
    figures = {"cpu_ms_per_face": {
        m.stem: {str(r["batch"]): round(r["cpu_ms_per_face"], 3)
                 for r in result["rows"] if r["model"] == str(m)} for m in cfg.models}}
    _save(cfg, cfg.name, figures, result)
    return 0


# -- first-calls --------------------------------------------------------------------------


FIRST_CALL_SIZES = (1, 2, 3, 5, 8, 13, 21, 32)


@dataclass(frozen=True)
class FirstCallsConfig(ModelBenchConfig):
    model: Path = opt(DEFAULT_MODEL, "the TorchScript model to load")
    device: str = opt("auto", "where the model runs", DEVICES)
    max_batch: int = opt(SERVER_DEFAULT_MAX_BATCH, "the largest batch timed and warmed up",
                         at_least=1)


def _successive_calls(predictor, sizes: tuple[int, ...], repeats: int = 3) -> dict[int, list]:
    """ms of `repeats` successive calls per batch size, in order."""
    import torch

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


def first_calls(cfg: FirstCallsConfig) -> int:
    """What the first call of each batch size costs, cold and after `Predictor.warm_up`.

    TorchScript optimises its graph on the first calls, and on CUDA its fuser compiles a new
    specialisation for each input shape it has not seen, so a server that warmed up only a
    few batch sizes stalls the first time the micro-batcher forms a new one. Times three
    successive calls at each of several batch sizes on a freshly loaded model (after one call
    of batch 1, so CUDA's own start-up is not counted), then on a model warmed up as the
    server does it. Writes first_calls_DEVICE."""
    import torch

    from streamfer.model import Predictor

    _check_model(cfg.model)
    torch.set_num_threads(cfg.threads)
    sizes = tuple(n for n in FIRST_CALL_SIZES if n <= cfg.max_batch)
    cold = Predictor(cfg.model, device=cfg.device, max_batch=cfg.max_batch)
    _successive_calls(cold, (1,), repeats=1)
    result: dict = {"benchmark": "first_calls", "model": str(cfg.model),
                    "device": str(cold.device), "torch": torch.__version__,
                    "machine": machine_info(), "cold_ms": _successive_calls(cold, sizes)}
    warm = Predictor(cfg.model, device=cfg.device, max_batch=cfg.max_batch)
    t = time.perf_counter()
    warm.warm_up(cfg.max_batch)
    result["warm_up_s"] = round(time.perf_counter() - t, 2)
    result["warm_ms"] = _successive_calls(warm, sizes)
    if cold.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    print(f"{describe(result['machine'])}; {result['device']}, torch {torch.__version__}")
    print(f"ms of three successive calls; warm-up of sizes up to {cfg.max_batch} took "
          f"{result['warm_up_s']} s")
    print(f"{'batch':>5}  {'cold model':<26} {'after warm_up':<26}")
    for n in sizes:
        print(f"{n:>5}  {result['cold_ms'][n]!s:<26} {result['warm_ms'][n]!s:<26}")
    figures = {"device": str(cold.device), "warm_up_s": result["warm_up_s"],
               "first_call_ms": {str(n): result["cold_ms"][n][0] for n in sizes},
               "warmed_first_call_ms": {str(n): result["warm_ms"][n][0] for n in sizes}}
    _save(cfg, f"first_calls_{cold.device}", figures, result)
    return 0


MODES = {"batches": Mode(BatchesConfig, batches), "runtimes": Mode(RuntimesConfig, runtimes),
         "first-calls": Mode(FirstCallsConfig, first_calls),
         "served": Mode(ServedConfig, served)}


def main(argv: list[str] | None = None) -> int:
    return run_mode(MODES, argv, prog="python -m bench.model", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
