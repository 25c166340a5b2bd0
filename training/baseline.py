"""The paper's baseline: uniform LBP histograms over a grid of cells into an SVM.

    python -m training.baseline --data ckplus --data-root ../shared/datasets/CK+48 \\
        --classes anger,happiness,sadness,surprise --folds 10 --fold-mode grouped \\
        --out runs/baseline-ck4-grouped
    python -m training.baseline --data fer2013 --data-root ../shared/datasets/fer2013 \\
        --classes paper5 --out runs/baseline-fer5        # Training -> PublicTest

Song et al. 2014 (Table I) compare their CNN with LBP+SVM. This runs that baseline on exactly
the CNN's evaluation splits: the k folds come from `training.fit.folds_of` with the same seed
and fold mode, and FER2013 trains on Training and reports on PublicTest, as `training.fit`
does. The SVM's C is chosen on an inner split of each training part only (grouped by subject
where subjects are known), never on the test fold, then the SVM is refit on the whole
training part with that C.

Feature: scikit-image's 'uniform' LBP (rotation-invariant uniform patterns, Ojala's riu2:
P + 2 codes for P neighbours at radius R) histogrammed over a cells x cells grid, each cell's
histogram L1-normalised and (by default) square-rooted, so a linear SVM on it is an SVM with
the Hellinger kernel. Length: cells * cells * bins * len(radii), see `feature_length`; --lbp
nri_uniform gives the classic 59-bin (P = 8) uniform-pattern histograms.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streamfer.paths import DEFAULT_DATASETS
from training import data as D
from training.cli import opt, parse_config
from training.report import save_confusion

log = logging.getLogger("training.baseline")

KERNELS = ("linear", "chi2", "rbf")
LBP_METHODS = ("uniform", "nri_uniform")


@dataclass
class BaselineConfig:
    data: str = opt("fer2013", "data set layout, as training.fit's --data", D.DATA_KINDS)
    data_root: str = opt(str(DEFAULT_DATASETS / "fer2013"), "the data set's folder (or the .csv)")
    val_root: str = opt("", "--data folder without --folds: the tree to report on")
    classes: str = opt("paper5", "paper5 (the paper's five), fer7, ck7, or a comma list")
    size: int = opt(48, "image side the loaders require")
    points: int = opt(8, "LBP neighbours P")
    lbp: str = opt("uniform", "LBP codes: 'uniform' (rotation-invariant, P + 2 bins) or "
                   "'nri_uniform' (the classic uniform patterns, P(P-1) + 3 bins: 59 for P=8)",
                   LBP_METHODS)
    radii: str = opt("1,2", "LBP radii, a comma list (their histograms concatenated)")
    cells: int = opt(7, "a grid of cells x cells histograms")
    norm: str = opt("sqrt", "per cell: L1 then square root (a linear SVM on it is a Hellinger "
                    "kernel), L1 only, or raw counts", ("sqrt", "l1", "none"))
    kernel: str = opt("linear", "linear (LinearSVC), exact chi-squared SVC, or RBF SVC", KERNELS)
    c_grid: str = opt("0.001,0.01,0.1,1,10,100", "C values tried on the inner validation split")
    inner_folds: int = opt(3, "split each training part into this many inner folds to pick C")
    inner_splits: int = opt(-1, "inner folds to score: -1 auto (all with --folds, else 1)")
    folds: int = opt(0, "k-fold cross-validation when > 1 (the same folds as training.fit)")
    fold_mode: str = opt("grouped", "grouped: a subject's images in one fold (CK+48); "
                         "stratified: random folds, which leak subjects", D.FOLD_MODES)
    seed: int = opt(0, "seeds the folds and the SVM (the same folds as training.fit's seed)")
    limit: int = opt(0, "use only this many training images (smoke runs; 0: all)")
    out: str = opt("runs/baseline", "run folder: metrics.json and the confusion matrix PNG")
    command: str = field(default="", repr=False)

    def radii_list(self) -> list[float]:
        return [float(r) for r in self.radii.split(",") if r.strip()]

    def c_values(self) -> list[float]:
        return [float(c) for c in self.c_grid.split(",") if c.strip()]


def parse_args(argv: list[str] | None = None) -> BaselineConfig:
    def check(cfg: BaselineConfig) -> str | None:
        if not cfg.radii_list() or not cfg.c_values():
            return "--radii and --c-grid need at least one value"
        return D.classes_problem(cfg.classes)

    return parse_config(BaselineConfig, argv, program="training.baseline", doc=__doc__,
                        check=check)


# ---------------------------------------------------------------- features


def lbp_bins(points: int, method: str = "uniform") -> int:
    """Histogram bins of one cell: P + 2 ('uniform', riu2), P(P-1) + 3 ('nri_uniform', u2)."""
    if method not in LBP_METHODS:
        raise ValueError(f"LBP method must be one of {LBP_METHODS}, not {method!r}")
    return points + 2 if method == "uniform" else points * (points - 1) + 3


def feature_length(points: int = 8, radii: Sequence[float] = (1.0,), cells: int = 6,
                   method: str = "uniform") -> int:
    """Length of one LBP feature vector: one histogram per cell and radius."""
    return cells * cells * lbp_bins(points, method) * len(radii)


def _cell_index(side: int, cells: int) -> np.ndarray:
    """Cell number of every pixel of a side x side image (near-equal cells when not divisible)."""
    edges = np.linspace(0, side, cells + 1).round().astype(int)
    band = np.searchsorted(edges, np.arange(side), side="right") - 1
    return (band[:, None] * cells + band[None, :]).ravel()


def lbp_features(images: np.ndarray, points: int = 8, radii: Sequence[float] = (1.0,),
                 cells: int = 6, norm: str = "sqrt", progress: bool = True,
                 method: str = "uniform") -> np.ndarray:
    """N x S x S uint8 faces -> N x feature_length float32 grid-of-cells LBP histograms."""
    from skimage.feature import local_binary_pattern

    n, side = len(images), images.shape[1]
    bins = lbp_bins(points, method)
    cell = _cell_index(side, cells)
    out = np.empty((n, feature_length(points, radii, cells, method)), np.float32)
    per_radius = cells * cells * bins
    for i in tqdm(range(n), desc="LBP features", disable=not progress, mininterval=2):
        for j, r in enumerate(radii):
            codes = local_binary_pattern(images[i], points, r, method=method).astype(np.int64)
            hist = np.bincount(cell * bins + codes.ravel(), minlength=per_radius)
            out[i, j * per_radius:(j + 1) * per_radius] = hist
    if norm != "none":
        blocks = out.reshape(n, -1, bins)
        blocks /= np.maximum(blocks.sum(-1, keepdims=True), 1.0)
        if norm == "sqrt":
            np.sqrt(blocks, out=blocks)
    return out


# ---------------------------------------------------------------- classifier


def make_svm(kernel: str, c: float, x_train: np.ndarray, seed: int) -> Any:
    """An unfitted SVM; the chi-squared kernel's gamma is 1 / mean chi2 distance of the data."""
    from sklearn.svm import SVC, LinearSVC

    if kernel == "linear":
        return LinearSVC(C=c, dual="auto", max_iter=20000, random_state=seed)
    if kernel == "rbf":
        return SVC(C=c, kernel="rbf", gamma="scale", cache_size=1000)
    if kernel == "chi2":
        from sklearn.metrics.pairwise import additive_chi2_kernel, chi2_kernel

        sample = x_train[np.random.default_rng(seed).permutation(len(x_train))[:500]]
        mean_dist = float(-additive_chi2_kernel(sample).mean())  # sum (x-y)^2 / (x+y)
        return SVC(C=c, kernel=functools.partial(chi2_kernel, gamma=1.0 / max(mean_dist, 1e-9)),
                   cache_size=1000)
    raise ValueError(f"unknown kernel {kernel!r}")


def inner_splits(labels: np.ndarray, groups: np.ndarray | None, k: int, seed: int,
                 use: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`use` (train, val) pairs of a k-fold split of a training part, by subject where known."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    dummy = np.zeros(len(labels))
    if groups is not None:
        splits = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(dummy, labels,
                                                                                groups)
    else:
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(dummy, labels)
    return list(splits)[:use]


def choose_c(cfg: BaselineConfig, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
             use: int) -> tuple[float, dict[str, float]]:
    """C with the best mean accuracy on inner validation folds of this training part only."""
    splits = inner_splits(y, groups, cfg.inner_folds, cfg.seed, use)
    scores: dict[str, float] = {}
    for c in cfg.c_values():
        accs = []
        for tr, va in splits:
            svm = make_svm(cfg.kernel, c, x[tr], cfg.seed).fit(x[tr], y[tr])
            accs.append(float((svm.predict(x[va]) == y[va]).mean()))
        scores[f"{c:g}"] = float(np.mean(accs))
        log.info("  C=%g: inner validation accuracy %.4f", c, scores[f"{c:g}"])
    best = max(cfg.c_values(), key=lambda c: scores[f"{c:g}"])  # first of ties: smallest C
    return best, scores


def fit_predict(cfg: BaselineConfig, x_tr: np.ndarray, y_tr: np.ndarray,
                g_tr: np.ndarray | None, x_te: np.ndarray, use: int) -> tuple[np.ndarray, dict]:
    """Pick C on the training part, refit on all of it, predict the test part."""
    if len(cfg.c_values()) > 1:
        c, scores = choose_c(cfg, x_tr, y_tr, g_tr, use)
    else:
        c, scores = cfg.c_values()[0], {}
    svm = make_svm(cfg.kernel, c, x_tr, cfg.seed).fit(x_tr, y_tr)
    return svm.predict(x_te), {"C": c, "inner_val_accuracy": scores}


# ---------------------------------------------------------------- program


def load(cfg: BaselineConfig) -> tuple[D.FaceSet, D.FaceSet | None]:
    """(train, test) exactly as training.fit loads them; test is None where folds supply it."""
    from training.fit import FitConfig
    from training.fit import load as fit_load

    return fit_load(FitConfig(data=cfg.data, data_root=cfg.data_root, val_root=cfg.val_root,
                              classes=cfg.classes, size=cfg.size))


def features(cfg: BaselineConfig, faces: D.FaceSet) -> np.ndarray:
    return lbp_features(faces.images, cfg.points, cfg.radii_list(), cfg.cells, cfg.norm,
                        method=cfg.lbp)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train, test = load(cfg)
    if cfg.limit:
        keep = np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.limit]
        train = train.subset(np.sort(keep))
    radii = cfg.radii_list()
    log.info("train %d images %s; test %s; LBP P=%d R=%s %dx%d cells (%d dims), %s SVM",
             len(train), train.counts(), len(test) if test is not None else "folds",
             cfg.points, radii, cfg.cells, cfg.cells,
             feature_length(cfg.points, radii, cfg.cells, cfg.lbp), cfg.kernel)
    x = features(cfg, train)
    feature = (f"{cfg.lbp} LBP P={cfg.points} R={','.join(f'{r:g}' for r in radii)}, "
               f"{cfg.cells}x{cfg.cells} cells, {cfg.norm} histograms, {x.shape[1]} dims")
    metrics: dict = {"config": asdict(cfg), "classes": list(train.classes), "feature": feature,
                     "images": len(train)}
    title = f"LBP+SVM ({cfg.kernel})"
    if cfg.folds > 1:
        from training.fit import folds_of

        splits, protocol = folds_of(cfg, train)  # type: ignore[arg-type]  # duck-typed config
        use = cfg.inner_folds if cfg.inner_splits < 0 else cfg.inner_splits
        accs, chosen, pooled_true, pooled_pred = [], [], [], []
        for k, (tr, te) in enumerate(splits):
            g_tr = None if train.groups is None or cfg.fold_mode != "grouped" \
                else train.groups[tr]
            pred, info = fit_predict(cfg, x[tr], train.labels[tr], g_tr, x[te], use)
            accs.append(float((pred == train.labels[te]).mean()))
            chosen.append(info)
            pooled_true += train.labels[te].tolist()
            pooled_pred += pred.tolist()
            log.info("fold %d/%d: %d test images, C=%g, accuracy %.4f", k + 1, cfg.folds,
                     len(te), info["C"], accs[-1])
        protocol += "; C chosen on inner validation folds of each training part"
        metrics.update(protocol=protocol, fold_accuracy=accs, accuracy=float(np.mean(accs)),
                       accuracy_std=float(np.std(accs)),
                       pooled_accuracy=float(np.mean(np.array(pooled_true) ==
                                                     np.array(pooled_pred))),
                       chosen_C=[i["C"] for i in chosen],
                       inner_val_accuracy=[i["inner_val_accuracy"] for i in chosen])
        save_confusion(pooled_true, pooled_pred, train.classes, out / "confusion.png",
                       f"{title}, {protocol.split(';')[0]}")
    else:
        if test is None:
            raise SystemExit("no test data: give --folds > 1, or --val-root for --data folder")
        use = 1 if cfg.inner_splits < 0 else cfg.inner_splits
        g_tr = train.groups if cfg.fold_mode == "grouped" else None
        pred, info = fit_predict(cfg, x, train.labels, g_tr, features(cfg, test), use)
        acc = float((pred == test.labels).mean())
        protocol = (f"train on the training split ({cfg.data}), report on the test split; "
                    f"C chosen on {use} of {cfg.inner_folds} inner folds of the training split")
        metrics.update(protocol=protocol, accuracy=acc, test_images=len(test),
                       chosen_C=info["C"], inner_val_accuracy=info["inner_val_accuracy"])
        log.info("test accuracy %.4f on %d images (C=%g)", acc, len(test), info["C"])
        save_confusion(test.labels.tolist(), pred.tolist(), train.classes,
                       out / "confusion.png", f"{title} on the test split")
    metrics["seconds"] = time.time() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("accuracy %.4f (%s), %.0f s", metrics["accuracy"], protocol, metrics["seconds"])
    return metrics


if __name__ == "__main__":
    main()
