"""What the options cost end to end, at one fixed load: client crops vs full frames (the
server detects the face), and centre vs mirror vs ten-crop test-time averaging.

For each variant the real server is started on a free 127.0.0.1 port (with `--tta MODE`) and
the same load is streamed (default 8 clients x 15 fps for 20 s); prints one row per variant
-- round trips, throughput, losses, the server's own decode/queue/inference medians and batch
sizes -- and writes JSON and a histogram PNG of all variants.

    python -m bench.server_variants
    python -m bench.server_variants --clients 16 --seconds 30 --server-cpus 0 --client-cpus 1
    python -m bench.server_variants --model /tmp/tiny.pt --clients 2 --seconds 1
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.serverproc import ServerRunConfig, parse_cpus, running_server
from streamfer.cli import opt, parse
from streamfer.loadtest.cli import LoadTestConfig, loss_rate, run_once
from streamfer.loadtest.frames import load_frames
from streamfer.loadtest.report import save_histogram

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# (label, frame kind, server TTA, extra server flags); the first row is the server's default
# configuration. Full frames are searched by BlazeFace unless the row says Haar.
VARIANTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("crops, mirror (default)", "crops", "mirror", ()),
    ("frames, mirror", "frames", "mirror", ()),
    ("frames, mirror, haar", "frames", "mirror", ("--detector", "haar")),
    ("crops, centre", "crops", "centre", ()),
    ("crops, ten", "crops", "ten", ()),
)


@dataclass(frozen=True)
class VariantsConfig(ServerRunConfig):
    clients: int = opt(8, "concurrent clients")
    fps: float = opt(15.0, "frames per second per client")
    seconds: float = opt(20.0, "how long each variant streams")
    warmup_seconds: float = opt(2.0, "an unrecorded run first, so first-call costs stay out "
                                "of the figures")
    only: tuple[str, ...] = opt((), "run only these variants (repeatable): "
                                + "; ".join(v[0] for v in VARIANTS))
    name: str = opt("server_variants", "result name, e.g. server_crops_10x15")

    def __post_init__(self) -> None:
        super().__post_init__()
        known = [v[0] for v in VARIANTS]
        if any(o not in known for o in self.only):
            raise ValueError(f"--only must name one of {known}")

    @property
    def variants(self) -> tuple[str, ...]:
        return self.only or tuple(v[0] for v in VARIANTS)


def parse_args(argv: list[str] | None = None) -> VariantsConfig:
    return parse(VariantsConfig, argv, prog="python -m bench.server_variants",
                 description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    info, line = cfg.pin_client()
    print(f"{line}; load {cfg.clients} clients x "
          f"{cfg.fps:g} fps for {cfg.seconds:g} s", flush=True)
    frame_sets = {kind: load_frames(kind) for kind in {v[1] for v in VARIANTS}}
    rows, series = [], {}
    header = (f"{'variant':24s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s} {'rep/s':>7s} "
              f"{'lost%':>6s} {'decode':>7s} {'queue':>7s} {'infer':>7s} {'total':>7s} "
              f"{'batch':>6s} {'noface':>6s} {'bytes':>6s} {'cpu ms':>7s}")
    for label, kind, tta, extra in VARIANTS:
        if label not in cfg.variants:
            continue
        slug = "_".join([tta, kind, *(a.strip("-") for a in extra)])
        log_path = cfg.log_path(f"{cfg.name}_{slug}")
        with running_server(cfg.model, ("--tta", tta, *extra, *cfg.server_arg),
                            cpus=parse_cpus(cfg.server_cpus), log_path=log_path) as server:
            lt = LoadTestConfig(url=server.url, clients=cfg.clients, fps=cfg.fps,
                                seconds=cfg.seconds, kind=kind)
            if cfg.warmup_seconds > 0:
                asyncio.run(run_once(lt, frame_sets[kind], seconds=cfg.warmup_seconds))
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
        if len(rows) == 1:
            print(header)
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
    out = cfg.save(cfg.name, figures, {
        "benchmark": "server_variants", "model": str(cfg.model), "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        "rows": rows})
    png = save_histogram(out.with_suffix(".png"), series,
                         f"{cfg.model.name}: {cfg.clients} clients x {cfg.fps:g} fps; "
                         f"{info['cpu']}, {info['usable_cpus']} CPUs")
    print(f"wrote {out} and {png}")
    broken = [f"{r['variant']}: {f}" for r in rows for f in r["failures"]]
    for f in broken:
        print(f"FAILED: {f}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
