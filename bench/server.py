"""The real server end to end: started on a free 127.0.0.1 port, driven by the real load test.

    python -m bench.server ramp                       # phones held: batching vs not
    python -m bench.server ramp --kind frames --variant 'haar=--detector haar' \\
        --variant 'blazeface='
    python -m bench.server fixed                      # one load: crops vs frames, tta modes
    python -m bench.server fixed --clients 10 --seconds 20 --only 'crops, mirror (default)' \\
        --name server_crops_10x15
    python -m bench.server overhead                   # the server's CPU per frame besides the model
    python -m bench.server ramp --model /tmp/tiny.pt --step-seconds 1 --max-clients 4

Each server is `python -m streamfer.serve` in its own process (pinned with --server-cpus),
the load generator this process (pinned with --client-cpus), so on shared cores the figures
include the load generator's cost. `ramp` and `overhead` take their servers as `--variant
'LABEL=--flag value ...'` (repeatable), `fixed` has its own list (--only picks from it); every
server also gets each --server-arg. Every mode writes one result file in the
one schema (streamfer/results.py) under `--out-dir`'s `<machine>/` folder, and a plot beside
it where it draws one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.modes import Mode
from bench.modes import main as run_mode
from bench.serverrun import ServerRunConfig, parse_cpus, variant_flags
from streamfer.cli import opt
from streamfer.loadtest.cli import LoadTestConfig, loss_rate, ramp, run_once
from streamfer.loadtest.frames import KINDS, FrameSet, load_frames
from streamfer.loadtest.report import save_histogram
from tests.kit.serverproc import running_server

# -- what every mode shares ---------------------------------------------------------------


@dataclass(frozen=True)
class ServerBenchConfig(ServerRunConfig):
    """The settings every mode has, besides the servers' (bench/serverproc.py)."""

    fps: float = opt(15.0, "frames per second per client")
    warmup_seconds: float = opt(2.0, "an unrecorded run first, so first-call costs "
                                "(TorchScript's profiling runs, thread start-up) stay out of "
                                "the figures")

    def details(self, benchmark: str, info: dict, **rest: object) -> dict:
        """A result's details: what ran, where, with which settings, and `rest`."""
        return {"benchmark": benchmark, "model": str(self.model), "machine": info,
                "config": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in self.__dict__.items()}, **rest}


@contextlib.contextmanager
def serve(cfg: ServerBenchConfig, flags: Sequence[str], log_stem: str,
          root: Path | None = None) -> Iterator:
    """One server with `flags` and every --server-arg, until the block ends (its log under
    --logs; `root`: another checkout's server)."""
    with running_server(cfg.model, (*flags, *cfg.server_arg), cpus=parse_cpus(cfg.server_cpus),
                        log_path=cfg.log_path(log_stem), root=root) as server:
        yield server


def warm_up(cfg: ServerBenchConfig, lt: LoadTestConfig, frames: FrameSet,
            clients: int | None = None) -> None:
    """The unrecorded run before the measured one (--warmup-seconds; none when 0)."""
    if cfg.warmup_seconds > 0:
        asyncio.run(run_once(lt, frames, clients, cfg.warmup_seconds))


def failed(failures: list[str]) -> int:
    """Print each failure; the exit code."""
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


# -- ramp ---------------------------------------------------------------------------------

RAMP_SERVERS = {"micro-batching (server default)": (), "one at a time (--max-batch 1)":
                ("--max-batch", "1")}


@dataclass(frozen=True)
class RampConfig(ServerBenchConfig):
    kind: str = opt("crops", "crops (the page's own) or full frames (the server detects)", KINDS)
    images: Path | None = opt(None, "folder of face photos or crops instead of the built-in "
                              "astronaut")
    target_ms: float = opt(100.0, "the p99 round trip a passing step stays within")
    max_loss: float = opt(0.01, "most frames a passing step may lose")
    start_clients: int = opt(1, "the ramp's first step", at_least=1)
    max_clients: int = opt(256, "the ramp's upper bound", at_least=1)
    step_seconds: float = opt(5.0, "length of each step")
    pause: float = opt(1.0, "seconds between steps, so the server drains")
    variant: tuple[str, ...] = opt((), "ramp these servers instead of the default pair "
                                   "(micro-batching, --max-batch 1), each "
                                   "'LABEL=--flag value ...' (repeatable), e.g. "
                                   "--variant '2 processes=--processes 2'")
    name: str | None = opt(None, "result name (default: server_ramp_KIND)")


def save_ramp_plot(path: Path, results: dict[str, dict], rtts: dict[str, dict[str, list[float]]],
                   target_ms: float, title: str) -> None:
    """p99 against clients for every server, and the round-trip histogram of each best step."""
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


def ramp_servers(cfg: RampConfig) -> int:
    """How many phones fit under the target: the largest N each server holds.

    For each server (without --variant: its micro-batching, then `--max-batch 1`) ramps
    load-test clients (--fps each, the page's send window) to the largest N whose p99 round trip
    stays under --target-ms with at most --max-loss of frames lost. Prints each step, each N and
    their ratio to the first; writes server_ramp_KIND (the datasheet's phones) and a PNG: p99
    against clients, and the latency histograms of each best step."""
    info, line = cfg.pin_client()
    print(line, flush=True)
    frames = load_frames(cfg.kind, cfg.images)
    name = cfg.name or f"server_ramp_{cfg.kind}"
    servers = variant_flags(cfg.variant) if cfg.variant else dict(RAMP_SERVERS)
    results: dict[str, dict] = {}
    rtts: dict[str, dict[str, list[float]]] = {}
    for label, flags in servers.items():
        # The connection cap (default 64) would end a ramp with HTTP 503s, not latency.
        flags = ("--max-connections", str(max(cfg.max_clients, 64)), *flags)
        with serve(cfg, flags, f"{name}_server_{len(results)}") as server:
            print(f"\n== {label}: {server.url} {' '.join(server.args)} "
                  f"health {server.health}", flush=True)
            lt = LoadTestConfig(url=server.url, clients=cfg.start_clients, fps=cfg.fps,
                                kind=cfg.kind, target_ms=cfg.target_ms, max_loss=cfg.max_loss,
                                max_clients=cfg.max_clients, step_seconds=cfg.step_seconds,
                                pause=cfg.pause)
            warm_up(cfg, lt, frames, 2)
            result, series = asyncio.run(ramp(lt, frames, partial(print, flush=True)))
        result["server_args"] = list(server.args)
        result["health"] = server.health
        results[label] = result
        rtts[label] = series
    first = next(iter(servers))
    base = results[first]["best_clients"]
    print(f"\nlargest N with p99 < {cfg.target_ms:g} ms at {cfg.fps:g} fps ({cfg.kind}):")
    for label, res in results.items():
        capped = " (hit --max-clients)" if res["hit_max_clients"] else ""
        best = res["best"] or {}
        rtt = best.get("rtt_ms", {})
        print(f"  {label:34s} N = {res['best_clients']}{capped}  p50 {rtt.get('p50')} "
              f"p99 {rtt.get('p99')} ms  batch mean {best.get('batch', {}).get('mean')}")
    for label, res in list(results.items())[1:]:
        print(f"  {label} / {first}: "
              + (f"{res['best_clients'] / base:.2f}x" if base else "undefined (held no client)"))
    labels = list(results)
    second = results[labels[1]]["best_clients"] if len(labels) > 1 else None
    figures = {"kind": cfg.kind, "fps": cfg.fps, "target_p99_ms": cfg.target_ms,
               "max_loss": cfg.max_loss,
               "phones": {label: r["best_clients"] for label, r in results.items()},
               "p99_ms_at_most": {label: ((r["best"] or {}).get("rtt_ms") or {}).get("p99")
                                  for label, r in results.items()}}
    out = cfg.save(name, figures, cfg.details(
        "server_ramp", info, best_clients=figures["phones"],
        ratio_first_over_second=base / second if second else None, results=results))
    save_ramp_plot(out.with_suffix(".png"), results, rtts, cfg.target_ms,
                   f"{cfg.model.name}: {cfg.fps:g} fps/client, {cfg.kind}; {info['cpu']}, "
                   f"{info['usable_cpus']} CPUs")
    return failed([f for r in results.values() for f in r["failures"]])


# -- fixed --------------------------------------------------------------------------------

# (label, frame kind, server TTA, extra server flags); the first row is the server's default
# configuration. Full frames are searched by BlazeFace unless the row says Haar.
FIXED_VARIANTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("crops, mirror (default)", "crops", "mirror", ()),
    ("frames, mirror", "frames", "mirror", ()),
    ("frames, mirror, haar", "frames", "mirror", ("--detector", "haar")),
    ("crops, centre", "crops", "centre", ()),
    ("crops, ten", "crops", "ten", ()),
)


@dataclass(frozen=True)
class FixedConfig(ServerBenchConfig):
    clients: int = opt(8, "concurrent clients", at_least=1)
    seconds: float = opt(20.0, "how long each variant streams")
    only: tuple[str, ...] = opt((), "run only these variants (repeatable): "
                                + "; ".join(v[0] for v in FIXED_VARIANTS))
    name: str = opt("server_fixed", "result name, e.g. server_crops_10x15 (the datasheet's)")

    def __post_init__(self) -> None:
        super().__post_init__()
        known = [v[0] for v in FIXED_VARIANTS]
        if any(o not in known for o in self.only):
            raise ValueError(f"--only must name one of {known}")


def fixed(cfg: FixedConfig) -> int:
    """What the options cost at one fixed load: crops vs full frames, and averaging.

    Client crops vs full frames (the server detects the face, BlazeFace or Haar), and centre
    vs mirror vs ten-crop test-time averaging: each variant is its own server (`--tta MODE`),
    streamed the same load (--clients x --fps for --seconds). Prints one row per variant --
    round trips, throughput, losses, the server's own decode/queue/inference medians, batch
    sizes, bytes and server CPU per frame -- and writes the result (one variant's figures at
    the top level, as server_crops_10x15's) and a histogram PNG of all variants."""
    info, line = cfg.pin_client()
    print(f"{line}; load {cfg.clients} clients x {cfg.fps:g} fps for {cfg.seconds:g} s",
          flush=True)
    chosen = [v for v in FIXED_VARIANTS if not cfg.only or v[0] in cfg.only]
    frame_sets = {kind: load_frames(kind) for kind in {v[1] for v in chosen}}
    rows, series = [], {}
    print(f"{'variant':24s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s} {'rep/s':>7s} "
          f"{'lost%':>6s} {'decode':>7s} {'queue':>7s} {'infer':>7s} {'total':>7s} "
          f"{'batch':>6s} {'noface':>6s} {'bytes':>6s} {'cpu ms':>7s}")
    for label, kind, tta, extra in chosen:
        with serve(cfg, ("--tta", tta, *extra), f"{cfg.name}_{_slug(label)}") as server:
            lt = LoadTestConfig(url=server.url, clients=cfg.clients, fps=cfg.fps,
                                seconds=cfg.seconds, kind=kind)
            warm_up(cfg, lt, frame_sets[kind])
            cpu0 = server.cpu_seconds()
            summary, times = asyncio.run(run_once(lt, frame_sets[kind]))
            cpu = server.cpu_seconds() - cpu0
        images = frame_sets[kind].images
        summary.update(variant=label, server_tta=tta, server_args=list(server.args),
                       # what one frame costs: bytes on the wire (header + image, mean over
                       # the set) and the server's CPU (all threads) per frame it received
                       wire_bytes=round(8 + sum(map(len, images)) / len(images)),
                       server_cpu_ms_per_frame=round(1000 * cpu / summary["sent"], 2)
                       if summary["sent"] else None)
        rows.append(summary)
        series[label] = times
        r, srv = summary["rtt_ms"], summary["server_ms_median"]
        print(f"{label:24s} {r['p50']!s:>7s} {r['p90']!s:>7s} {r['p99']!s:>7s} "
              f"{r['max']!s:>7s} {summary['throughput_fps']:7g} "
              f"{100 * loss_rate(summary):6.1f} {srv['decode']!s:>7s} {srv['queue']!s:>7s} "
              f"{srv['inference']!s:>7s} {srv['total']!s:>7s} {summary['batch']['mean']!s:>6s} "
              f"{summary['no_face']:6d} {summary['wire_bytes']:6d} "
              f"{summary['server_cpu_ms_per_frame']!s:>7s}", flush=True)
    each = {r["variant"]: {"kind": r["kind"], "p50_ms": r["rtt_ms"]["p50"],
                           "p99_ms": r["rtt_ms"]["p99"], "sent": r["sent"],
                           "answered": r["answered"],
                           "server_cpu_ms_per_frame": r["server_cpu_ms_per_frame"]}
            for r in rows}
    figures = {"clients": cfg.clients, "fps": cfg.fps, "seconds": cfg.seconds,
               # one variant (the datasheet's case): its figures at the top level
               **(next(iter(each.values())) if len(each) == 1 else {}), "variants": each}
    out = cfg.save(cfg.name, figures, cfg.details("server_fixed", info, rows=rows))
    save_histogram(out.with_suffix(".png"), series,
                   f"{cfg.model.name}: {cfg.clients} clients x {cfg.fps:g} fps; "
                   f"{info['cpu']}, {info['usable_cpus']} CPUs")
    return failed([f"{r['variant']}: {f}" for r in rows for f in r["failures"]])


# -- overhead -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OverheadConfig(ServerBenchConfig):
    clients: int = opt(8, "concurrent clients", at_least=1)
    seconds: float = opt(20.0, "how long each run streams")
    kind: str = opt("crops", "crops (the page's own) or full frames (the server detects)", KINDS)
    repeats: int = opt(2, "runs of each variant, in turn (the median is quoted)", at_least=1)
    rounds: int = opt(200, "timed forward() calls per batch size for the model's price",
                      at_least=1)
    variant: tuple[str, ...] = opt((), "a server to measure, 'LABEL=--flag value ...' "
                                   "(repeatable); default: one, the server's defaults")
    tree: tuple[str, ...] = opt((), "'LABEL=DIR': run that variant's server from this "
                                "checkout instead of this one (repeatable)")
    name: str = opt("server_overhead", "result name")


def forward_prices(model: Path, sizes: set[int], rounds: int) -> dict[int, float]:
    """CPU seconds of one `Predictor.forward` call per batch size, as the server runs it
    (the int8 runtime on one thread where the model has one)."""
    import torch

    from bench.model import interleaved, random_faces
    from streamfer.model import Predictor

    torch.set_num_threads(1)
    predictor = Predictor(model, device="cpu")
    prices = {}
    for n in sorted(sizes):
        faces = random_faces(n, predictor.input_size)
        (cpu_ms, _), = interleaved({"served": partial(predictor.forward, faces)}, n, rounds,
                                   warmup=5).values()
        prices[n] = cpu_ms * n / 1000
    return prices


def inference_cpu_s(ws_url: str) -> float | None:
    """The server's own count of its model's CPU seconds, if it keeps one."""
    base = ws_url.replace("ws://", "http://").removesuffix("/ws")
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^streamfer_inference_cpu_seconds_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def overhead(cfg: OverheadConfig) -> int:
    """The server's CPU per frame outside the model: what a frame's trip costs besides it.

    Each variant's server (without --variant: one, with the server's defaults) is streamed the
    same load (--clients x --fps of --kind for --seconds); its CPU time over the run (every
    thread and child process, Linux /proc) is split into the model's share and the rest. The
    model's share is the batches the replies report, each priced by this process timing
    `Predictor.forward` on a batch of that size (the same model, runtime and threads as the
    server; median of --rounds), so the remainder is the WebSocket, decode, thread hops,
    batching, JSON and metrics per frame. A server that counts its model's CPU itself
    (`streamfer_inference_cpu_seconds_total` in /metrics) also gets that split, measured
    where it ran. Variants run in turn, --repeats times, so the machine's load hits all
    alike; medians are quoted. `--tree LABEL=DIR` runs a variant's server from another
    checkout, e.g. the code before a change (`git archive --prefix=before/ HEAD~1 | tar -x
    -C /tmp`, then `--variant before= --tree before=/tmp/before --variant after=`)."""
    info, line = cfg.pin_client()
    print(f"{line}; {cfg.clients} clients x {cfg.fps:g} fps of {cfg.kind} for "
          f"{cfg.seconds:g} s, {cfg.repeats} runs each", flush=True)
    frames = load_frames(cfg.kind)
    servers = variant_flags(cfg.variant) if cfg.variant else {"server defaults": ()}
    trees = {label.strip(): Path(d) for label, _, d in (t.partition("=") for t in cfg.tree)}
    runs: dict[str, list[dict]] = {label: [] for label in servers}
    for r in range(cfg.repeats):
        for label, flags in servers.items():
            with serve(cfg, flags, f"{cfg.name}_{r}_{_slug(label)}", trees.get(label)) as server:
                lt = LoadTestConfig(url=server.url, clients=cfg.clients, fps=cfg.fps,
                                    seconds=cfg.seconds, kind=cfg.kind)
                warm_up(cfg, lt, frames)
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
        measured = [1000 * (run["cpu_s"] - run["model_cpu_s_in_server"]) / max(1, run["answered"])
                    for run in rs if run["model_cpu_s_in_server"] is not None]
        rows.append({"variant": label, "flags": list(servers[label]),
                     "tree": str(trees.get(label, "")),
                     "server_cpu_ms_per_frame": statistics.median(t for t, _ in per),
                     "model_cpu_ms_per_frame": statistics.median(m for _, m in per),
                     "outside_model_cpu_ms_per_frame": statistics.median(t - m for t, m in per),
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
    cfg.save(cfg.name, {"variants": {r["variant"]: {k: r[k] for k in keys} for r in rows}},
             cfg.details("server_overhead", info,
                         forward_cpu_s={str(k): v for k, v in prices.items()}, rows=rows))
    return 0


MODES = {"ramp": Mode(RampConfig, ramp_servers), "fixed": Mode(FixedConfig, fixed),
         "overhead": Mode(OverheadConfig, overhead)}


def main(argv: list[str] | None = None) -> int:
    return run_mode(MODES, argv, prog="python -m bench.server", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
