"""Judge a candidate model by the shipping bars, as the server runs it by default, and
publish the verdict whether it ships or not.

    python -m bench.candidate --model runs/RUN/cal.pt    # against models/ferplus-5class.pt

Each figure comes from the program that owns it, run here in turn on the candidate as the
server loads it (on the CPU its int8 derivative when one was made from this very file):
`training.evaluate` on FER+ valid (majority), FER2013 PublicTest and webfaces-dev whole
photos, and on FER+ train's selection split where the data has it (reported, not a bar: it
is where candidates are chosen); `bench.webfaces_e2e` for /api/predict end to end with the
server's default detector; `training.people` for webfaces-dev paired with the shipped model
on the same people resamples; and the time per face, batch 1 on one thread, the candidate
and the shipped model in alternating rounds. A bar not measured counts as not met. Writes
`candidate_<tag>` under --results/<machine>/. The bars are SHIPPING_BARS below, once.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import webfaces_e2e
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from training import evaluate, people
from training.cli import need_path

PROGRAM = "bench.candidate"


@dataclass(frozen=True)
class Bar:
    """One shipping bar: the figure it reads, and the threshold it must reach."""

    figure: str
    threshold: float
    most: bool = False  # True: the figure must stay at or below the threshold

    def met(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.threshold if self.most else value >= self.threshold


# What a model must meet, as served by default, to replace the shipped one.
SHIPPING_BARS = (
    Bar("webfaces balanced accuracy", 0.75),
    Bar("webfaces sadness recall", 0.60),
    Bar("webfaces surprise recall", 0.60),
    Bar("webfaces lowest class recall", 0.55),
    Bar("end to end balanced accuracy", 0.73),
    Bar("FER+ valid accuracy", 0.90),
    Bar("FER2013 PublicTest accuracy", 0.70),
    Bar("ms per face, batch 1, one thread", 5.0, most=True),
)


@dataclass(frozen=True)
class CandidateConfig:
    model: str = opt("", "the candidate: an exported model file (with its int8 derivative "
                     "beside it, as the server would run it)")
    against: str = opt(str(DEFAULT_MODEL), "the shipped model it is compared with")
    datasets: str = opt(str(DEFAULT_DATASETS), "folder holding ferplus/, fer2013/, "
                        "webfaces-dev/")
    timing_faces: int = opt(200, "faces timed per model per round")
    timing_rounds: int = opt(5, "alternating timing rounds (candidate, shipped, ...)")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    tag: str = opt("", "name after candidate_ (default: from the model's path)")


def judge(figures: dict[str, float | None],
          bars: tuple[Bar, ...] = SHIPPING_BARS) -> list[dict[str, Any]]:
    """Each bar with the figure it read (None: not measured) and whether it is met."""
    return [{"figure": b.figure, "threshold": b.threshold,
             "at_most": b.most, "value": figures.get(b.figure), "met": b.met(figures.get(b.figure))}
            for b in bars]


def model_alone_figures(ferplus: dict, fer2013: dict, web: dict) -> dict[str, float | None]:
    """The bars' figures that the model alone gives, from `training.evaluate`'s scores of FER+
    valid, FER2013 PublicTest and webfaces-dev (a class the model lacks: None)."""
    return {
        "webfaces balanced accuracy": web["balanced_accuracy"],
        "webfaces sadness recall": web["recall"].get("sadness"),
        "webfaces surprise recall": web["recall"].get("surprise"),
        "webfaces lowest class recall": min(web["recall"].values()),
        "FER+ valid accuracy": ferplus["accuracy"],
        "FER2013 PublicTest accuracy": fer2013["accuracy"],
    }


def ms_per_face(paths: list[str], faces: int, rounds: int) -> list[float]:
    """Median ms per face at batch 1 on one thread, for each model, timed in alternating
    rounds so that a noisy machine slows both alike."""
    models = [Predictor(p, device="cpu", threads=1) for p in paths]
    size = models[0].input_size
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (faces, 1, size, size), np.uint8)
    times: list[list[float]] = [[] for _ in models]
    for m in models:  # warm up: the first calls build caches
        for x in batch[:10]:
            m.forward(x)
    for _ in range(rounds):
        for i, m in enumerate(models):
            for x in batch:
                t0 = time.perf_counter()
                m.forward(x)
                times[i].append(1e3 * (time.perf_counter() - t0))
    return [round(statistics.median(t), 4) for t in times]


def tag_of(path: str) -> str:
    label = people.model_labels([path])[0]
    return re.sub(r"[^a-z0-9_.-]+", "-", label.lower()).strip("-")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse(CandidateConfig, argv, prog=f"python -m {PROGRAM}",
                description=__doc__.split("\n")[0])
    need_path(PROGRAM, cfg.model or "(none)", "--model", "candidate model file")
    need_path(PROGRAM, cfg.against, "--against", "shipped model file")
    root = Path(cfg.datasets)
    common = ["--model", cfg.model, "--datasets", cfg.datasets]
    runs = {s: evaluate.main([s, *common]) for s in ("ferplus", "fer2013", "webfaces")}
    if (root / "ferplus" / "train").is_dir():
        runs["selection"] = evaluate.main(["selection", *common])
    web = runs["webfaces"]
    with tempfile.TemporaryDirectory() as tmp:
        webfaces_e2e.main(["--model", cfg.model, "--data", str(root / "webfaces-dev"),
                           "--detectors", "auto", "--results", tmp])
        e2e = results.read(next(Path(tmp).glob("*/webfaces_e2e.json")))
        paired = people.main(["--models", f"{cfg.against},{cfg.model}", "--datasets",
                              cfg.datasets, "--results", tmp, "--figures", tmp, "--tag", "x"])
    e2e_auto = e2e["details"]["detectors"]["auto"]
    ms, ms_shipped = ms_per_face([cfg.model, cfg.against], cfg.timing_faces,
                                 cfg.timing_rounds)
    figures = {
        **model_alone_figures(runs["ferplus"], runs["fer2013"], web),
        "end to end balanced accuracy": e2e_auto["balanced_accuracy"],
        "ms per face, batch 1, one thread": ms,
    }
    bars = judge(figures)
    candidate_row = next(r for r in paired.values() if "minus_first" in r)
    verdict = {
        "model": cfg.model, "against": cfg.against, "ships": all(b["met"] for b in bars),
        "bars": bars,
        "webfaces_paired_vs_against": candidate_row["minus_first"],
        "webfaces_interval_95": candidate_row["balanced_interval_95"],
        "ms_per_face_against": ms_shipped,
        "selection_balanced_accuracy": runs.get("selection", {}).get("balanced_accuracy"),
    }
    details = {"evaluations": {s: {k: v for k, v in r.items() if k != "confusion"}
                               for s, r in runs.items()},
               "end_to_end": {k: v for k, v in e2e_auto.items() if k != "rows"},
               "people": paired,
               "timing": {"faces": cfg.timing_faces, "rounds": cfg.timing_rounds,
                          "batch": 1, "threads": 1}}
    out = results.write(Path(cfg.results), results.make(
        f"candidate_{cfg.tag or tag_of(cfg.model)}", verdict, details))
    for b in bars:
        value = "not measured" if b["value"] is None else f"{b['value']:.4g}"
        print(f"{'met ' if b['met'] else 'MISS'}  {b['figure']}: {value} "
              f"({'<=' if b['at_most'] else '>='} {b['threshold']:g})")
    d = verdict["webfaces_paired_vs_against"]
    print(f"webfaces balanced minus {Path(cfg.against).name}: {100 * d['balanced']:+.1f} points "
          f"(95% {100 * d['interval_95'][0]:+.1f} to {100 * d['interval_95'][1]:+.1f})")
    print(f"{'SHIPS' if verdict['ships'] else 'does not ship'}; saved {out}")
    return verdict


if __name__ == "__main__":
    main()
