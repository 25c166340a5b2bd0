"""Loading labelled faces: FER2013 (folders or Kaggle CSV), FER+ crowd votes, CK+48, any
class-folder tree.

Every loader returns a FaceSet: uint8 images N x S x S, integer labels into a tuple of
canonical class names, (for CK+48) subject ids so folds can group by subject, and (for FER+)
soft labels: each image's vote distribution over the chosen classes.
Folder names differ between data sets (angry/anger, happy, sad/sadness); the one mapping
to canonical names is CANONICAL below.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamfer.faces import BadImage, equalize_faces, load_gray

log = logging.getLogger("training.data")

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
# FER+'s eight emotions, in label.csv's column order (unknown and NF, not-a-face, follow them).
FERPLUS8 = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
            "contempt")
FERPLUS_COLUMNS = (*FERPLUS8, "unknown", "not-a-face")
# --classes: these names, or a comma list of class names.
NAMED_SETS: dict[str, tuple[str, ...]] = {"paper5": PAPER5, "fer7": FER7, "ck7": CKPLUS7,
                                          "fer8": FERPLUS8}
# --data: the layouts training.fit and training.baseline load (training.fit.load dispatches).
DATA_KINDS = ("fer2013", "fer2013-csv", "ferplus", "ckplus", "folder")
# --labels for FER+: 'majority' keeps images where one chosen class has more than half of all
# votes (the usual FER+ test protocol); 'soft' trains on the vote distribution over the chosen
# classes (unknown and not-a-face dropped), keeping images where those classes hold more than
# half of the votes (FER+'s 'probability' protocol, restricted to the chosen classes).
LABEL_MODES = ("soft", "majority")
# which FER+ training faces FER2013's own label adds votes to (load_ferplus, fer2013_weight):
# every paired face, or only those whose crowd gives no class more than half of its votes
FER2013_VOTES_ON = ("all", "undecided")
# --fold-mode: grouped keeps each subject's images in one fold; stratified folds are random.
FOLD_MODES = ("grouped", "stratified")
# Kaggle fer2013.csv 'emotion' column: 0=Angry 1=Disgust 2=Fear 3=Happy 4=Sad 5=Surprise 6=Neutral
KAGGLE_ORDER = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# The SELECTION split of FER+ train: the faces whose sha256(file name + salt) is 0 modulo
# SELECTION_MODULUS (about a tenth), set aside once for every choice made after training
# (tau, a logit bias, an epoch), so FER+ valid is only ever reported, never selected on.
SELECTION_SALT = "streamfer-selection-1"
SELECTION_MODULUS = 10
# training.fit --val-on: where the best epoch is chosen (FER+ valid, or the selection split)
VAL_ON = ("valid", "selection")
_SUBJECT = re.compile(r"^(S\d+)_")


@dataclass
class FaceSet:
    """Images, labels and optional group ids (subjects) of one data split."""

    images: np.ndarray  # N x S x S uint8
    labels: np.ndarray  # N int64, index into classes
    classes: tuple[str, ...]
    groups: np.ndarray | None = None  # N subject ids (str), where known
    paths: list[str] = field(default_factory=list)
    soft: np.ndarray | None = None  # N x C float32 label distributions (rows sum to 1)
    taught: np.ndarray | None = None  # N x C float32 teachers' answers (training.pack)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> FaceSet:
        return FaceSet(self.images[index], self.labels[index], self.classes,
                       None if self.groups is None else self.groups[index],
                       [self.paths[i] for i in index] if self.paths else [],
                       None if self.soft is None else self.soft[index],
                       None if self.taught is None else self.taught[index])

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
    files = [(label, path) for label, cls in enumerate(wanted)
             for path in sorted(folders[cls].iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    images, labels, paths = [], [], []
    for label, path in tqdm(files, desc=f"load {root}", unit="image", leave=False,
                            mininterval=1):
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


def read_ferplus_votes(path: str | Path) -> tuple[list[str], np.ndarray]:
    """FER+'s label.csv: (file names, N x 10 vote counts in FERPLUS_COLUMNS order)."""
    names, votes = [], []
    with Path(path).open(newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 2 + len(FERPLUS_COLUMNS):
                raise ValueError(f"{path}:{line}: expected file name, face box and "
                                 f"{len(FERPLUS_COLUMNS)} vote counts, got {len(row)} fields")
            try:
                counts = [int(v) for v in row[2:]]
            except ValueError:
                raise ValueError(f"{path}:{line}: vote counts must be integers") from None
            if min(counts) < 0 or sum(counts) == 0:
                raise ValueError(f"{path}:{line}: vote counts must be >= 0 and not all 0")
            names.append(row[0])
            votes.append(counts)
    if not names:
        raise ValueError(f"{path}: no rows")
    return names, np.array(votes, np.int64)


def ferplus_targets(votes: np.ndarray, classes: Sequence[str] | str = PAPER5,
                    labels: str = "majority") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept row indices, integer labels, soft labels) from N x 10 FER+ vote counts.

    A class's share is its votes over all of the image's votes (unknown and not-a-face count
    in the total). 'majority': keep rows whose top chosen class has more than half of all
    votes; its soft label is one-hot. 'soft': keep rows whose chosen classes hold more than
    half of all votes together; the soft label is their votes renormalised, the integer label
    its arg-max (ties go to the first of `classes`).
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, not {labels!r}")
    wanted = resolve_classes(classes)
    missing = [c for c in wanted if c not in FERPLUS8]
    if missing:
        raise ValueError(f"FER+ has no votes for {missing}; its classes are {FERPLUS8}")
    cols = [FERPLUS8.index(c) for c in wanted]
    chosen = votes[:, cols].astype(np.float64)
    total = votes.sum(1).astype(np.float64)
    if labels == "majority":
        keep = np.flatnonzero(crowd_majority(votes, wanted))
        y = chosen[keep].argmax(1)
        soft = np.eye(len(wanted), dtype=np.float32)[y]
    else:
        keep = np.flatnonzero(chosen.sum(1) * 2 > total)
        soft = (chosen[keep] / chosen[keep].sum(1, keepdims=True)).astype(np.float32)
        y = soft.argmax(1)
    return keep, y.astype(np.int64), soft


def crowd_majority(votes: np.ndarray, classes: Sequence[str] | str = PAPER5) -> np.ndarray:
    """Per row of N x 10 FER+ vote counts: does one of `classes` hold more than half of all
    the votes (unknown and not-a-face count in the total)? The majority protocol's test."""
    cols = [FERPLUS8.index(c) for c in resolve_classes(classes)]
    return votes[:, cols].max(1) * 2 > votes.sum(1)


def in_selection(name: str) -> bool:
    """Is this FER+ train file name (e.g. "fer0000001.png") in the selection split? A pure
    function of the name: the same answer in any order, on any machine."""
    digest = hashlib.sha256((Path(name).name + SELECTION_SALT).encode()).digest()
    return int.from_bytes(digest[:8], "big") % SELECTION_MODULUS == 0


def selection_mask(names: Sequence[str]) -> np.ndarray:
    """`in_selection` for each of `names`, as a boolean array."""
    return np.array([in_selection(n) for n in names], bool)


def split_selection(faces: FaceSet) -> tuple[FaceSet, FaceSet]:
    """A FER+ train FaceSet (with paths) as (the rest, the selection split)."""
    if not faces.paths:
        raise ValueError("the selection split is defined by file name: the faces need paths")
    mask = selection_mask(faces.paths)
    return faces.subset(np.flatnonzero(~mask)), faces.subset(np.flatnonzero(mask))


def load_selection(root: str | Path, classes: Sequence[str] | str = PAPER5) -> FaceSet:
    """The selection split of FER+ train under the majority protocol, as FER+ valid is
    scored: the faces choices are made on."""
    return split_selection(load_ferplus(root, "train", classes, "majority"))[1]


def pair_by_pixels(a: np.ndarray, b: np.ndarray, threshold: float = 0.95,
                   block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair each face of `a` with the face of `b` it correlates with best (Pearson, over
    pixels), for two copies of one image set stored under different names and encodings.
    Pairs below `threshold` are dropped (a true twin correlates at about 0.998; FER2013 holds a
    few near-duplicates, which may pair with either copy). Blockwise, so memory stays at
    `block` x len(b) floats. Returns (a indices, b indices, their correlations)."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1).astype(np.float32)
        x = x - x.mean(1, keepdims=True)
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)

    ub = unit(b).T
    best, top = [], []
    for i in range(0, len(a), block):
        corr = unit(a[i:i + block]) @ ub
        best.append(corr.argmax(1))
        top.append(corr.max(1))
    best_all, top_all = np.concatenate(best), np.concatenate(top)
    ok = np.flatnonzero(top_all >= threshold)
    return ok, best_all[ok], top_all[ok]


def pair_with_ferplus(fer: FaceSet, plus_folder: str | Path,
                      names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pair fer2013/ images with their FER+ twins (`names` in `plus_folder`) by pixels.

    fer2013/ and ferplus/ hold the same faces under other names, fer2013/'s histogram-equalised
    as JPEGs: FER+'s raw PNGs are equalised and paired by `pair_by_pixels`. Returns (fer
    index, FER+ row index into `names`, the pairing's figures)."""
    plus = equalize_faces(np.stack([load_gray(Path(plus_folder) / n) for n in names]))
    idx, rows, corr = pair_by_pixels(fer.images, plus)
    return idx, rows, {"fer2013_images": len(fer), "matched": len(idx),
                       "correlation_median": float(np.median(corr)) if len(corr) else 0.0}


def fer2013_votes(fer_root: str | Path, split: str, names: Sequence[str],
                  plus_folder: str | Path) -> tuple[np.ndarray, dict]:
    """FER2013's own label on each FER+ image, as a one-hot row in FERPLUS_COLUMNS order
    (all zeros where no fer2013/ image pairs with it; where near-duplicates pair two fer2013/
    images with one FER+ image, one of their labels), and the pairing's figures."""
    fer = load_fer2013(fer_root, split, FER7)
    idx, rows, stats = pair_with_ferplus(fer, plus_folder, names)
    onehot = np.zeros((len(names), len(FERPLUS_COLUMNS)), np.int64)
    onehot[rows, [FERPLUS_COLUMNS.index(FER7[k]) for k in fer.labels[idx]]] = 1
    return onehot, {**stats, "ferplus_labelled": int(onehot.sum())}


def load_ferplus(root: str | Path, split: str = "train", classes: Sequence[str] | str = PAPER5,
                 labels: str = "majority", fer2013_weight: int = 0,
                 fer2013_on: str = "all") -> FaceSet:
    """FER+ (root/train, root/valid: FER2013's raw pixels as PNG + label.csv of ten votes).

    `labels`: see LABEL_MODES; images the protocol leaves out are not loaded. The images are
    FER2013's original pixels, not histogram-equalised like the fer2013/ folder's.
    `fer2013_weight` N > 0 counts FER2013's original label on each face as N more votes beside
    the crowd's ten (`fer2013_votes`, from the fer2013/ folder beside `root`): the two
    label sets disagree on about a third of the faces, and this lets a network learn where.
    `fer2013_on` (FER2013_VOTES_ON): add them to every paired face, or only where the crowd
    is undecided (no class of `classes` holds more than half of its votes): there FER2013's
    label breaks the tie, and faces the crowd agrees on keep the crowd's distribution.
    """
    if fer2013_on not in FER2013_VOTES_ON:
        raise ValueError(f"fer2013_on must be one of {FER2013_VOTES_ON}, not {fer2013_on!r}")
    if split not in ("train", "valid"):
        raise ValueError("FER+ split is 'train' (FER2013 Training) or 'valid' (PublicTest)")
    folder = Path(root) / split
    if not (folder / "label.csv").is_file():
        raise FileNotFoundError(f"no FER+ label.csv in {folder}")
    names, votes = read_ferplus_votes(folder / "label.csv")
    if fer2013_weight:
        extra, stats = fer2013_votes(Path(root).parent / "fer2013",
                                     "train" if split == "train" else "test", names, folder)
        if fer2013_on == "undecided":
            extra[crowd_majority(votes, classes)] = 0
        log.info("FER2013 labels as %d votes on %s faces: %s, %d faces get them",
                 fer2013_weight, fer2013_on, stats, int(extra.any(1).sum()))
        votes = votes + fer2013_weight * extra
    keep, y, soft = ferplus_targets(votes, classes, labels)
    if not len(keep):
        raise ValueError(f"{folder}: no image passes the {labels!r} protocol for {classes}")
    paths = [folder / names[i] for i in keep]
    images = np.stack([_check(load_gray(p), p, 48) for p in paths])
    return FaceSet(images, y, resolve_classes(classes), None, [str(p) for p in paths], soft)
