"""Per-class analysis of a served model: where each class goes, a per-class logit bias
chosen on the FER+ selection split, and evidence averaged over frames.

    python -m training.perclass --model models/ferplus-5class.pt

Every face runs as the server runs it (`streamfer.model.Predictor`: on the CPU the model's
int8 derivative, its default test-time views). Writes, under --results/<machine>/:
`perclass_<model>_confusion` (recall and confusion matrix per set: webfaces-dev model alone,
FER+ valid majority, CK+48 all peak frames by subject), `perclass_<model>_logit_bias`
(the bias chosen on the FER+ train selection split, `training.data.in_selection`, and an
ablation with and without it on FER+ valid and webfaces-dev), `perclass_<model>_frames`
(single frame vs a window of frames: CK+48 sequences, synthetic drift and zoom of
webfaces-dev photos), and figures of each under --figures. The bias is applied to the log of
the served probabilities. webfaces-dev is only reported, never chosen on.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamfer import results
from streamfer.faces import decode_gray, square_at
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from streamfer.smooth import SMOOTH_MS, smooth_series
from training import data as D
from training.cli import opt, parse_config
from training.evaluate import load_photos, scores

log = logging.getLogger("training.perclass")
PROGRAM = "training.perclass"


@dataclass
class PerClassConfig:
    model: str = opt(str(DEFAULT_MODEL), "exported model (run as the server runs it)")
    datasets: str = opt(str(DEFAULT_DATASETS), "folder holding ferplus/, webfaces-dev/, CK+48/")
    results: str = opt(str(results.ROOT), "result files go under this/<machine>/")
    figures: str = opt("docs/figures", "figures go here")
    step: float = opt(0.05, "logit bias search: grid step")
    span: float = opt(1.5, "logit bias search: values from -span to +span")
    passes: int = opt(3, "logit bias search: coordinate passes")
    frames: int = opt(8, "synthetic sequence length per webfaces-dev photo")
    threads: int = opt(1, "torch / onnx threads")
    tag: str = opt("", "name in the result and figure files (default: from the model file)")
    frames_part: bool = opt(True, "also measure single frame vs windowed (the slow part)")


def probabilities(predictor: Predictor, faces: D.FaceSet) -> np.ndarray:
    """N x C served probabilities, columns in `faces.classes` order, renormalised over them."""
    cols = [predictor.classes.index(c) for c in faces.classes]
    out = []
    for i in tqdm(range(0, len(faces), 64), desc="faces", leave=False, mininterval=5):
        out.append(predictor.forward(faces.images[i:i + 64])[:, cols])
    p = np.concatenate(out).astype(np.float64)
    return p / p.sum(1, keepdims=True)


def biased(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Class index per row of log(probs) + bias."""
    return (np.log(np.clip(probs, 1e-9, None)) + bias).argmax(1)


def balanced(true: np.ndarray, pred: np.ndarray, k: int) -> float:
    recall = [(pred[true == c] == c).mean() for c in range(k) if (true == c).any()]
    return float(np.mean(recall))


def search_bias(probs: np.ndarray, true: np.ndarray, fixed: int, step: float, span: float,
                passes: int) -> tuple[np.ndarray, float]:
    """Coordinate search for the additive bias maximising balanced accuracy; class `fixed`
    stays at 0 (only differences matter). Ties keep the value closest to 0."""
    k = probs.shape[1]
    bias = np.zeros(k)
    grid = np.round(np.arange(-span, span + step / 2, step), 6)
    grid = grid[np.argsort(np.abs(grid), kind="stable")]
    best = balanced(true, biased(probs, bias), k)
    for _ in range(passes):
        for c in range(k):
            if c == fixed:
                continue
            for v in grid:
                trial = bias.copy()
                trial[c] = v
                score = balanced(true, biased(probs, trial), k)
                if score > best + 1e-12:
                    best, bias = score, trial
    return bias, best


def vote_shares(root: Path) -> dict:
    """How the FER+ crowd voted on train faces where sadness got any votes."""
    _, votes = D.read_ferplus_votes(root / "train" / "label.csv")
    total = votes.sum(1)
    sad = votes[:, D.FERPLUS8.index("sadness")] / total
    top = votes[:, :len(D.FERPLUS8)].argmax(1)
    major = D.crowd_majority(votes, D.FERPLUS8)
    is_sad_major = major & (top == D.FERPLUS8.index("sadness"))
    ambiguous = (sad > 0) & ~is_sad_major & (top == D.FERPLUS8.index("sadness"))
    rivals = defaultdict(int)
    for row in votes[(sad >= 0.3) & ~is_sad_major]:
        share = row[:len(D.FERPLUS8)].astype(float)
        share[D.FERPLUS8.index("sadness")] = -1
        rivals[D.FERPLUS8[int(share.argmax())]] += 1
    n_sad = votes[:, D.FERPLUS8.index("sadness")]
    return {"train_faces": len(votes), "any_sad_vote": int((sad > 0).sum()),
            "majority_sad": int(is_sad_major.sum()),
            "sad_top_but_no_majority": int(ambiguous.sum()),
            "sad_share_ge_0.3_without_majority": int(((sad >= 0.3) & ~is_sad_major).sum()),
            "their_runner_up_class": dict(sorted(rivals.items(), key=lambda kv: -kv[1])),
            "sad_votes_histogram": {int(v): int((n_sad == v).sum())
                                    for v in np.unique(n_sad[n_sad > 0])},
            "votes_per_face": {int(v): int((total == v).sum()) for v in np.unique(total)}}


def ck_sequences(faces: D.FaceSet) -> dict[str, list[int]]:
    """CK+48 frames grouped by sequence (S###_###), in frame order."""
    seqs: dict[str, list[int]] = defaultdict(list)
    for i, p in sorted(enumerate(faces.paths), key=lambda ip: Path(ip[1]).name):
        stem = Path(p).name.rsplit("_", 1)[0]
        seqs[f"{faces.labels[i]}:{stem}"].append(i)
    return seqs


def drift_frames(path: Path, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n model-ready faces from one photo: the whole photo as a client crop, its square
    drifting by up to 6% of its side and zooming by 0.9..1.1 from frame to frame, as a
    hand-held camera's crop would."""
    gray = decode_gray(path.read_bytes())
    h, w = gray.shape[:2]
    side0 = min(h, w)
    cx, cy, zoom = w / 2, h / 2, 1.0
    out = []
    for _ in range(n):
        side = max(8, int(side0 * zoom))
        out.append(square_at(gray, int(cx - side / 2), int(cy - side / 2), side, size))
        cx = np.clip(cx + rng.normal(0, 0.03) * side0, w / 2 - 0.06 * side0, w / 2 + 0.06 * side0)
        cy = np.clip(cy + rng.normal(0, 0.03) * side0, h / 2 - 0.06 * side0, h / 2 + 0.06 * side0)
        zoom = float(np.clip(zoom + rng.normal(0, 0.04), 0.9, 1.1))
    return np.stack(out)


def recall_of(true: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    s = scores(true, pred, classes)
    return {"balanced_accuracy": round(s["balanced_accuracy"], 4),
            "accuracy": round(s["accuracy"], 4), "recall": s["recall"], "n": len(true)}


def plot_confusions(sets: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4.6))
    for ax, (name, s) in zip(np.atleast_1d(axes), sets.items(), strict=True):
        m = np.array(s["confusion"], float)
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
        k = len(s["classes"])
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), s["classes"], rotation=45, ha="right")
        ax.set_yticks(range(k), s["classes"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (balanced {s['balanced_accuracy']:.3f})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(rows: dict[str, dict], classes: tuple[str, ...], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows.items()):
        ax.bar(np.arange(len(classes)) + i * width, [r["recall"][c] for c in classes], width,
               label=f"{name} (balanced {r['balanced_accuracy']:.3f})")
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes)
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1)
    ax.axhline(0.6, color="grey", lw=0.5, ls="--")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PerClassConfig, argv, program=PROGRAM, doc=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(cfg.threads)
    root = Path(cfg.datasets)
    predictor = Predictor(cfg.model, device="cpu")
    classes = tuple(predictor.classes)
    stem = Path(cfg.model).stem.replace("-5class", "5").replace("-8class", "8")
    stem = cfg.tag or stem.replace("-", "")
    figures = Path(cfg.figures)
    served = {"model": cfg.model, "runtime": predictor.runtime, "tta": predictor.tta}

    # 1. confusions
    web = load_photos(root / "webfaces-dev", classes, predictor.input_size)
    val = D.load_ferplus(root / "ferplus", "valid", classes, "majority")
    have = {D.canonical(p.name) for p in (root / "CK+48").iterdir() if p.is_dir()}
    ck = D.load_ckplus(root / "CK+48", tuple(c for c in classes if c in have))
    sets = {"webfaces-dev": web, "FER+ valid": val, "CK+48": ck}
    probs = {name: probabilities(predictor, f) for name, f in sets.items()}
    conf = {}
    for name, f in sets.items():
        s = scores(f.labels, probs[name].argmax(1), f.classes)
        conf[name] = {"classes": list(f.classes), **s}
    ck_subject = {}
    for c, cls in enumerate(ck.classes):
        subj = [(probs["CK+48"][(ck.groups == g) & (ck.labels == c)].argmax(1) == c).mean()
                for g in np.unique(ck.groups[ck.labels == c])]
        ck_subject[cls] = {"subjects": len(subj), "mean_recall_by_subject": round(float(
            np.mean(subj)), 4)}
    conf["CK+48"]["by_subject"] = ck_subject
    votes = vote_shares(root / "ferplus")
    plot_confusions(conf, figures / f"perclass_{stem}_confusion.png")
    rec = results.make(f"perclass_{stem}_confusion", {
        n: {"balanced_accuracy": round(s["balanced_accuracy"], 4), "recall": s["recall"]}
        for n, s in conf.items()}, {**served, "sets": conf, "ferplus_train_sad_votes": votes,
                                    "figure": f"{figures}/perclass_{stem}_confusion.png"})
    log.info("wrote %s", results.write(Path(cfg.results), rec))

    # 3. logit bias on the selection split
    train = D.load_ferplus(root / "ferplus", "train", classes, "majority")
    _, sel = D.split_selection(train)
    p_sel = probabilities(predictor, sel)
    bias, sel_best = search_bias(p_sel, sel.labels, classes.index("neutral")
                                 if "neutral" in classes else 0, cfg.step, cfg.span,
                                 cfg.passes)
    zero = np.zeros(len(classes))
    table = {}
    for name, f, p in (("FER+ selection", sel, p_sel), ("FER+ valid", val, probs["FER+ valid"]),
                       ("webfaces-dev", web, probs["webfaces-dev"])):
        for tag, b in (("no bias", zero), ("bias", bias)):
            table[f"{name}, {tag}"] = recall_of(f.labels, biased(p, b), classes)
    plot_bars({k: v for k, v in table.items() if not k.startswith("FER+ selection")}, classes,
              f"logit bias {dict(zip(classes, bias.round(2).tolist(), strict=True))}",
              figures / f"perclass_{stem}_logit_bias.png")
    rec = results.make(f"perclass_{stem}_logit_bias", {
        "bias": dict(zip(classes, bias.round(4).tolist(), strict=True)),
        **{k: {"balanced_accuracy": v["balanced_accuracy"], "accuracy": v["accuracy"],
               "recall": v["recall"]} for k, v in table.items()}},
        {**served, "selection_images": len(sel), "selection_counts": sel.counts(),
         "selection_balanced_with_bias": sel_best,
         "search": {"step": cfg.step, "span": cfg.span, "passes": cfg.passes,
                    "objective": "balanced accuracy on the FER+ train selection split, "
                                 "majority protocol; neutral fixed at 0"},
         "applied_as": "argmax of log(served probabilities) + bias",
         "figure": f"{figures}/perclass_{stem}_logit_bias.png"})
    log.info("wrote %s", results.write(Path(cfg.results), rec))

    if not cfg.frames_part:
        return {"confusion": conf, "bias": table}
    # 4. frames: CK+48 sequences, synthetic drift/zoom of webfaces-dev photos
    frames = {}
    seqs = ck_sequences(ck)
    true = np.array([ck.labels[ix[0]] for ix in seqs.values()])
    last = np.array([probs["CK+48"][ix[-1]].argmax() for ix in seqs.values()])
    mean = np.array([probs["CK+48"][ix].mean(0).argmax() for ix in seqs.values()])
    frames["CK+48 sequence, last frame"] = recall_of(true, last, ck.classes)
    frames["CK+48 sequence, mean of its frames"] = recall_of(true, mean, ck.classes)
    rng = np.random.default_rng(0)
    single, ema, avg = [], [], []
    times = np.arange(cfg.frames) / 15.0  # 15 fps
    for path in tqdm(web.paths, desc="drift", mininterval=10):
        fs = drift_frames(Path(path), cfg.frames, predictor.input_size, rng)
        p = probabilities(predictor, D.FaceSet(fs, np.zeros(len(fs), np.int64), classes))
        single.append(p[-1].argmax())
        ema.append(smooth_series(times, p, SMOOTH_MS)[-1].argmax())
        avg.append(p.mean(0).argmax())
    n = f"{cfg.frames} frames at 15 fps"
    frames[f"webfaces-dev drift, single frame (last of {n})"] = recall_of(
        web.labels, np.array(single), classes)
    frames[f"webfaces-dev drift, page EMA {SMOOTH_MS:g} ms (last of {n})"] = recall_of(
        web.labels, np.array(ema), classes)
    frames[f"webfaces-dev drift, mean of {n}"] = recall_of(web.labels, np.array(avg), classes)
    plot_bars({k: v for k, v in frames.items() if k.startswith("webfaces")}, classes,
              "webfaces-dev, synthetic drift/zoom: single frame vs windowed",
              figures / f"perclass_{stem}_frames.png")
    rec = results.make(f"perclass_{stem}_frames", frames,
                       {**served, "ck_sequences": len(seqs), "frames": cfg.frames,
                        "drift": "centre drift N(0, 3%) per frame capped at 6% of the side; "
                                 "zoom N(0, 0.04) per frame within 0.9..1.1; seed 0",
                        "figure": f"{figures}/perclass_{stem}_frames.png"})
    log.info("wrote %s", results.write(Path(cfg.results), rec))
    return {"confusion": conf, "bias": table, "frames": frames}


if __name__ == "__main__":
    main()
