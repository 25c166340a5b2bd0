"""Loading labelled faces: FER2013 (folders or Kaggle CSV), CK+48, any class-folder tree.

Every loader returns a FaceSet: uint8 images N x S x S, integer labels into a tuple of
canonical class names, and (for CK+48) subject ids so folds can group by subject.
Folder names differ between data sets (angry/anger, happy, sad/sadness); the one mapping
to canonical names is CANONICAL below.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamfer.faces import BadImage, load_gray

CANONICAL: dict[str, str] = {
    "angry": "anger", "anger": "anger",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear",
    "happy": "happiness", "happiness": "happiness",
    "sad": "sadness", "sadness": "sadness",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral",
    "contempt": "contempt",
}
PAPER5 = ("anger", "happiness", "sadness", "surprise", "neutral")
FER7 = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
CKPLUS7 = ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise")
# --classes: these names, or a comma list of class names.
NAMED_SETS: dict[str, tuple[str, ...]] = {"paper5": PAPER5, "fer7": FER7, "ck7": CKPLUS7}
# --data: the layouts training.fit and training.baseline load (training.fit.load dispatches).
DATA_KINDS = ("fer2013", "fer2013-csv", "ckplus", "folder")
# --fold-mode: grouped keeps each subject's images in one fold; stratified folds are random.
FOLD_MODES = ("grouped", "stratified")
# Kaggle fer2013.csv 'emotion' column: 0=Angry 1=Disgust 2=Fear 3=Happy 4=Sad 5=Surprise 6=Neutral
KAGGLE_ORDER = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_SUBJECT = re.compile(r"^(S\d+)_")


@dataclass
class FaceSet:
    """Images, labels and optional group ids (subjects) of one data split."""

    images: np.ndarray  # N x S x S uint8
    labels: np.ndarray  # N int64, index into classes
    classes: tuple[str, ...]
    groups: np.ndarray | None = None  # N subject ids (str), where known
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> FaceSet:
        return FaceSet(self.images[index], self.labels[index], self.classes,
                       None if self.groups is None else self.groups[index],
                       [self.paths[i] for i in index] if self.paths else [])

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def canonical(name: str) -> str:
    """Canonical class name for a folder/column name; unknown names raise with the choices."""
    key = name.strip().lower()
    if key not in CANONICAL:
        raise ValueError(f"unknown expression class {name!r}; known: {sorted(set(CANONICAL))}")
    return CANONICAL[key]


def resolve_classes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'paper5' (default: the paper's five), 'fer7', 'ck7', or an explicit comma list."""
    if isinstance(spec, str):
        if spec in NAMED_SETS:
            return NAMED_SETS[spec]
        spec = [s for s in spec.split(",") if s.strip()]
    out = tuple(canonical(s) for s in spec)
    if len(set(out)) != len(out) or not out:
        raise ValueError(f"class list must be non-empty and without repeats: {spec!r}")
    return out


def classes_problem(spec: str) -> str | None:
    """Why a --classes value cannot be used (None when it can): for the command line, so a
    typo stops before any data is read."""
    try:
        resolve_classes(spec)
    except ValueError as e:
        return f"--classes {spec!r}: {e}; or a named set: {', '.join(NAMED_SETS)}"
    return None


def _check(img: np.ndarray, path: Path, size: int | None) -> np.ndarray:
    if size is not None and img.shape != (size, size):
        raise BadImage(f"{path}: expected a {size}x{size} image, got {img.shape[1]}x{img.shape[0]}")
    return img


def load_folder(root: str | Path, classes: Sequence[str] | str = PAPER5,
                size: int | None = 48) -> FaceSet:
    """root/<class folder>/*.jpg|png; folders not in `classes` are skipped, missing ones error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root}")
    wanted = resolve_classes(classes)
    folders = {canonical(p.name): p for p in sorted(root.iterdir())
               if p.is_dir() and p.name.lower() in CANONICAL}
    missing = [c for c in wanted if c not in folders]
    if missing:
        raise FileNotFoundError(f"{root}: no folder for class(es) {missing}")
    images, labels, paths = [], [], []
    for label, cls in enumerate(wanted):
        for path in sorted(folders[cls].iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_check(load_gray(path), path, size))
                labels.append(label)
                paths.append(str(path))
    if not images:
        raise FileNotFoundError(f"{root}: no images found")
    if size is None and len({im.shape for im in images}) > 1:
        raise BadImage(f"{root}: images differ in size; pass size= to require one")
    groups = [_SUBJECT.match(Path(p).name) for p in paths]
    subjects = np.array([m.group(1) for m in groups]) if all(groups) else None
    return FaceSet(np.stack(images), np.array(labels, np.int64), wanted, subjects, paths)


def load_fer2013(root: str | Path, split: str = "train",
                 classes: Sequence[str] | str = PAPER5) -> FaceSet:
    """FER2013 in the Kaggle folder layout: root/train (Training), root/test (PublicTest)."""
    if split not in ("train", "test"):
        raise ValueError("FER2013 folder split is 'train' (Training) or 'test' (PublicTest)")
    return load_folder(Path(root) / split, classes, size=48)


def load_ckplus(root: str | Path, classes: Sequence[str] | str = ("anger", "happiness",
                "sadness", "surprise")) -> FaceSet:
    """CK+48 peak frames; groups are subject ids (S###) so folds never split a subject."""
    faces = load_folder(root, classes, size=48)
    if faces.groups is None:
        raise ValueError(f"{root}: CK+48 file names must start with the subject id (S###_)")
    return faces


def load_fer2013_csv(path: str | Path, usage: str = "Training",
                     classes: Sequence[str] | str = PAPER5) -> FaceSet:
    """Kaggle's original fer2013.csv (emotion, pixels, Usage); usage Training/PublicTest/..."""
    wanted = resolve_classes(classes)
    index = {c: i for i, c in enumerate(wanted)}
    images, labels = [], []
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"emotion", "pixels"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns emotion, pixels[, Usage]")
        for line, row in enumerate(reader, start=2):
            if row.get("Usage", usage) != usage:
                continue
            cls = KAGGLE_ORDER[int(row["emotion"])]
            if cls not in index:
                continue
            pixels = np.array(row["pixels"].split(), dtype=np.int64)
            if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
                raise BadImage(f"{path}:{line}: expected 2304 pixel values in 0..255")
            images.append(pixels.astype(np.uint8).reshape(48, 48))
            labels.append(index[cls])
    if not images:
        raise ValueError(f"{path}: no rows with Usage={usage!r} in classes {wanted}")
    return FaceSet(np.stack(images), np.array(labels, np.int64), wanted)
