"""Distillation targets: what an ensemble of exported models says about each training face.

An ensemble of several networks generalises better than any one of them, but it costs each
member's CPU per face and each member's megabytes in the shipped file. Distillation (Hinton et
al. 2015; "born-again" networks, Furlanello et al. 2018) keeps one network of the served size
and trains it toward the ensemble's answers instead of, or beside, the crowd's votes.

Each teacher runs through `streamfer.model.Predictor`, exactly as the server would run it: its
own preprocessing from its metadata (raw-pixel and equalised teachers mix freely), its default
test-time views, on the clean training face. A teacher's classes are matched to the student's
by name (an 8-class FER+ model teaches a 5-class student through its five columns, renormalised);
a teacher lacking a class is refused. The members are combined as the normalised geometric mean
of their probabilities (the mean of log-probabilities, softmaxed), the usual ensemble rule for
networks trained with cross-entropy. No logit adjustment is applied: a teacher file must be an
unadjusted export (`training.calibrate` adjusts the student afterwards); `training.export
--unadjusted` gives an adjusted file's source.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from streamfer.model import Predictor

log = logging.getLogger("training.distill")


def parse_teachers(spec: str) -> list[Path]:
    """The comma list of --teacher as paths; every one must exist."""
    paths = [Path(p.strip()) for p in spec.split(",") if p.strip()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--teacher: no such model file: {', '.join(missing)}")
    return paths


def teacher_probs(path: Path, images: np.ndarray, classes: tuple[str, ...],
                  batch: int = 256) -> np.ndarray:
    """One teacher's probabilities over `classes` for N x S x S uint8 faces, as served."""
    predictor = Predictor(path, device="cpu", runtime="torchscript")
    if predictor.metadata.logit_adjust:
        raise ValueError(f"--teacher {path} is logit-adjusted; give its unadjusted source "
                         f"(python -m training.export {path} --unadjusted --out SOURCE.pt)")
    lacking = [c for c in classes if c not in predictor.classes]
    if lacking:
        raise ValueError(f"--teacher {path} has no output for {lacking}: it predicts "
                         f"{predictor.classes}")
    return np.concatenate([answers_over(predictor, images[i:i + batch], classes)
                           for i in range(0, len(images), batch)])


def answers_over(predictor: Predictor, faces: np.ndarray,
                 classes: tuple[str, ...] | list[str]) -> np.ndarray:
    """A served model's probabilities for `faces` on `classes` only (by name), renormalised."""
    out = predictor.forward(faces)[:, [predictor.classes.index(c) for c in classes]]
    return out / out.sum(1, keepdims=True)


def geometric_mean(probs: list[np.ndarray]) -> np.ndarray:
    """The ensemble rule: members' N x C probabilities -> their normalised geometric mean."""
    mean = np.mean([np.log(np.clip(p, 1e-7, 1.0)) for p in probs], 0)
    out = np.exp(mean - mean.max(1, keepdims=True))
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def ensemble_targets(paths: list[Path], images: np.ndarray, classes: tuple[str, ...],
                     cache: Path | None = None) -> np.ndarray:
    """N x C targets: the teachers' normalised geometric-mean probabilities.

    With `cache` (a folder), each teacher's answers are stored there under a key of the
    teacher file's, the images' and the classes' bytes, so a resumed run, or another student
    of the same teachers, does not run them again (about a minute per teacher on a CPU core)."""
    answers = []
    for path in paths:
        key = hashlib.sha256(path.read_bytes())
        key.update(images.tobytes())
        key.update(",".join(classes).encode())
        stored = None if cache is None else cache / f"teacher-{key.hexdigest()[:20]}.npy"
        if stored is not None and stored.is_file():
            probs = np.load(stored)
            log.info("teacher %s: answers from %s", path, stored)
        else:
            probs = teacher_probs(path, images, classes)
            log.info("teacher %s: %d faces", path, len(probs))
            if stored is not None:  # atomically: another run may share the folder
                stored.parent.mkdir(parents=True, exist_ok=True)
                partial = stored.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(partial, probs)
                partial.replace(stored)
        answers.append(probs)
    return geometric_mean(answers)
