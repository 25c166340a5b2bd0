"""False faces against recall: how often the server's face search reports a face in an image
that has none, beside how often it finds the face in webfaces-dev photos, for every score
threshold; the server's threshold is chosen from this curve.

    python -m bench.false_faces   # bench/results/<machine>/false_faces.json (+ .png beside it)

Face-free images: scikit-image's samples that show no person (coffee, chelsea the cat, the
rocket, coins, text, ... each whole, in quadrants and halved; its `lfw_subset` non-face
patches), and strips of webfaces-dev photos away from every face found in them (the parts
left and right of, and above and below, the found faces with a margin of a quarter face;
news photos, so a strip may show someone else). Faces: every webfaces-dev photo, whole, as
/api/predict receives it.

Each image goes through the search /api/predict runs (streamfer.server.pipeline: the whole
image, its tiles where it is large enough, and the padded copy) at a low threshold, every
face found kept with its score and the best score in its mirrored region (the server's
second check, streamfer.detect.BlazeFace.confirm): an image reports a face at threshold t
when a face scores t or more (in a tile, also the tiles' own minimum) and its mirror image
MediaPipe's threshold for this model, 0.5, or more. The curve is drawn with and without the
mirror check. The rule that picks the threshold is written here before the run: the lowest
t at which, with the mirror check, at most --max-false of the face-free images report a
face. webfaces-dev is evaluation only:
the rule does not look at it, its recall at the chosen threshold is reported beside.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from streamfer import results
from streamfer.cli import opt, parse
from streamfer.detect import TIGHT_PAD, TILE_MIN_SCORE, BlazeFace, mirrored_region
from streamfer.faces import load_gray
from streamfer.paths import DEFAULT_DATASETS

# scikit-image samples that show no person (astronaut and camera do: left out).
SKIMAGE_FACE_FREE = ("brick", "cell", "chelsea", "checkerboard", "clock", "coffee", "coins",
                     "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                     "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
                     "rocket", "text")
MIN_STRIP = 40  # px: a narrower strip of a photo is not used as a face-free image
MARGIN = 0.25  # of a face's size: what a strip keeps clear of every found face
THRESHOLDS = np.round(np.arange(0.30, 0.951, 0.01), 2)
FLOOR = 0.3  # every candidate face at or above the curve's lowest threshold is kept
MEDIAPIPE_SHORT = 0.5  # MediaPipe's own default for the short-range model


@dataclass(frozen=True)
class FalseFacesConfig:
    data: str = opt(str(DEFAULT_DATASETS / "webfaces-dev"), "webfaces-dev folder (CLASS/*.jpg)")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json "
                        "(the curve's PNG beside it)")
    name: str = opt("false_faces", "result name")
    max_false: float = opt(0.01, "the rule: the lowest threshold at which at most this share "
                           "of face-free images reports a face")
    limit: int = opt(0, "webfaces-dev photos (0: all)")
    candidates: str = opt("", "also write every image's candidate faces (score, mirrored "
                          "score, in a tile) here as JSON")


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    if image.dtype != np.uint8:  # boolean or float samples
        image = (255 * (image.astype(np.float64) / max(float(image.max()), 1e-9))).astype(
            np.uint8)
    return np.ascontiguousarray(image)


def skimage_face_free() -> list[tuple[str, np.ndarray]]:
    """Each face-free sample whole, in four quadrants and at half size; lfw_subset's 100
    non-face patches."""
    from skimage import data

    out = []
    for name in SKIMAGE_FACE_FREE:
        g = _gray(getattr(data, name)())
        h, w = g.shape
        out.append((name, g))
        out += [(f"{name}[q{i}]", np.ascontiguousarray(q)) for i, q in enumerate(
            (g[:h // 2, :w // 2], g[:h // 2, w // 2:], g[h // 2:, :w // 2], g[h // 2:, w // 2:]))]
        out.append((f"{name}[half]", cv2.resize(g, (w // 2, h // 2),
                                                interpolation=cv2.INTER_AREA)))
    patches = data.lfw_subset()[100:]  # the second hundred are non-faces
    out += [(f"lfw_subset[{100 + i}]", _gray(p)) for i, p in enumerate(patches)]
    return out


def strips_away_from_faces(gray: np.ndarray, boxes: list) -> list[np.ndarray]:
    """The parts of `gray` left, right, above and below all `boxes`, each grown by MARGIN of
    its size on every side, that are at least MIN_STRIP wide and tall."""
    h, w = gray.shape
    if not boxes:
        return []
    x0 = min(b.x - round(MARGIN * b.w) for b in boxes)
    x1 = max(b.x + b.w + round(MARGIN * b.w) for b in boxes)
    y0 = min(b.y - round(MARGIN * b.h) for b in boxes)
    y1 = max(b.y + b.h + round(MARGIN * b.h) for b in boxes)
    parts = [gray[:, :max(0, x0)], gray[:, min(w, x1):], gray[:max(0, y0), :],
             gray[min(h, y1):, :]]
    return [np.ascontiguousarray(p) for p in parts if min(p.shape[:2]) >= MIN_STRIP]


def candidates(low: BlazeFace, gray: np.ndarray) -> list[tuple[float, float, bool]]:
    """Every face the photo search finds at the FLOOR threshold: (score, the best score in
    its mirrored region (BlazeFace.confirm's check), found in a tile)."""
    found = [(d, False) for d in low.detect(gray) + low.detect(gray, pad=TIGHT_PAD)]
    found += [(d, True) for d in low.detect_photo(gray, whole=False)]
    if not found:
        return []
    inputs = [low.prepare(mirrored_region(gray, d.box))[0] for d, _ in found]
    _, scores = low.infer(np.stack(inputs))
    return [(d.score, float(sc.max()), tile) for (d, tile), sc in
            zip(found, scores, strict=True)]


def reports(images: list[list[tuple[float, float, bool]]], t: float,
            mirror: bool) -> np.ndarray:
    """Which images report a face at threshold t (tiles: at least the tiles' minimum), with
    or without the mirror check (at MediaPipe's 0.5)."""
    return np.asarray([any(s >= (max(t, TILE_MIN_SCORE) if tile else t) and
                           (not mirror or m >= MEDIAPIPE_SHORT) for s, m, tile in c)
                       for c in images])


def main(argv: list[str] | None = None) -> dict:
    cfg = parse(FalseFacesConfig, argv, prog="python -m bench.false_faces",
                description=__doc__.split("\n")[0])
    torch.set_num_threads(1)  # as one of the server's decode threads runs it
    cv2.setNumThreads(1)
    det = BlazeFace("short")
    low = BlazeFace("short", min_score=FLOOR)
    photos = sorted(Path(cfg.data).glob("*/*.jpg"))
    if cfg.limit:
        photos = photos[:: max(1, len(photos) // cfg.limit)][: cfg.limit]
    if not photos:
        raise SystemExit(f"python -m bench.false_faces: error: no webfaces-dev photos under "
                         f"{cfg.data}: give the folder with --data")
    free = skimage_face_free()
    faces, strips = [], []
    for path in tqdm(photos, desc="webfaces-dev", mininterval=10):
        gray = load_gray(path)
        faces.append(candidates(low, gray))
        found = low.detect_photo(gray) or low.detect(gray, pad=TIGHT_PAD)
        for strip in strips_away_from_faces(gray, [d.box for d in found]):
            strips.append(candidates(low, strip))
    samples = [candidates(low, g) for _, g in tqdm(free, desc="scikit-image", mininterval=10)]
    negatives = samples + strips
    curve = [{"threshold": float(t),
              **{f"{key}false_face_rate": float(reports(negatives, t, mirror).mean())
                 for key, mirror in (("", True), ("threshold_alone_", False))},
              "false_face_rate_samples": float(reports(samples, t, True).mean()),
              "false_face_rate_strips": float(reports(strips, t, True).mean())
              if strips else None,
              **{f"{key}recall": float(reports(faces, t, mirror).mean())
                 for key, mirror in (("", True), ("threshold_alone_", False))}}
             for t in THRESHOLDS]
    chosen = next((row for row in curve if row["false_face_rate"] <= cfg.max_false), curve[-1])
    current = next(row for row in curve if abs(row["threshold"] - MEDIAPIPE_SHORT) < 1e-9)
    served = next(row for row in curve if abs(row["threshold"] - det.min_score) < 1e-9)
    false_at = {name: round(max([s_ for s_, m, _ in c if m >= MEDIAPIPE_SHORT], default=0.0),
                            4) for (name, _), c in zip(free, samples, strict=True)}
    result = {
        "benchmark": "false_faces", "command": "python -m bench.false_faces " + " ".join(
            argv if argv is not None else __import__("sys").argv[1:]),
        "detector": det.description, "tile_min_score": TILE_MIN_SCORE,
        "face_photos": len(faces), "face_free_images": len(negatives),
        "face_free_samples": len(samples), "face_free_strips": len(strips),
        "rule": f"lowest threshold with false_face_rate (mirror check on) <= {cfg.max_false}",
        "chosen": chosen, "mediapipe_default": current, "served": served,
        "sample_best_confirmed_scores": false_at, "curve": curve,
        "machine": f"{platform.processor() or platform.machine()}, shared with other jobs",
    }
    if cfg.candidates:
        Path(cfg.candidates).write_text(json.dumps({"faces": faces, "samples": samples,
                                                    "strips": strips}))
    keep = ("threshold", "false_face_rate", "recall")
    figures = {"face_photos": len(faces), "face_free_images": len(negatives),
               "rule": result["rule"], "served": {k: served[k] for k in keep},
               "threshold_alone_false_face_rate": served["threshold_alone_false_face_rate"],
               "mediapipe_default": {k: current[k] for k in keep}}
    out = results.write(cfg.results, results.make(cfg.name, figures, result))
    png = out.with_suffix(".png")
    plot(curve, chosen, current, png)
    print(f"{len(faces)} webfaces-dev photos, {len(negatives)} face-free images "
          f"({len(samples)} scikit-image, {len(strips)} photo strips)")
    for label, row in (("MediaPipe's default", current), ("chosen", chosen),
                       ("served", served)):
        print(f"{label:20} threshold {row['threshold']:.2f}: alone false faces "
              f"{100 * row['threshold_alone_false_face_rate']:.2f}% recall "
              f"{100 * row['threshold_alone_recall']:.2f}%; with the mirror check false faces "
              f"{100 * row['false_face_rate']:.2f}% recall {100 * row['recall']:.2f}%")
    print("saved", out, png)
    return result


def plot(curve: list[dict], chosen: dict, current: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([100 * r["threshold_alone_false_face_rate"] for r in curve],
            [100 * r["threshold_alone_recall"] for r in curve], marker=".", color="grey",
            alpha=0.6, label="threshold alone, 0.30-0.95")
    ax.plot([100 * r["false_face_rate"] for r in curve], [100 * r["recall"] for r in curve],
            marker=".", label="threshold + mirror check, 0.30-0.95")
    for row, label, colour in ((current, "MediaPipe default", "grey"),
                               (chosen, "chosen", "red")):
        ax.scatter([100 * row["false_face_rate"]], [100 * row["recall"]], color=colour, zorder=3,
                   label=f"{label} {row['threshold']:.2f}: {100 * row['false_face_rate']:.2f}% "
                         f"false, {100 * row['recall']:.2f}% recall")
    ax.axvline(1.0, color="red", linewidth=0.8, linestyle="--")
    ax.axhline(99.0, color="red", linewidth=0.8, linestyle="--")
    ax.set_xlabel("face-free images reported as a face, %")
    ax.set_ylabel("webfaces-dev photos with a face found, %")
    ax.set_title("Server face search (BlazeFace short range): false faces vs recall", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
