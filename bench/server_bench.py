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

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.serverproc import ServerRunConfig, parse_cpus, running_server, variant_flags
from streamfer.cli import opt, parse
from streamfer.loadtest.cli import LoadTestConfig, ramp, run_once
from streamfer.loadtest.frames import KINDS, load_frames

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

CONFIGS = {"micro-batching (server default)": (), "one at a time (--max-batch 1)":
           ("--max-batch", "1")}


@dataclass(frozen=True)
class ServerBenchConfig(ServerRunConfig):
    fps: float = opt(15.0, "frames per second per client")
    kind: str = opt("crops", "crops (the page's own) or full frames (the server detects)", KINDS)
    images: Path | None = opt(None, "folder of face photos or crops instead of the built-in "
                              "astronaut")
    target_ms: float = opt(100.0, "the p99 round trip a passing step stays within")
    max_loss: float = opt(0.01, "most frames a passing step may lose")
    start_clients: int = opt(1, "the ramp's first step")
    max_clients: int = opt(256, "the ramp's upper bound")
    step_seconds: float = opt(5.0, "length of each step")
    pause: float = opt(1.0, "seconds between steps, so the server drains")
    warmup_seconds: float = opt(2.0, "an unrecorded run with 2 clients first, so first-call "
                                "costs (TorchScript's profiling runs, thread start-up) stay "
                                "out of step 1")
    variant: tuple[str, ...] = opt((), "ramp these servers instead of the default pair, each "
                                   "'LABEL=--flag value ...' (repeatable), e.g. "
                                   "--variant '2 processes=--processes 2'")
    name: str | None = opt(None, "result name (default: server_ramp_KIND)")

    def servers(self) -> dict[str, tuple[str, ...]]:
        """Label -> server flags of each server to ramp, in order."""
        return variant_flags(self.variant) if self.variant else dict(CONFIGS)


def parse_args(argv: list[str] | None = None) -> ServerBenchConfig:
    return parse(ServerBenchConfig, argv, prog="python -m bench.server_bench",
                 description=__doc__.split("\n\n")[0])


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
    info, line = cfg.pin_client()
    print(line, flush=True)
    frames = load_frames(cfg.kind, cfg.images)
    name = cfg.name or f"server_ramp_{cfg.kind}"
    results: dict[str, dict] = {}
    rtts: dict[str, dict[str, list[float]]] = {}
    servers = cfg.servers()
    for label, args in servers.items():
        log_path = cfg.log_path(f"{name}_server_{len(results)}")
        # The connection cap (default 64) would end a ramp with HTTP 503s, not latency.
        server_args = ("--max-connections", str(max(cfg.max_clients, 64)), *args,
                       *cfg.server_arg)
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
    first, second = (results[label]["best_clients"] for label in list(servers)[:2]) \
        if len(servers) >= 2 else (None, None)
    ratio = first / second if second else None
    print(f"\nlargest N with p99 < {cfg.target_ms:g} ms at {cfg.fps:g} fps ({cfg.kind}):")
    for label, res in results.items():
        capped = " (hit --max-clients)" if res["hit_max_clients"] else ""
        best = res["best"] or {}
        rtt = best.get("rtt_ms", {})
        print(f"  {label:34s} N = {res['best_clients']}{capped}  p50 {rtt.get('p50')} "
              f"p99 {rtt.get('p99')} ms  batch mean {best.get('batch', {}).get('mean')}")
    base = results[next(iter(servers))]["best_clients"]
    for label, res in list(results.items())[1:]:
        print(f"  {label} / {next(iter(servers))}: "
              + (f"{res['best_clients'] / base:.2f}x" if base else "undefined (held no client)"))
    figures = {"kind": cfg.kind, "fps": cfg.fps, "target_p99_ms": cfg.target_ms,
               "max_loss": cfg.max_loss,
               "phones": {label: r["best_clients"] for label, r in results.items()},
               "p99_ms_at_most": {label: ((r["best"] or {}).get("rtt_ms") or {}).get("p99")
                                  for label, r in results.items()}}
    out = cfg.save(name, figures, {
        "benchmark": "server_ramp", "model": str(cfg.model), "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        "best_clients": {label: r["best_clients"] for label, r in results.items()},
        "ratio_first_over_second": ratio, "results": results})
    png = out.with_suffix(".png")
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
