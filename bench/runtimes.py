"""CPU runtimes for the same model, side by side: CPU time per face and accuracy.

    python -m bench.runtimes                      # the shipped model, FER2013 PublicTest
    python -m bench.runtimes --threads 1 --batches 1,8,16 --reps 60

Runs, in one process and interleaved round by round in a shuffled order (so a noisy machine
slows all alike, and none always inherits another's caches):
the TorchScript file as loaded, frozen + fused (the server's default until the int8 path),
and the int8 ONNX derivative (`python -m training.quantize`; streamfer/onnx_int8.py), each
exactly as the server's Predictor runs it with the model's default test-time averaging.
Then each runtime's accuracy on FER2013 PublicTest (the paper's five classes, original
labels) and how often it agrees with the fused TorchScript. Prints a table and saves JSON.

`--candidates` adds, in the same rounds, the alternatives weighed against the shipped
derivative: other ways to quantise it (made here with training.quantize's options and
calibration faces from the PublicTest folder's sibling `train`), ONNX Runtime in float and
with fewer graph optimisations, PyTorch's PT2E int8 flow with the x86 Inductor quantizer
(torchao, when installed; compiled per batch size), and torch.export + AOTInductor in float.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.machine import cpu_model, machine_info
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.faces import preprocess_faces
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_MODEL
from training.data import load_folder

FUSED, INT8 = "torchscript frozen + fused", "onnx-int8"
Runtime = Callable[[np.ndarray], np.ndarray]  # N x S x S uint8 faces -> N x C probabilities

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RuntimesConfig:
    model: Path = opt(DEFAULT_MODEL, "the TorchScript model (its int8 derivative beside it)")
    threads: int = opt(1, "torch / ONNX Runtime threads")
    batches: str = opt("1,8,16", "batch sizes to time")
    reps: int = opt(40, "timed rounds per batch size")
    test: str = opt(str(ROOT.parent / "shared" / "datasets" / "fer2013" / "test"),
                    "FER2013 PublicTest folder ('' to skip accuracy)")
    results: Path = opt(results.ROOT, "results root: writes "
                        "<root>/<machine>/<name>.json")
    name: str = opt("model_cpu", "result name")
    candidates: bool = opt(False, "also time the alternatives weighed against it (see above)")
    profile: bool = opt(False, "also print ONNX Runtime's time per operator type for the int8 "
                        "file")


def main(argv: list[str] | None = None) -> None:
    a = parse(RuntimesConfig, argv, prog="python -m bench.runtimes",
              description=__doc__.split("\n\n")[0])
    torch.set_num_threads(a.threads)
    served = Predictor(a.model, device="cpu", runtime="onnx-int8", threads=a.threads)
    runtimes: dict[str, Runtime] = {
        "torchscript as loaded": Predictor(a.model, device="cpu", optimize=False,
                                           runtime="torchscript").forward,
        FUSED: Predictor(a.model, device="cpu", runtime="torchscript").forward,
        INT8: served.forward,
    }
    tmp = tempfile.TemporaryDirectory()
    if a.candidates:
        runtimes.update(candidates(served, Path(a.test).parent / "train",
                                   Path(tmp.name), a.threads))
    size = served.input_size
    rng = np.random.default_rng(0)
    result: dict = {"model": a.model.name, "tta": served.tta, "threads": a.threads,
                    "cpu": cpu_model(), "load_before": machine_info()["loadavg_1m"],
                    "ms_per_face": {},
                    "fused_over": {}, "accuracy": {}, "agreement_with_fused": {}}
    for n in [int(b) for b in a.batches.split(",")]:
        faces = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        times: dict[str, list[float]] = {k: [] for k in runtimes}
        for run in runtimes.values():
            run(faces)  # warm (and, for the compiled candidates, compile this batch size)
        for _ in range(a.reps):
            # A fresh order each round: whichever runs right after another model meets caches
            # full of that model's weights (up to a third slower at batch 1 after the fused
            # TorchScript), so no runtime may always follow the same one.
            for name in rng.permutation(list(runtimes)):
                run = runtimes[name]
                t0 = time.process_time()
                run(faces)
                times[name].append((time.process_time() - t0) * 1000 / n)
        row = {k: round(float(np.median(v)), 3) for k, v in times.items()}
        result["ms_per_face"][str(n)] = row
        result["fused_over"][str(n)] = {k: round(row[FUSED] / v, 2) for k, v in row.items()}
        print(f"batch {n:3d}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in row.items())
              + f"  (fused / int8 = {row[FUSED] / row[INT8]:.2f}x)")
    result["load_after"] = machine_info()["loadavg_1m"]
    if a.profile:
        result["int8_profile_us"] = profile(served, [int(b) for b in a.batches.split(",")],
                                            a.reps, a.threads)
    if a.test and Path(a.test).is_dir():
        test = load_folder(Path(a.test), served.classes, size)  # FER2013's folder names mapped
        faces, labels = test.images, test.labels
        preds = {}
        for name, run in runtimes.items():
            if name == "torchscript as loaded":
                continue  # the same arithmetic as fused, to 1e-5 (docs/BENCHMARKS.md 5)
            probs = np.concatenate([run(faces[i:i + 64]) for i in range(0, len(faces), 64)])
            preds[name] = probs.argmax(1)
            result["accuracy"][name] = round(float((preds[name] == labels).mean()), 4)
            result["agreement_with_fused"][name] = round(
                float((preds[name] == preds[FUSED]).mean()), 4)
        result["faces"] = len(labels)
        print(f"FER2013 PublicTest ({len(labels)} faces, {', '.join(served.classes)}; original "
              f"labels, {served.tta} averaging):")
        for name, acc in result["accuracy"].items():
            print(f"  {name}: {100 * acc:.2f}% ({100 * (acc - result['accuracy'][FUSED]):+.2f}"
                  f" points; same answer as fused on "
                  f"{100 * result['agreement_with_fused'][name]:.1f}%)")
    tmp.cleanup()
    ms = result["ms_per_face"]
    figures = {"model": a.model.stem, "tta": served.tta, "threads": a.threads,
               "int8_ms_per_face": {b: r[INT8] for b, r in ms.items() if INT8 in r},
               "fused_torchscript_ms_per_face": {b: r[FUSED] for b, r in ms.items() if FUSED in r},
               "torchscript_as_loaded_ms_per_face": {
                   b: r["torchscript as loaded"] for b, r in ms.items()
                   if "torchscript as loaded" in r}}
    if result.get("accuracy"):
        figures["fer2013_publictest_accuracy"] = {
            "int8": result["accuracy"].get(INT8),
            "fused_torchscript": result["accuracy"].get(FUSED)}
        figures["int8_agreement_with_fused"] = result["agreement_with_fused"].get(INT8)
    out = results.write(a.results, results.make(a.name, figures, result))
    print(f"saved {out}")


def candidates(served: Predictor, calibration: Path, tmp: Path,
               threads: int) -> dict[str, Runtime]:
    """The alternatives to the shipped derivative, each a faces -> probabilities callable
    with the served model's preprocessing and averaging."""
    import onnxruntime as ort

    from streamfer import onnx_int8
    from training.export import rebuild
    from training.quantize import QuantizeConfig, _Baked, calibration_faces, export_onnx, quantize

    model, pre = served.path, served.preprocess
    deployed, _ = rebuild(model)
    out: dict[str, Runtime] = {}

    def ort_run(path: Path, level: str = "ORT_ENABLE_ALL") -> Runtime:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda f: session.run([onnx_int8.OUTPUT], {
            onnx_int8.INPUT: preprocess_faces(np.ascontiguousarray(f), pre)[:, None]})[0]

    out["onnx-int8, ORT basic optimisations only"] = ort_run(
        onnx_int8.derived_path(model), "ORT_ENABLE_BASIC")
    variants = {"onnx-int8, QOperator format": {"format": "qoperator"},
                "onnx-int8, per-tensor weights": {"per_channel": False},
                "onnx-int8, reduce_range (7-bit weights)": {"reduce_range": True},
                "onnx-int8, as-trained graph (unfold + bmm)": {"graph": "as-trained"}}
    if calibration.is_dir():
        for name, options in variants.items():
            path = tmp / f"{len(out)}.onnx"
            quantize(QuantizeConfig(model=str(model), data=str(calibration), out=str(path),
                                    **options))  # type: ignore[arg-type]
            out[name] = ort_run(path)
    else:
        print(f"no {calibration}: the other quantisations are not made")
    out["onnx fp32 (served graph)"] = ort_run(export_onnx(deployed, tmp / "fp32.onnx"))

    def torch_run(module: Callable[[torch.Tensor], torch.Tensor]) -> Runtime:
        def run(f: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(preprocess_faces(np.ascontiguousarray(f), pre)[:, None])
                return module(x).numpy()
        return run

    dims = {"faces": {0: torch.export.Dim("n", min=1, max=4096)}}
    example = torch.full((4, 1, served.input_size, served.input_size), 128, dtype=torch.uint8)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        print("torchao is not installed: no PT2E x86 int8 row (pip install torchao)")
    else:
        import torch._inductor.config as inductor

        inductor.freezing = True
        for graph, rewrite in (("served graph", True), ("as-trained graph", False)):
            module = torch.export.export(_Baked(deployed, rewrite).eval(), (example,),
                                         dynamic_shapes=dims).module()
            quantizer = x86.X86InductorQuantizer()
            quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
            module = prepare_pt2e(module, quantizer)
            calib = calibration_faces(calibration, 512, served.input_size) \
                if calibration.is_dir() else example.numpy()
            calib = preprocess_faces(calib[:, 0], pre)[:, None]
            with torch.no_grad():
                for i in range(0, len(calib), 32):
                    module(torch.from_numpy(calib[i:i + 32]))
            # dynamic=True trips an Inductor stride assertion on the quantised conv
            # (torch 2.13, torchao 0.18): one compile per batch size instead.
            compiled = torch.compile(convert_pt2e(module), dynamic=False)
            out[f"pt2e x86 int8 + inductor ({graph})"] = torch_run(compiled)
    package = torch._inductor.aoti_compile_and_package(
        torch.export.export(_Baked(deployed, False).eval(), (example,), dynamic_shapes=dims),
        package_path=str(tmp / "model.pt2"))
    out["torch.export + AOTInductor fp32"] = torch_run(torch._inductor.aoti_load_package(package))
    return out


def profile(served: Predictor, batches: list[int], reps: int, threads: int) -> dict:
    """ONNX Runtime's own per-node timings of the int8 derivative (SessionOptions
    .enable_profiling), summed per operator type: microseconds per run, median over runs."""
    import onnxruntime as ort

    from streamfer import onnx_int8

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in batches:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.enable_profiling, options.profile_file_prefix = True, f"{tmp}/b{n}"
            session = ort.InferenceSession(str(onnx_int8.derived_path(served.path)), options,
                                           providers=["CPUExecutionProvider"])
            x = np.full((n, 1, served.input_size, served.input_size), 128, np.uint8)
            for _ in range(reps + 5):
                session.run(None, {onnx_int8.INPUT: x})
            events = json.loads(Path(session.end_profiling()).read_text())
            runs = [e["dur"] for e in events if e.get("name") == "model_run"][5:]
            per_op: dict[str, float] = {}
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    op = e["args"]["op_name"]
                    per_op[op] = per_op.get(op, 0.0) + e["dur"] / (reps + 5)
            row = {"model_run": float(np.median(runs)),
                   **{k: round(v, 1) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}}
            out[str(n)] = row
            print(f"int8 profile, batch {n}: model run {row['model_run']:.0f} us; "
                  + ", ".join(f"{k} {v:.0f}" for k, v in list(row.items())[1:7]))
    return out


if __name__ == "__main__":
    main()
