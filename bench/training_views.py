"""How fast training views are drawn, beside how fast the network takes a step: the figures
that size `training.fit --workers` for a machine.

A step of the shipped recipe draws 128 camera-like views on the CPU (re-framing, light, blur,
JPEG, noise, histogram equalisation: training/augment.py), then runs the network forward and
back. Drawn in the training process (--workers 0) the two take turns; with N workers the
views are drawn ahead in N processes. When the network's steps per second exceed one
process's batches per second (a GPU), an epoch waits on the views; this says by how much.

    python -m bench.training_views      # writes bench/results/<machine>/training_views.json
    python -m bench.training_views --steps 4 --workers 0,1 --nets paper --results /tmp/r
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.machine import machine_info
from bench.record import save
from streamfer import results
from streamfer.cli import opt, parse
from training import fit
from training.augment import CameraAugment
from training.network import PRESETS, FERNet, preset

# The shipped recipe's view flags (models/ferplus-5class.json's command).
RECIPE = ["--augment", "camera", "--preprocess", "equalize-hist", "--batch", "128"]


@dataclass(frozen=True)
class ViewsConfig:
    steps: int = opt(60, "batches timed per point (after those drawn ahead while the workers "
                     "started)")
    workers: str = opt("", "comma list of --workers values to time (default: 0, 1, 2, 4, ... "
                       "up to the cores)")
    nets: str = opt("deep,wide", "network presets whose training step is timed")
    device: str = opt("auto", "where the network steps: auto (CUDA when torch sees one), "
                      "cpu or cuda")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("training_views", "result name")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("--steps must be >= 1")
        for n in self.nets.split(","):
            if n not in PRESETS:
                raise ValueError(f"--nets: unknown preset {n!r}; choose from {sorted(PRESETS)}")


def parse_args(argv: list[str] | None = None) -> ViewsConfig:
    return parse(ViewsConfig, argv, prog="python -m bench.training_views",
                 description=__doc__.split("\n\n")[0])


def worker_counts(spec: str, cores: int) -> list[int]:
    if spec:
        return [int(w) for w in spec.split(",")]
    counts, n = [0], 1
    while n <= cores:
        counts.append(n)
        n *= 2
    return counts


def faces(n: int = 2048) -> np.ndarray:
    """n 48 x 48 grayscale windows of scikit-image's astronaut, at random places and scales:
    photographic content for the JPEG and blur steps, no data set needed."""
    from skimage import data

    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    rng = np.random.default_rng(0)
    out = np.empty((n, 48, 48), np.uint8)
    for i in range(n):
        side = int(rng.integers(96, 320))
        y, x = (int(rng.integers(0, gray.shape[k] - side)) for k in (0, 1))
        out[i] = cv2.resize(gray[y:y + side, x:x + side], (48, 48), interpolation=cv2.INTER_AREA)
    return out


def views_rate(workers: int, train: fit.TrainSet, steps: int) -> tuple[float, float]:
    """(batches per second, steady, seconds to the first steady batch) for --workers N."""
    cfg = fit.parse_args([*RECIPE, "--workers", str(workers), "--epochs", "1000"])
    per_epoch = len(train.labels) // cfg.batch
    t0 = time.perf_counter()
    if workers:
        drawn = fit.drawn_batches(cfg, train, 0, cfg.epochs, per_epoch, 0, 1,
                                  torch.device("cpu"))
        assert drawn is not None
        for _ in range(fit.PREFETCH * workers + 1):  # drain what was drawn ahead: then each
            next(drawn)                               # batch waits on the workers' pace
        started = time.perf_counter()
        for _ in range(steps):
            next(drawn)
        del drawn
    else:
        gen = torch.Generator().manual_seed(0)
        order = fit.epoch_order(cfg, len(train.labels), 0, 0, 1, gen)
        fit.draw_batch(cfg, train, fit.step_indices(cfg, order, 0, 1), gen)
        started = time.perf_counter()
        for step in range(steps):
            fit.draw_batch(cfg, train, fit.step_indices(cfg, order, step % per_epoch, 1), gen)
    return steps / (time.perf_counter() - started), started - t0


def step_rate(net_name: str, device: torch.device, steps: int) -> float:
    """Training steps per second of one network on `device` (batch 128, SGD, bf16 autocast
    where fit uses it), on views already there: the network's side of an epoch alone."""
    net = FERNet(preset(net_name, crop=44, classes=5)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(128, 1, 44, 44, device=device)
    target = torch.softmax(torch.randn(128, 5, device=device), 1)
    bf16 = fit._fast_bf16(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = -(target * torch.log_softmax(logits.float(), 1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # fit reads the loss every step

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    device, _, _ = fit.device_and_rank(cfg.device)
    images = faces()
    n = len(images)
    train = fit.TrainSet(torch.from_numpy(images)[:, None], torch.zeros(n, dtype=torch.int64),
                         torch.full((n, 5), 0.2), CameraAugment(), None)
    cores = len(os.sched_getaffinity(0))
    views = {}
    for w in worker_counts(cfg.workers, cores):
        rate, start = views_rate(w, train, cfg.steps)
        views[str(w)] = {"batches_per_s": round(rate, 2), "start_s": round(start, 2)}
        print(f"views, --workers {w:2d}: {rate:7.1f} batches/s (steady after {start:.2f} s)")
    one = views.get("0", next(iter(views.values())))["batches_per_s"]
    nets = {}
    for name in cfg.nets.split(","):
        rate = step_rate(name, device, cfg.steps)
        nets[name] = {"steps_per_s": round(rate, 2),
                      "processes_to_keep_up": math.ceil(rate / one)}
        print(f"network {name:6s} on {device.type}: {rate:7.1f} steps/s = "
              f"{rate / one:.2f} x one process's views")
    details = {"benchmark": "training_views", "device": str(device), "cores": cores,
               "recipe": RECIPE, "steps": cfg.steps, "machine": machine_info(),
               "torch": torch.__version__, "views": views, "nets": nets}
    save(cfg.results, cfg.name, {"views": views, "nets": nets, "device": device.type}, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
