"""One evaluation table, one command per row: an exported model run exactly as the server runs it.

    python -m training.evaluate fer2013  --model models/ferplus-5class.pt  # PublicTest
    python -m training.evaluate ferplus  --model models/ferplus-5class.pt  # FER+ valid
    python -m training.evaluate webfaces --model models/ferplus-5class.pt  # web photos
    python -m training.evaluate ckplus   --model models/ferplus-5class.pt  # CK+48, zero-shot
    python -m training.evaluate agreement    # FER2013's labels vs the FER+ majority, PublicTest
    python -m training.evaluate by-crowd --model models/ferplus-5class.pt  # FER2013, split by it

Every face goes through streamfer's own path: the server's decoder, `streamfer.detect.prepare`
for a client crop (webfaces: the whole photo is the crop), and `streamfer.model.Predictor`
(on the CPU its int8 ONNX derivative when one was made from this very file, else the frozen,
fused TorchScript; the model's own preprocessing and default test-time averaging).
The classes scored are the model's: a row whose classes the model lacks says so and stops.
webfaces-dev is for evaluation only; never select epochs or tune on it. Results print as JSON
and, with --out, are saved there.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamfer.detect import FaceDetector, prepare
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from training import data as D
from training.bootstrap import RESAMPLES, group_interval, person_of
from training.cli import need_path, opt, parse_config
from training.distill import answers_over, geometric_mean

log = logging.getLogger("training.evaluate")

SETS = ("fer2013", "ferplus", "selection", "webfaces", "ckplus", "agreement", "by-crowd")
# by-crowd: PublicTest photos grouped by what the FER+ crowd says of each one
PROGRAM = "training.evaluate"
CROWD_GROUPS = ("agree", "disagree", "undecided")


@dataclass
class EvalConfig:
    set: str = opt("fer2013", "fer2013: PublicTest with FER2013's labels; ferplus: FER+ valid, "
                   "majority protocol; selection: FER+ train's selection split, majority "
                   "protocol (where models trained without it are chosen); webfaces: "
                   "webfaces-dev whole photos (balanced accuracy); "
                   "ckplus: every CK+48 peak frame of the model's classes, zero-shot; "
                   "agreement: FER2013's labels vs the FER+ majority on PublicTest; "
                   "by-crowd: the model's FER2013 accuracy on PublicTest photos whose FER+ "
                   "majority agrees with FER2013's label, disagrees, or does not exist", SETS)
    model: str = opt(str(DEFAULT_MODEL),
                     "exported TorchScript model (the server's by default); a comma list scores "
                     "their ensemble as training.distill combines teachers (geometric mean)")
    classes: str = opt("", "score these classes (paper5, fer7, fer8, a list); default: the "
                       "model's own")
    datasets: str = opt(str(DEFAULT_DATASETS), "folder holding fer2013/, ferplus/, webfaces-dev/, "
                        "CK+48/")
    tta: str = opt("", "test-time views (default: the model's own default, as the server)")
    threads: int = opt(1, "torch threads (1: one core, as the server's inference thread)")
    out: str = opt("", "also write the result here as JSON")
    record: str = opt("", "also write it in the one result schema (streamfer/results.py), "
                      "as bench/results/<machine>/NAME.json "
                      "(e.g. accuracy_ferplus5_ferplus_valid_paper5)")


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    def check(cfg: EvalConfig) -> str | None:
        return D.classes_problem(cfg.classes) if cfg.classes else None

    # positional set name for the short form: python -m training.evaluate ferplus ...
    args = list(argv if argv is not None else __import__("sys").argv[1:])
    if args and args[0] in SETS:
        args = ["--set", args[0], *args[1:]]
    return parse_config(EvalConfig, args, program=PROGRAM, doc=__doc__, check=check)


def scores(true: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, balanced accuracy (mean per-class recall), per-class recall, confusion."""
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (true, pred), 1)
    support = confusion.sum(1)
    recall = np.divide(np.diag(confusion), support, out=np.zeros(k), where=support > 0)
    return {"images": len(true), "accuracy": float((true == pred).mean()),
            "balanced_accuracy": float(recall[support > 0].mean()),
            "recall": {c: round(float(r), 4) for c, r in zip(classes, recall, strict=True)},
            "support": {c: int(s) for c, s in zip(classes, support, strict=True)},
            "confusion": confusion.tolist()}


class Ensemble:
    """Several served models as one: each runs as the server runs it (its own preprocessing
    and views), and their probabilities over the first model's classes are combined by
    `training.distill`'s rule, the normalised geometric mean. For scoring a distillation
    teacher; the server runs one model."""

    def __init__(self, members: list[Predictor]) -> None:
        self.members = members
        self.classes = [c for c in members[0].classes if all(c in m.classes for m in members)]
        self.input_size = members[0].input_size
        self.tta = "+".join(sorted({m.tta for m in members}))
        self.preprocess = "+".join(sorted({m.preprocess for m in members}))
        self.runtime = "+".join(sorted({m.runtime for m in members}))

    def forward(self, faces: np.ndarray) -> np.ndarray:
        return geometric_mean([answers_over(m, faces, self.classes) for m in self.members])


def model_faces(predictor: Predictor | Ensemble, faces: D.FaceSet) -> np.ndarray:
    """Predicted class index per face (model's class order mapped onto `faces.classes`)."""
    columns = [predictor.classes.index(c) for c in faces.classes]
    preds = []
    for i in tqdm(range(0, len(faces), 64), desc="faces", leave=False, mininterval=5):
        preds.append(predictor.forward(faces.images[i:i + 64])[:, columns].argmax(1))
    return np.concatenate(preds)


def load_photos(root: Path, classes: tuple[str, ...], size: int) -> D.FaceSet:
    """webfaces-dev photos, each whole photo sent as the page sends a crop: decoded to gray by
    the server's decoder and resized by `streamfer.detect.prepare(is_crop=True)`."""
    detector = FaceDetector()
    folders = {D.canonical(p.name): p for p in root.iterdir() if p.is_dir()}
    images, labels, paths = [], [], []
    for label, cls in enumerate(classes):
        if cls not in folders:
            raise FileNotFoundError(f"{root}: no folder for class {cls!r}")
        for path in sorted(folders[cls].iterdir()):
            if path.suffix.lower() in D.IMAGE_SUFFIXES:
                face = prepare(path.read_bytes(), is_crop=True, size=size, detector=detector)
                images.append(face.pixels)
                labels.append(label)
                paths.append(str(path))
    return D.FaceSet(np.stack(images), np.array(labels, np.int64), classes, None, paths)


def match_ferplus(fer: D.FaceSet, plus_root: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pair each fer2013/test image with its FER+ valid twin by pixels
    (`training.data.pair_with_ferplus`; pairs below r 0.95 dropped). Returns (fer index, FER+
    row index into label.csv, stats)."""
    names, _ = D.read_ferplus_votes(plus_root / "label.csv")
    return D.pair_with_ferplus(fer, plus_root, names)


def paired_publictest(root: Path) -> tuple[D.FaceSet, np.ndarray, np.ndarray, np.ndarray, dict]:
    """PublicTest with both label sets: (fer2013/test with FER7 labels, indices of the images
    paired with FER+ valid, FER2013's class name for each, their FER+ votes, pairing stats)."""
    fer = D.load_fer2013(root / "fer2013", "test", D.FER7)
    idx, rows, stats = match_ferplus(fer, root / "ferplus" / "valid")
    _, votes = D.read_ferplus_votes(root / "ferplus" / "valid" / "label.csv")
    fer_label = np.array([D.FER7[k] for k in fer.labels[idx]])
    return fer, idx, fer_label, votes[rows], stats


def crowd_majority_names(votes: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """The FER+ majority class name of each row within `classes`, "" where there is none."""
    keep, y, _ = D.ferplus_targets(votes, classes, "majority")
    plus = np.full(len(votes), "", dtype=object)
    plus[keep] = [classes[k] for k in y]
    return plus


def agreement(cfg: EvalConfig) -> dict:
    """How often FER2013's PublicTest label is the FER+ crowd majority, per class set: over the
    images FER2013 labels within the set (`agreement`), and over those of them that also have
    a FER+ majority within the set (`agreement_where_majority`)."""
    _, _, fer_label, votes, stats = paired_publictest(Path(cfg.datasets))
    out: dict = {"set": "agreement", "protocol": "fer2013/test (PublicTest) paired with FER+ "
                 "valid by pixels; FER+ majority = a class with more than half of all votes",
                 **stats}
    for name in ("paper5", "fer7"):
        cls = D.NAMED_SETS[name]
        base = np.isin(fer_label, cls)
        plus = crowd_majority_names(votes, cls)
        has = base & (plus != "")
        same = base & (plus == fer_label)
        out[name] = {"images": int(base.sum()), "with_majority": int(has.sum()),
                     "agreement": float(same.sum() / base.sum()),
                     "agreement_where_majority": float(same.sum() / has.sum())}
    return out


def by_crowd(predictor: Predictor | Ensemble, classes: tuple[str, ...], root: Path) -> dict:
    """A model's FER2013 PublicTest accuracy (original labels, `classes`) split by what the
    FER+ crowd says of the same photo: its majority agrees with FER2013's label, names another
    class, or there is none (no class holds more than half of the votes). FER+ valid scores
    only the first two groups, FER2013 all three, so the third is where a model can match
    FER2013 without costing FER+ accuracy, and the second is where the two bars conflict."""
    fer, idx, fer_label, votes, stats = paired_publictest(root)
    keep = np.isin(fer_label, classes)
    idx, fer_label, votes = idx[keep], fer_label[keep], votes[keep]
    plus = crowd_majority_names(votes, classes)
    group = np.where(plus == "", "undecided", np.where(plus == fer_label, "agree", "disagree"))
    faces = D.FaceSet(fer.images[idx], np.array([classes.index(c) for c in fer_label]), classes)
    pred = np.array(classes)[model_faces(predictor, faces)]
    out: dict = {"protocol": "fer2013/test (PublicTest) images FER2013 labels within the "
                 "classes, paired with FER+ valid by pixels, grouped by the FER+ majority",
                 **stats, "images": len(idx), "accuracy": float((pred == fer_label).mean())}
    for g in CROWD_GROUPS:
        s = group == g
        out[g] = {"images": int(s.sum()), "share": float(s.mean()),
                  "matches_fer2013": float((pred[s] == fer_label[s]).mean())}
        if g == "disagree":
            out[g]["matches_ferplus"] = float((pred[s] == plus[s]).mean())
    return out


def load_set(name: str, root: Path, classes: tuple[str, ...],
             size: int) -> tuple[D.FaceSet, str]:
    """One labelled row's faces (`size`: the model's input side) and its protocol, in words."""
    if name == "fer2013":
        return (D.load_fer2013(root / "fer2013", "test", classes),
                "FER2013 PublicTest (fer2013/test), FER2013's original labels")
    if name == "ferplus":
        return (D.load_ferplus(root / "ferplus", "valid", classes, "majority"),
                "FER+ valid (= PublicTest), majority: images with one class over half of all "
                "votes, that class in the chosen set")
    if name == "selection":
        return (D.load_selection(root / "ferplus", classes),
                "FER+ train's selection split (training/data.py: in_selection), majority "
                "protocol: for choosing among models trained without it")
    if name == "ckplus":
        return (D.load_ckplus(root / "CK+48", classes),
                "CK+48, every peak frame of the classes the model shares with it (no "
                "neutral), the model alone, never trained on CK+: zero-shot on posed faces of "
                "118 subjects; the arg-max over those classes")
    return (load_photos(root / "webfaces-dev", classes, size),
            "webfaces-dev, each whole photo sent as a client crop (gray, resized), the model "
            "alone; evaluation only")


def groups_of(name: str, faces: D.FaceSet) -> tuple[np.ndarray, str] | None:
    """Whose face each face is, where a set has several of one person's (the bootstrap
    resamples these), and what they are called; None for sets of unrelated faces."""
    if name == "webfaces":
        return (np.array([person_of(p) for p in faces.paths]),
                "people (a photo's file name less `_<n>`), each with all their photos")
    if name == "ckplus" and faces.groups is not None:
        return faces.groups, "subjects, each with all their frames"
    return None


# The folders under --datasets each set reads.
SET_FOLDERS = {"fer2013": ("fer2013",), "ferplus": ("ferplus",),
               "selection": ("ferplus",), "webfaces": ("webfaces-dev",),
               "ckplus": ("CK+48",), "agreement": ("fer2013", "ferplus"),
               "by-crowd": ("fer2013", "ferplus")}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    if cfg.set != "agreement":
        for path in cfg.model.split(","):
            if path.strip():
                need_path(PROGRAM, path.strip(), "--model", "model file")
    need_path(PROGRAM, cfg.datasets, "--datasets", "the data sets folder")
    for folder in SET_FOLDERS[cfg.set]:
        need_path(PROGRAM, Path(cfg.datasets) / folder, "--datasets",
                  f"{cfg.set}'s data set ({folder}/)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(cfg.threads)
    if cfg.set == "agreement":
        result = agreement(cfg)
    else:
        paths = [p.strip() for p in cfg.model.split(",") if p.strip()]
        predictors = [Predictor(p, device="cpu", tta=cfg.tta or None) for p in paths]
        predictor = predictors[0] if len(predictors) == 1 else Ensemble(predictors)
        classes = D.resolve_classes(cfg.classes) if cfg.classes else tuple(predictor.classes)
        lacking = [c for c in classes if c not in predictor.classes]
        if lacking:
            raise SystemExit(f"{cfg.model} has no output for {lacking}: it predicts "
                             f"{predictor.classes}")
        root = Path(cfg.datasets)
        if cfg.set == "ckplus":  # CK+48 has no neutral: score the classes it shares
            have = {D.canonical(p.name) for p in (root / "CK+48").iterdir() if p.is_dir()}
            classes = tuple(c for c in classes if c in have)
        if cfg.set == "by-crowd":
            scored = by_crowd(predictor, classes, root)
        else:
            faces, protocol = load_set(cfg.set, root, classes, predictor.input_size)
            pred = model_faces(predictor, faces)
            scored = {"protocol": protocol, **scores(faces.labels, pred, classes)}
            grouped = groups_of(cfg.set, faces)
            if grouped is not None:
                groups, unit = grouped
                scored["balanced_interval_95"] = group_interval(faces.labels, pred, groups,
                                                                len(classes))
                scored["interval"] = f"{RESAMPLES} bootstrap resamples of the {unit}"
        result = {"set": cfg.set, "model": cfg.model, "classes": list(classes),
                  "tta": predictor.tta, "preprocess": predictor.preprocess,
                  "runtime": predictor.runtime, **scored}
    result["command"] = cfg.command
    text = json.dumps(result, indent=2)
    print(text)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(text + "\n")
    if cfg.record:
        print(f"wrote {record(cfg, result)}")
    return result


# What a datasheet quotes from an evaluation; the rest (confusion, support) goes to details.
RECORD_FIGURES = ("model", "set", "protocol", "classes", "runtime", "tta", "images",
                  "accuracy", "balanced_accuracy", "balanced_interval_95", "recall")


def record(cfg: EvalConfig, result: dict) -> Path:
    """Write the result in the one schema, under the repository's bench/results."""
    from streamfer import results

    figures = {k: result[k] for k in RECORD_FIGURES if k in result}
    if "model" in figures:
        figures["model"] = ",".join(Path(p.strip()).stem for p in str(figures["model"]).split(","))
    details = {k: v for k, v in result.items() if k not in RECORD_FIGURES}
    rec = results.make(cfg.record, figures, details, command=cfg.command or None)
    return results.write(results.ROOT, rec)


if __name__ == "__main__":
    main()
