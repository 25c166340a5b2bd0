"""What logit adjustment trades: FER+ valid accuracy against web-photo balanced accuracy.

    python -m training.tradeoff --models runs/a/model.pt,runs/b/model.pt+runs/c/model.pt \\
        --out docs/figures/tau-tradeoff.png

FER+ valid is a third neutral; webfaces-dev is balanced. Subtracting tau x log(training prior)
from a model's logits (`training.calibrate`) moves answers from the common classes to the rare
ones: plain FER+ accuracy falls while the balanced accuracy on web photos rises, up to a
point. This scans tau for each model (a "+" joins models into an ensemble, combined as
`training.evaluate` does), each run through the server's Predictor on its TorchScript (an
adjusted copy has no int8 derivative: run `training.evaluate` on the shipped file for the
figures as served, which differ by about a tenth of a point), and draws one curve per
model against a shipped model's bars (FER+ accuracy, web balanced accuracy); a point that misses
either of its other two (no web class below 0.45 recall, FER2013 PublicTest at 70%) is drawn
hollow. It explains a choice; it does not make one: the shipped tau is chosen on FER+ valid
alone (`training.calibrate`), and webfaces-dev stays evaluation only.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from streamfer.model import Predictor
from streamfer.paths import DEFAULT_DATASETS
from training import data as D
from training.calibrate import parse_taus, taus_problem, training_prior, with_tau
from training.cli import opt, parse_config
from training.evaluate import Ensemble, load_photos, model_faces, scores

log = logging.getLogger("training.tradeoff")

# The shipped model's bars, each (set, figure, threshold): the first two are the figure's axes; a
# point that misses either of the other two is drawn hollow.
BARS: dict[str, tuple[str, str, float]] = {
    "ferplus_accuracy": ("ferplus", "accuracy", 0.90),
    "webfaces_balanced": ("webfaces", "balanced_accuracy", 0.70),
    "webfaces_min_recall": ("webfaces", "min_recall", 0.45),
    "fer2013_accuracy": ("fer2013", "accuracy", 0.70),
}


def bars_met(row: dict) -> dict[str, bool]:
    """Which of the four bars one scanned tau meets (a row of `scan`)."""
    return {bar: row[s][figure] >= threshold for bar, (s, figure, threshold) in BARS.items()}


@dataclass
class TradeoffConfig:
    models: str = opt("", "comma list of exported, unadjusted models; a+b is their ensemble")
    names: str = opt("", "comma list of legend names (default: each file's folder)")
    taus: str = opt("0,0.25,0.5,0.75,1,1.25,1.5", "tau values to scan, a comma list")
    labels: str = opt("soft", "the label protocol the models were trained with (their prior "
                      "is its mean training target on FER+ train)", D.LABEL_MODES)
    datasets: str = opt(str(DEFAULT_DATASETS), "folder holding ferplus/, fer2013/, webfaces-dev/")
    threads: int = opt(1, "torch threads")
    out: str = opt("docs/figures/tau-tradeoff.png", "the figure; its figures go beside it "
                   "as .json")


def model_specs(text: str) -> list[list[Path]]:
    """--models: one list of files per curve (a+b: an ensemble)."""
    return [[Path(p.strip()) for p in s.split("+")] for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> TradeoffConfig:
    def check(cfg: TradeoffConfig) -> str | None:
        specs = model_specs(cfg.models)
        if not specs:
            return "--models: at least one exported model is needed"
        missing = [str(p) for spec in specs for p in spec if not p.is_file()]
        if missing:
            return f"--models: no such file {missing[0]!r}"
        if cfg.names and len(cfg.names.split(",")) != len(specs):
            return f"--names: {len(cfg.names.split(','))} names for {len(specs)} models"
        return taus_problem(cfg.taus)

    return parse_config(TradeoffConfig, argv, program="training.tradeoff", doc=__doc__,
                        check=check)


def adjusted(paths: list[Path], tau: float, prior: dict[str, float],
             tmp: Path) -> Predictor | Ensemble:
    """The model (or ensemble) with every member's output bias shifted by tau x log prior."""
    members = [with_tau(path, tau, prior, tmp / f"m{i}-tau{tau:g}.pt")
               for i, path in enumerate(paths)]
    return members[0] if len(members) == 1 else Ensemble(members)


def scan(paths: list[Path], classes: tuple[str, ...], taus: list[float],
         sets: dict[str, D.FaceSet], labels: str, ferplus_root: Path) -> list[dict]:
    """One row per tau: accuracy, balanced accuracy and lowest recall on each set."""
    prior, _ = training_prior(ferplus_root, classes, labels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tau in taus:
            model = adjusted(paths, tau, prior, Path(tmp))
            row: dict = {"tau": tau}
            for name, faces in sets.items():
                s = scores(faces.labels, model_faces(model, faces), faces.classes)
                row[name] = {"accuracy": s["accuracy"], "balanced_accuracy":
                             s["balanced_accuracy"], "min_recall": min(s["recall"].values()),
                             "recall": s["recall"]}
            row["bars_met"] = bars_met(row)
            log.info("%s tau %g: FER+ %.4f, web balanced %.4f (min %.2f), FER2013 %.4f",
                     "+".join(p.parent.name for p in paths), tau, row["ferplus"]["accuracy"],
                     row["webfaces"]["balanced_accuracy"], row["webfaces"]["min_recall"],
                     row["fer2013"]["accuracy"])
            rows.append(row)
    return rows


def draw_tradeoff(curves: dict[str, list[tuple[float, float, str, bool]]], *,
                  bars: tuple[float, float], top: tuple[float, float],
                  pad: tuple[float, float], xlabel: str, ylabel: str, title: str,
                  met_label: str, hollow_label: str, path: Path) -> None:
    """One curve per model of (x, y, point label, every other bar met) points, drawn hollow
    where not, against an x bar and a y bar with the region meeting both (up to `top`)
    shaded; `pad` widens each axis past the points and bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for name, points in curves.items():
        x = [p[0] for p in points]
        y = [p[1] for p in points]
        line, = ax.plot(x, y, "-", label=name)
        for xi, yi, text, full in points:
            ax.plot(xi, yi, "o", color=line.get_color(),
                    markerfacecolor=line.get_color() if full else "white")
            ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=line.get_color())
    (x_bar, y_bar), (x_pad, y_pad) = bars, pad
    ax.axvline(x_bar, ls="--", c="gray")
    ax.axhline(y_bar, ls="--", c="gray")
    ax.fill_between([x_bar, top[0]], y_bar, top[1], color="green", alpha=0.08, label=met_label)
    ax.plot([], [], "o", color="gray", markerfacecolor="white", label=hollow_label)
    xs = [p[0] for points in curves.values() for p in points]
    ys = [p[1] for points in curves.values() for p in points]
    ax.set_xlim(min(xs) - x_pad, max(max(xs), x_bar) + x_pad)
    ax.set_ylim(min(ys) - y_pad, max(max(ys), y_bar) + y_pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    points = {name: [(100 * r["ferplus"]["accuracy"], 100 * r["webfaces"]["balanced_accuracy"],
                      f"{r['tau']:g}",
                      r["bars_met"]["webfaces_min_recall"] and r["bars_met"]["fer2013_accuracy"])
                     for r in rows] for name, rows in curves.items()}
    draw_tradeoff(
        points, bars=(100 * BARS["ferplus_accuracy"][2], 100 * BARS["webfaces_balanced"][2]),
        top=(100, 100), pad=(1, 1),
        xlabel="FER+ valid, 5 classes, majority: accuracy (%)",
        ylabel="webfaces-dev, whole photos: balanced accuracy (%)",
        title="Logit adjustment: each point one tau (labels); TorchScript",
        met_label="FER+ and web bars met",
        hollow_label=f"hollow: a web class below {BARS['webfaces_min_recall'][2]:g} recall or "
                     f"FER2013 below {100 * BARS['fer2013_accuracy'][2]:g}%", path=path)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(cfg.threads)
    specs = model_specs(cfg.models)
    names = ([n.strip() for n in cfg.names.split(",")] if cfg.names else
             ["+".join(p.parent.name for p in spec) for spec in specs])
    taus = parse_taus(cfg.taus)
    root = Path(cfg.datasets)
    curves: dict[str, list[dict]] = {}
    loaded: dict[tuple, dict[str, D.FaceSet]] = {}
    for name, spec in zip(names, specs, strict=True):
        first = Predictor(spec[0], device="cpu", optimize=False)
        classes = tuple(first.classes)
        key = (classes, first.input_size)
        if key not in loaded:  # the sets, once per class list
            loaded[key] = {
                "ferplus": D.load_ferplus(root / "ferplus", "valid", classes, "majority"),
                "webfaces": load_photos(root / "webfaces-dev", classes, first.input_size),
                "fer2013": D.load_fer2013(root / "fer2013", "test", classes)}
        curves[name] = scan(spec, classes, taus, loaded[key], cfg.labels, root / "ferplus")
    out = Path(cfg.out)
    plot(curves, out)
    result = {"models": dict(zip(names, [[str(p) for p in s] for s in specs], strict=True)),
              "protocol": "FER+ valid majority (accuracy), webfaces-dev whole photos "
                          "(balanced accuracy, evaluation only), FER2013 PublicTest original "
                          "labels; every model run through streamfer.model.Predictor (its "
                          "TorchScript: an adjusted copy has no int8 derivative) with its "
                          "output bias shifted by tau x log(FER+ train prior)",
              "bars": {bar: threshold for bar, (_, _, threshold) in BARS.items()},
              "curves": curves, "command": cfg.command}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s and %s", out, out.with_suffix(".json"))
    return result


if __name__ == "__main__":
    main()
