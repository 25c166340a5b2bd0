"""Post-hoc logit adjustment of an exported model, chosen on FER+ (valid, or train's selection
split), never on test photos.

    python -m training.calibrate runs/ferplus5-cam/ferplus-5class.pt --out models/NEW.pt

FER+'s training votes are a third neutral and a tenth anger, so a network trained on them
leans towards neutral. Subtracting tau x log(training prior) from the output layer's bias
(Menon et al., "Long-tail learning via logit adjustment", ICLR 2021) evens the per-class
recall at no cost per face. The prior is the mean training target (FER+ train under the
model's label protocol); tau is the value of --taus with the best balanced accuracy (mean
per-class recall) on FER+ valid, majority protocol, measured through streamfer's Predictor
as the server runs the model; with --choose-on selection, on FER+ train's selection split
instead (for a model trained without it), so that FER+ valid only reports. Adjustment buys
the small classes' recall with the large ones' (neutral's) accuracy; --min-accuracy A caps
that trade: tau is then chosen on balanced accuracy only among the values that keep plain
accuracy at A or more (the shipped models' floor is 0.90). The scan is printed and stored in
the model's metadata.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from streamfer.model import Predictor
from streamfer.paths import DEFAULT_DATASETS
from training import data as D
from training.cli import opt, parse_config
from training.evaluate import model_faces, scores
from training.export import reexport

log = logging.getLogger("training.calibrate")


@dataclass
class CalibrateConfig:
    model: str = opt("", "exported model to adjust (not already adjusted)")
    out: str = opt("", "where to write the adjusted model (.pt, with its .json beside it)")
    data_root: str = opt(str(DEFAULT_DATASETS / "ferplus"), "FER+ folder (train/ for the prior, "
                         "valid/ for choosing tau)")
    labels: str = opt("soft", "the label protocol the model was trained with (the prior is "
                      "its mean training target)", D.LABEL_MODES)
    taus: str = opt("0,0.25,0.5,0.75,1", "candidate tau values, a comma list")
    min_accuracy: float = opt(0.0, "choose tau only among the values that keep accuracy "
                              "on the --choose-on faces at this or more (none does: "
                              "the most accurate); 0: any value")
    choose_on: str = opt("valid", "where tau is chosen: FER+ valid, or the selection split "
                         "of FER+ train (training/data.py: in_selection; for models trained "
                         "without it, training.fit --val-on selection), leaving FER+ valid "
                         "to report", D.VAL_ON)
    threads: int = opt(1, "torch threads")


def parse_args(argv: list[str] | None = None) -> CalibrateConfig:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args = ["--model", args[0], *args[1:]]

    def check(cfg: CalibrateConfig) -> str | None:
        if not cfg.model or not cfg.out:
            return "a model and --out are needed"
        if not 0 <= cfg.min_accuracy <= 1:
            return f"--min-accuracy {cfg.min_accuracy}: expected a share from 0 to 1"
        return taus_problem(cfg.taus)

    return parse_config(CalibrateConfig, args, program="training.calibrate", doc=__doc__,
                        check=check)


def parse_taus(spec: str) -> list[float]:
    """A comma list of tau values, e.g. "0,0.5,1"."""
    return [float(t) for t in spec.split(",")]


def taus_problem(spec: str) -> str | None:
    """Why a --taus value cannot be read, or None."""
    try:
        parse_taus(spec)
    except ValueError:
        return f"--taus {spec!r}: expected numbers, e.g. 0,0.5,1"
    return None


CHOSEN_ON = {"valid": "FER+ valid, majority protocol",
             "selection": "FER+ train's selection split, majority protocol"}


def choose_tau(scan: dict[str, dict], min_accuracy: float = 0.0,
               on: str = CHOSEN_ON["valid"]) -> tuple[str, str]:
    """The key of `scan` (tau -> FER+ valid scores) with the best balanced accuracy among
    the taus whose accuracy is at least `min_accuracy`; when none is, the most accurate tau.
    Ties go to the first in scan order (the smallest tau as --taus lists them). Returns the
    tau and what it was chosen on, for the model's metadata."""
    if min_accuracy <= 0:
        return max(scan, key=lambda t: scan[t]["balanced_accuracy"]), f"{on}, balanced accuracy"
    allowed = [t for t in scan if scan[t]["accuracy"] >= min_accuracy]
    if not allowed:
        log.warning("no tau keeps FER+ valid accuracy at %.4f; choosing the most accurate",
                    min_accuracy)
        return (max(scan, key=lambda t: scan[t]["accuracy"]),
                f"{on}, accuracy (no tau reached {min_accuracy:g})")
    return (max(allowed, key=lambda t: scan[t]["balanced_accuracy"]),
            f"{on}, balanced accuracy, among taus with accuracy >= {min_accuracy:g}")


def with_tau(model: str | Path, tau: float, prior: dict[str, float], target: Path) -> Predictor:
    """The exported model with its output bias shifted by tau x log(prior), written to
    `target` and loaded as the server would run it."""
    reexport(model, target, {"tau": tau, "prior": prior})
    return Predictor(target, device="cpu")


def training_prior(data_root: str | Path, classes: tuple[str, ...],
                   labels: str) -> tuple[dict[str, float], int]:
    """The mean training target over FER+ train under a label protocol: the class prior the
    network absorbed, which logit adjustment divides out. Also the number of images."""
    _, votes = D.read_ferplus_votes(Path(data_root) / "train" / "label.csv")
    _, _, soft = D.ferplus_targets(votes, classes, labels)
    return {c: float(p) for c, p in zip(classes, soft.mean(0), strict=True)}, len(soft)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(cfg.threads)
    classes = tuple(Predictor(cfg.model, device="cpu", optimize=False).classes)
    prior, prior_images = training_prior(cfg.data_root, classes, cfg.labels)
    val = (D.load_selection(cfg.data_root, classes) if cfg.choose_on == "selection" else
           D.load_ferplus(cfg.data_root, "valid", classes, "majority"))
    scan: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tau in parse_taus(cfg.taus):
            model = with_tau(cfg.model, tau, prior, Path(tmp) / f"tau{tau:g}.pt")
            s = scores(val.labels, model_faces(model, val), classes)
            scan[f"{tau:g}"] = {"accuracy": s["accuracy"],
                                "balanced_accuracy": s["balanced_accuracy"],
                                "recall": s["recall"]}
            log.info("tau %g: accuracy %.4f, balanced %.4f, recall %s", tau,
                     s["accuracy"], s["balanced_accuracy"], s["recall"])
    best, chosen_on = choose_tau(scan, cfg.min_accuracy, CHOSEN_ON[cfg.choose_on])
    adjust = {"tau": float(best), "prior": prior, "chosen_on": chosen_on, "scan": scan,
              "command": cfg.command}
    # A new model file: the server logs it by its name, so it takes the name of the file.
    reexport(cfg.model, cfg.out, adjust, name=Path(cfg.out).stem)
    result = {"model": cfg.out, "tau": float(best), "chosen_on": chosen_on, "prior": prior,
              "scan": scan, "val_images": len(val), "class_counts_val": val.counts(),
              "train_prior_images": prior_images, "command": cfg.command}
    print(json.dumps({k: v for k, v in result.items() if k != "scan"}, indent=2))
    return result


if __name__ == "__main__":
    main()
