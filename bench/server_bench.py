"""Micro-batching vs one frame at a time, end to end: how many phones fit under 100 ms?

Starts the real server twice on a free 127.0.0.1 port -- its default micro-batching, then
`--max-batch 1` -- and for each ramps load-test clients (15 fps each, client-made face crops,
the page's send window) to the largest N whose p99 round trip stays under the target with at
most 1% of frames lost. Prints each step, the two N and their ratio; writes JSON and a PNG
(p99 against clients for both, and the latency histograms of each best step).

    python -m bench.server_bench                                    # the full comparison
    python -m bench.server_bench --server-cpus 0 --client-cpus 1    # pin server / load test
    python -m bench.server_bench --model /tmp/tiny.pt --step-seconds 1 --max-clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.machine import describe, machine_info
from bench.serverproc import parse_cpus, running_server
from streamfer.loadtest import LoadTestConfig, ramp, run_once
from streamfer.loadtest_frames import KINDS, load_frames

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


DEFAULT_MODEL = ROOT / "models" / "fer2013-5class.pt"
CONFIGS = {"micro-batching (server default)": (), "one at a time (--max-batch 1)":
           ("--max-batch", "1")}


@dataclass(frozen=True)
class ServerBenchConfig:
    model: Path = DEFAULT_MODEL
    fps: float = 15.0
    kind: str = "crops"
    images: Path | None = None
    target_ms: float = 100.0
    max_loss: float = 0.01
    start_clients: int = 1
    max_clients: int = 256
    step_seconds: float = 5.0
    pause: float = 1.0
    warmup_seconds: float = 2.0
    server_args: tuple[str, ...] = ()
    server_cpus: str | None = None
    client_cpus: str | None = None
    out_dir: Path = BENCH / "results"
    name: str = "server_ramp"


def parse_args(argv: list[str] | None = None) -> ServerBenchConfig:
    d = ServerBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=d.model)
    p.add_argument("--fps", type=float, default=d.fps, help="frames per second per client")
    p.add_argument("--kind", choices=KINDS, default=d.kind)
    p.add_argument("--images", type=Path, default=None,
                   help="folder of face photos or crops instead of the built-in astronaut")
    p.add_argument("--target-ms", type=float, default=d.target_ms)
    p.add_argument("--max-loss", type=float, default=d.max_loss)
    p.add_argument("--start-clients", type=int, default=d.start_clients)
    p.add_argument("--max-clients", type=int, default=d.max_clients)
    p.add_argument("--step-seconds", type=float, default=d.step_seconds)
    p.add_argument("--pause", type=float, default=d.pause)
    p.add_argument("--warmup-seconds", type=float, default=d.warmup_seconds,
                   help="an unrecorded run with 2 clients first, so first-call costs "
                        "(TorchScript's profiling runs, thread start-up) stay out of step 1")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra flag for both servers, e.g. --server-arg=--device=cpu "
                        "(repeatable)")
    p.add_argument("--server-cpus", default=None, help="pin the server, e.g. 0 or 0-1")
    p.add_argument("--client-cpus", default=None, help="pin this load generator, e.g. 1")
    p.add_argument("--out-dir", type=Path, default=d.out_dir)
    p.add_argument("--name", default=d.name, help="results file stem")
    a = p.parse_args(argv)
    if not a.model.is_file():
        p.error(f"model not found: {a.model} (pass --model)")
    return ServerBenchConfig(a.model, a.fps, a.kind, a.images, a.target_ms, a.max_loss,
                             a.start_clients, a.max_clients, a.step_seconds, a.pause,
                             a.warmup_seconds, tuple(a.server_arg), a.server_cpus,
                             a.client_cpus, a.out_dir, a.name)


def save_plot(path: Path, results: dict[str, dict], rtts: dict[str, dict[str, list[float]]],
              target_ms: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, res in results.items():
        steps = sorted(res["steps"], key=lambda s: s["clients"])
        left.plot([s["clients"] for s in steps], [s["rtt_ms"]["p99"] for s in steps],
                  marker="o", label=f"{label}: best N = {res['best_clients']}")
    left.axhline(target_ms, color="red", linewidth=1, label=f"target {target_ms:g} ms")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("clients")
    left.set_ylabel("p99 round trip, ms")
    left.legend(fontsize=8)
    every = [v for series in rtts.values() for vals in series.values() for v in vals]
    top = float(np.percentile(every, 99.9)) * 1.1 if every else 1.0
    bins = np.linspace(0, max(top, 1.0), 60)
    for label, series in rtts.items():
        for step_label, vals in series.items():
            if "best" in step_label and vals:
                right.hist(np.clip(vals, 0, bins[-1]), bins=bins, alpha=0.55,
                           label=f"{label}, {step_label}: p99 "
                                 f"{np.percentile(vals, 99):.1f} ms")
    if target_ms <= bins[-1]:
        right.axvline(target_ms, color="red", linewidth=1)
    else:
        right.set_title(f"target {target_ms:g} ms is past the right edge", fontsize=9)
    right.set_xlabel("round trip per frame, ms")
    right.set_ylabel("frames")
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    client_cpus = parse_cpus(cfg.client_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    info = machine_info()
    print(f"{describe(info)}; server cpus {cfg.server_cpus or 'any'}, "
          f"load-test cpus {cfg.client_cpus or 'any'}", flush=True)
    frames = load_frames(cfg.kind, cfg.images)
    results: dict[str, dict] = {}
    rtts: dict[str, dict[str, list[float]]] = {}
    for label, args in CONFIGS.items():
        log_path = cfg.out_dir / f"{cfg.name}_server_{len(results)}.log"
        # The connection cap (default 64) would end a ramp with HTTP 503s, not latency.
        server_args = ("--max-connections", str(max(cfg.max_clients, 64)), *args,
                       *cfg.server_args)
        with running_server(cfg.model, server_args,
                            cpus=parse_cpus(cfg.server_cpus), log_path=log_path) as server:
            print(f"\n== {label}: {server.url} {' '.join(server.args)} "
                  f"health {server.health}", flush=True)
            lt = LoadTestConfig(url=server.url, clients=cfg.start_clients, fps=cfg.fps,
                                kind=cfg.kind, target_ms=cfg.target_ms, max_loss=cfg.max_loss,
                                max_clients=cfg.max_clients, step_seconds=cfg.step_seconds,
                                pause=cfg.pause)
            if cfg.warmup_seconds > 0:
                asyncio.run(run_once(lt, frames, 2, cfg.warmup_seconds))
            result, series = asyncio.run(ramp(lt, frames, lambda s: print(s, flush=True)))
        result["server_args"] = list(server.args)
        result["health"] = server.health
        results[label] = result
        rtts[label] = series
    batched, single = (results[label]["best_clients"] for label in CONFIGS)
    ratio = batched / single if single else None
    print(f"\nlargest N with p99 < {cfg.target_ms:g} ms at {cfg.fps:g} fps ({cfg.kind}):")
    for label, res in results.items():
        capped = " (hit --max-clients)" if res["hit_max_clients"] else ""
        best = res["best"] or {}
        rtt = best.get("rtt_ms", {})
        print(f"  {label:34s} N = {res['best_clients']}{capped}  p50 {rtt.get('p50')} "
              f"p99 {rtt.get('p99')} ms  batch mean {best.get('batch', {}).get('mean')}")
    print(f"  ratio {ratio:.2f}" if ratio else "  ratio: undefined (one at a time held no client)")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    out = cfg.out_dir / f"{cfg.name}.json"
    out.write_text(json.dumps({
        "benchmark": "server_ramp", "model": str(cfg.model), "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        "best_clients": {label: r["best_clients"] for label, r in results.items()},
        "ratio_batched_over_single": ratio, "results": results}, indent=2) + "\n")
    png = cfg.out_dir / f"{cfg.name}.png"
    save_plot(png, results, rtts, cfg.target_ms,
              f"{cfg.model.name}: {cfg.fps:g} fps/client, {cfg.kind}; {info['cpu']}, "
              f"{info['usable_cpus']} CPUs")
    print(f"wrote {out} and {png}")
    broken = [f for r in results.values() for f in r["failures"]]
    for f in broken:
        print(f"FAILED: {f}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
