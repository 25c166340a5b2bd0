"""The server's CPU per frame outside the model: what a frame's trip costs besides inference.

Each variant is the real server (`python -m streamfer.serve`, one process) on a free
127.0.0.1 port, streamed the same load (default 8 clients x 15 fps of page-made crops for
20 s); the server's CPU time over the run (every thread and child process, Linux /proc) is
split into the model's share and the rest. The model's share is the batches the replies
report, each priced by this process timing `Predictor.forward` on a batch of that size (the
same model, runtime and threads as the server; median of `--rounds`), so the remainder is
the WebSocket, decode, thread hops, batching, JSON and metrics per frame. A server that
counts its model's CPU itself (`streamfer_inference_cpu_seconds_total` in /metrics: the
inference thread's CPU time in forward) also gets that split, measured where it ran. Variants
run in turn, `--repeats` times, so the machine's load hits all alike; medians are quoted.

A variant may run another checkout of the server (`--tree LABEL=DIR`), e.g. the code before
a change, extracted with `git archive`, so before and after are measured in one run:

    git archive --prefix=before/ HEAD~1 | tar -x -C /tmp
    python -m bench.frame_overhead --variant before= --tree before=/tmp/before --variant after=
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.serverproc import ServerRunConfig, parse_cpus, running_server, variant_flags
from streamfer.cli import opt, parse
from streamfer.loadtest.cli import LoadTestConfig, run_once
from streamfer.loadtest.frames import KINDS, load_frames


@dataclass(frozen=True)
class OverheadConfig(ServerRunConfig):
    clients: int = opt(8, "concurrent clients")
    fps: float = opt(15.0, "frames per second per client")
    seconds: float = opt(20.0, "how long each run streams")
    kind: str = opt("crops", "crops (the page's own) or full frames (the server detects)", KINDS)
    repeats: int = opt(2, "runs of each variant, in turn (the median is quoted)")
    rounds: int = opt(200, "timed forward() calls per batch size for the model's price")
    warmup_seconds: float = opt(2.0, "an unrecorded run first, for first-call costs")
    variant: tuple[str, ...] = opt((), "a server to measure, 'LABEL=--flag value ...' "
                                   "(repeatable); default: one, the server's defaults")
    tree: tuple[str, ...] = opt((), "'LABEL=DIR': run that variant's server from this "
                                "checkout instead of this one (repeatable)")
    name: str = opt("frame_overhead", "result name")

    def servers(self) -> dict[str, tuple[str, ...]]:
        return variant_flags(self.variant) if self.variant else {"server defaults": ()}

    def trees(self) -> dict[str, Path]:
        return {label.strip(): Path(d) for label, _, d in (t.partition("=") for t in self.tree)}


def forward_prices(model: Path, sizes: set[int], rounds: int) -> dict[int, float]:
    """CPU seconds of one `Predictor.forward` call per batch size (the server's runtime)."""
    import torch

    from streamfer.model import Predictor

    torch.set_num_threads(1)
    predictor = Predictor(model, device="cpu")  # int8 on one thread, as the server runs it
    faces = np.random.default_rng(0).integers(0, 256, (max(sizes), 48, 48), dtype=np.uint8)
    prices = {}
    for n in sorted(sizes):
        for _ in range(5):
            predictor.forward(faces[:n])
        times = []
        for _ in range(rounds):
            c = time.process_time()
            predictor.forward(faces[:n])
            times.append(time.process_time() - c)
        prices[n] = statistics.median(times)
    return prices


def inference_cpu_s(ws_url: str) -> float | None:
    """The server's own count of its model's CPU seconds, if it keeps one."""
    base = ws_url.replace("ws://", "http://").removesuffix("/ws")
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^streamfer_inference_cpu_seconds_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    cfg = parse(OverheadConfig, argv, prog="python -m bench.frame_overhead",
                description=__doc__.split("\n\n")[0])
    info, line = cfg.pin_client()  # honours --client-cpus like the other server benchmarks
    print(f"{line}; {cfg.clients} clients x {cfg.fps:g} fps of {cfg.kind} for "
          f"{cfg.seconds:g} s, {cfg.repeats} runs each", flush=True)
    frames = load_frames(cfg.kind)
    servers, trees = cfg.servers(), cfg.trees()
    runs: dict[str, list[dict]] = {label: [] for label in servers}
    for r in range(cfg.repeats):
        for label, flags in servers.items():
            log_path = cfg.log_path(f"{cfg.name}_{len(runs[label])}_{label.replace(' ', '_')}")
            with running_server(cfg.model, (*flags, *cfg.server_arg),
                                cpus=parse_cpus(cfg.server_cpus), log_path=log_path,
                                root=trees.get(label)) as server:
                lt = LoadTestConfig(url=server.url, clients=cfg.clients, fps=cfg.fps,
                                    seconds=cfg.seconds, kind=cfg.kind)
                if cfg.warmup_seconds > 0:
                    asyncio.run(run_once(lt, frames, seconds=cfg.warmup_seconds))
                cpu0, model0 = server.cpu_seconds(), inference_cpu_s(server.url)
                summary, _ = asyncio.run(run_once(lt, frames))
                cpu, model1 = server.cpu_seconds() - cpu0, inference_cpu_s(server.url)
            in_server = None if model0 is None or model1 is None else model1 - model0
            runs[label].append({"run": r, "cpu_s": cpu, "sent": summary["sent"],
                                "answered": summary["answered"], "ok": summary["ok"],
                                "batch_counts": summary["batch"]["counts"],
                                "model_cpu_s_in_server": in_server,
                                "rtt_ms": summary["rtt_ms"]})
            print(f"  run {r + 1}: {label:32s} {summary['answered']} replies, server CPU "
                  f"{1000 * cpu / max(1, summary['answered']):.2f} ms/frame, p99 "
                  f"{summary['rtt_ms']['p99']} ms", flush=True)
    sizes = {int(b) for rs in runs.values() for run in rs for b in run["batch_counts"]} or {1}
    prices = forward_prices(cfg.model, sizes, cfg.rounds)
    rows = []
    for label, rs in runs.items():
        per = []
        for run in rs:
            # replies with batch b came from count/b batches of b faces
            model_s = sum(count / int(b) * prices[int(b)]
                          for b, count in run["batch_counts"].items())
            n = max(1, run["answered"])
            per.append((1000 * run["cpu_s"] / n, 1000 * model_s / n))
        total = statistics.median(t for t, _ in per)
        model = statistics.median(m for _, m in per)
        outside = statistics.median(t - m for t, m in per)
        measured = [1000 * (run["cpu_s"] - run["model_cpu_s_in_server"]) / max(1, run["answered"])
                    for run in rs if run["model_cpu_s_in_server"] is not None]
        rows.append({"variant": label, "flags": list(servers[label]),
                     "tree": str(trees.get(label, "")), "server_cpu_ms_per_frame": total,
                     "model_cpu_ms_per_frame": model, "outside_model_cpu_ms_per_frame": outside,
                     "outside_model_in_server_ms_per_frame":
                     statistics.median(measured) if measured else None,
                     "runs": rs})
    base = rows[0]["outside_model_cpu_ms_per_frame"]
    print(f"\n{'variant':32s} {'server CPU':>11s} {'model':>7s} {'outside':>8s} {'ratio':>6s}"
          f" {'outside*':>9s}   (ms per frame, medians; * the model's CPU as the server "
          "counted it)")
    for row in rows:
        measured = row["outside_model_in_server_ms_per_frame"]
        print(f"{row['variant']:32s} {row['server_cpu_ms_per_frame']:11.2f} "
              f"{row['model_cpu_ms_per_frame']:7.2f} "
              f"{row['outside_model_cpu_ms_per_frame']:8.2f} "
              f"{row['outside_model_cpu_ms_per_frame'] / base:6.2f} "
              f"{'-' if measured is None else f'{measured:.2f}':>9s}")
    print("forward() CPU ms by batch size: "
          + ", ".join(f"{n}: {1000 * s:.2f}" for n, s in sorted(prices.items())))
    keys = ("server_cpu_ms_per_frame", "model_cpu_ms_per_frame",
            "outside_model_cpu_ms_per_frame")
    cfg.save(cfg.name, {"variants": {r["variant"]: {k: r[k] for k in keys} for r in rows}}, {
        "benchmark": "frame_overhead", "model": str(cfg.model), "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        "forward_cpu_s": {str(k): v for k, v in prices.items()}, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
