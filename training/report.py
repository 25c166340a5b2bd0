"""Pictures people would rather look at than read: training curves and confusion matrices.

    python -m training.report runs/a runs/b ... --out compare.png   # runs side by side
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from streamfer.cli import opt, parse


def confusion(true: Sequence[int], pred: Sequence[int], n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (np.asarray(true), np.asarray(pred)), 1)
    return m


def save_confusion(true: Sequence[int], pred: Sequence[int], classes: Sequence[str],
                   path: Path, title: str) -> np.ndarray:
    """Row-normalised confusion matrix PNG (rows: true class); returns the count matrix."""
    m = confusion(true, pred, len(classes))
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({m[i, j]})", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"{title}\naccuracy {acc:.3f} on {m.sum()} images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return m


def save_curves(history: dict, path: Path, title: str) -> None:
    """Loss and accuracy per epoch."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(history["epoch"], history["train_loss"], label="train loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(history["epoch"], history["train_acc"], label="train acc (augmented views)")
    b.plot(history["epoch"], history["val_acc"], label="val acc")
    b.set_xlabel("epoch")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


X_AXES = ("epoch", "fraction")


def schedule_position(metrics: dict, x: str = "epoch") -> list[float]:
    """Each logged epoch's place on the x axis: its number, or ("fraction") the share of the
    run's own schedule done by its end, so that runs of different lengths, whose cosine
    schedules end at their last epoch, line up where their learning rates do."""
    epochs = metrics["history"]["epoch"]
    if x == "epoch":
        return [float(e) for e in epochs]
    if x != "fraction":
        raise ValueError(f"x must be one of {X_AXES}, not {x!r}")
    total = metrics.get("config", {}).get("epochs") or max(epochs)
    return [e / total for e in epochs]


def save_comparison(runs: dict[str, dict], path: Path, title: str, x: str = "epoch") -> None:
    """Validation accuracy and training loss per epoch of several runs (their metrics.json)
    on shared axes, for ablations: runs with equal epochs and schedules differ only in what
    the label says; runs of different lengths compare on x="fraction"."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for label, m in runs.items():
        h, xs = m["history"], schedule_position(m, x)
        a.plot(xs, h["val_acc"], label=label)
        b.plot(xs, h["train_loss"], label=label)
    xlabel = "epoch" if x == "epoch" else "fraction of the run's schedule"
    a.set_xlabel(xlabel)
    a.set_ylabel("validation accuracy")
    b.set_xlabel(xlabel)
    b.set_ylabel("training loss (augmented views)")
    a.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class CompareConfig:
    runs: tuple[Path, ...] = opt((), "run folders holding metrics.json", positional=True)
    out: Path | None = opt(None, "PNG to write (required)")
    title: str = opt("", "the figure's title")
    x: str = opt("epoch", "x axis: epoch, or fraction of each run's own schedule (for runs "
                 "of different lengths)", choices=X_AXES)

    def __post_init__(self) -> None:
        if self.out is None:
            raise ValueError("--out is required")


if __name__ == "__main__":
    a = parse(CompareConfig, None, prog="python -m training.report",
              description=save_comparison.__doc__)
    save_comparison({r.name: json.loads((r / "metrics.json").read_text()) for r in a.runs},
                    a.out, a.title, a.x)
    print(a.out)
