"""Intervals for balanced accuracy when the faces come in groups: one person's photos
(webfaces-dev), one subject's frames (CK+48). Faces of one group are not independent draws,
so the bootstrap resamples groups, each with all of its faces, never single faces; two
models scored on the same draws give a paired difference, usually much tighter than
the two intervals side by side."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

RESAMPLES = 2000  # bootstrap draws, unless a program says otherwise
_NUMBERED = re.compile(r"_\d+$")


def person_of(path: str | Path) -> str:
    """The person a webfaces-dev photo shows: its file name less the trailing `_<n>`."""
    return _NUMBERED.sub("", Path(path).stem)


def counts_by_person(true: np.ndarray, hit: np.ndarray, person: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """P x k photos and P x k correctly read photos per person (index into `person`'s
    unique values) and class: the sums every recall here is made from."""
    photos = np.zeros((int(person.max()) + 1, k))
    right = np.zeros_like(photos)
    np.add.at(photos, (person, true), 1.0)
    np.add.at(right, (person, true), hit.astype(float))
    return photos, right


def balanced_from(weights: np.ndarray, photos: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Balanced accuracy (mean recall over the classes present) when person p counts
    weights[..., p] times: weights of shape (..., P) give (...)."""
    seen = weights @ photos
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(seen > 0, (weights @ right) / seen, np.nan)
    return np.nanmean(recall, axis=-1)


def bootstrap(true: np.ndarray, hits: list[np.ndarray], person: np.ndarray, k: int,
              resamples: int, seed: int) -> np.ndarray:
    """resamples x models balanced accuracies, people drawn with replacement (each with
    all their photos, in every class they appear in), the same draws for every model."""
    n_people = int(person.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_people, (resamples, n_people))
    weights = np.stack([np.bincount(d, minlength=n_people) for d in draws]).astype(float)
    out = []
    for hit in hits:
        photos, right = counts_by_person(true, hit, person, k)
        out.append(balanced_from(weights, photos, right))
    return np.stack(out, axis=1)


def interval(values: np.ndarray) -> list[float]:
    """The central 95% of `values`."""
    return [round(float(v), 4) for v in np.percentile(values, [2.5, 97.5])]


def group_interval(true: np.ndarray, pred: np.ndarray, groups: np.ndarray, k: int,
                   resamples: int = RESAMPLES, seed: int = 0) -> list[float]:
    """The 95% interval of one model's balanced accuracy, its `groups` (any labels: names
    or ids, one per face) resampled."""
    _, index = np.unique(groups, return_inverse=True)
    return interval(bootstrap(true, [pred == true], index, k, resamples, seed)[:, 0])
