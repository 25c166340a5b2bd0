"""Measure how FER2013 frames a face relative to the server's face detector box.

    python -m training.framing --data-root ../shared/datasets/fer2013 --limit 3000 \\
        --out runs/framing-fer2013/framing.json --preview /tmp/framing.png
    python -m training.framing --detector blazeface --out runs/framing-fer2013/blazeface.json

The model only ever saw FER2013's 48x48 faces, so a camera face must be cut out the way
FER2013 cut its faces. `streamfer.faces.crop_face` does that from a detector's box with
two constants per detector (streamfer.faces.FRAMING[detector]): scale (crop side / box side)
and shift_y (crop centre below the box centre, as a fraction of the crop side). This program
measures both: it upsamples FER2013 Training faces, runs the server's detector (`--detector`:
the Haar cascade `streamfer.detect.FaceDetector` with the server's scale factor, neighbours and
histogram equalisation, or BlazeFace `streamfer.detect.BlazeFace` with its defaults) and
takes medians over the faces it finds of

    scale   = image side / box side                    -> FRAMING[detector]["scale"]
    shift_y = (image centre y - box centre y) / side   -> FRAMING[detector]["shift_y"]
                                                          (> 0: box sits high)
    shift_x = (image centre x - box centre x) / side   (should be ~0)

A FER face fills most of its image, so the cascade's box can be nearly as big as the image,
and a detector window never sees past the image edge: each face is padded with its edge
pixels (`--pad`, a fraction of the side) before detection so such boxes can be found.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from streamfer.detect import DETECTORS, FaceDetector
from streamfer.faces import BLAZEFACE, FRAMING, HAAR, Box, crop_at
from streamfer.paths import DEFAULT_DATASETS
from training.cli import opt, parse_config

log = logging.getLogger("training.framing")


@dataclass
class FramingConfig:
    data_root: str = opt(str(DEFAULT_DATASETS / "fer2013"), "FER2013's folder")
    detector: str = opt(HAAR, "whose boxes to calibrate (a streamfer.faces.FRAMING key)",
                        DETECTORS)
    split: str = opt("train", "train (Training) or test (PublicTest)", ("train", "test"))
    classes: str = opt("fer7", "paper5, fer7, ck7, or a comma list")
    limit: int = opt(3000, "faces sampled (seeded) from the split; 0: all")
    upsample: int = opt(192, "side the 48x48 faces are enlarged to before detection")
    pad: float = opt(0.25, "edge-pixel border added on each side, as a fraction of the side")
    min_face_fraction: float = opt(0.3, "FaceDetector's smallest face, of the padded side")
    seed: int = opt(0, "seeds the sample")
    out: str = opt("runs/framing-fer2013/framing.json", "where to write the measured framing")
    preview: str = opt("", "PNG: the astronaut cropped with the measured framing beside "
                       "FER2013 faces")
    command: str = field(default="", repr=False)


def parse_args(argv: list[str] | None = None) -> FramingConfig:
    return parse_config(FramingConfig, argv, program="training.framing", doc=__doc__)


class BestBox:
    """A streamfer.detect detector seen as `detect(gray) -> Box | None` (its best face)."""

    def __init__(self, detector: object) -> None:
        self.detector = detector

    def detect(self, gray: np.ndarray) -> Box | None:
        found = self.detector.detect(gray)
        return found[0].box if found else None


def box_finder(cfg: FramingConfig) -> FaceDetector | BestBox:
    """The detector named by --detector, configured as the server runs it."""
    if cfg.detector == BLAZEFACE:
        from streamfer.detect import BlazeFace

        return BestBox(BlazeFace())
    return FaceDetector(min_face_fraction=cfg.min_face_fraction)


def measure_one(face: np.ndarray, detector: FaceDetector | BestBox, upsample: int,
                pad: float) -> tuple[float, float, float] | None:
    """(scale, shift_y, shift_x) of one square face image as defined above, or None if missed."""
    big = cv2.resize(face, (upsample, upsample), interpolation=cv2.INTER_CUBIC)
    p = round(pad * upsample)
    padded = cv2.copyMakeBorder(big, p, p, p, p, cv2.BORDER_REPLICATE) if p else big
    box = detector.detect(padded)
    if box is None:
        return None
    side = max(box.w, box.h)
    centre = upsample / 2.0
    return (upsample / side,
            (centre - (box.y - p + box.h / 2.0)) / upsample,
            (centre - (box.x - p + box.w / 2.0)) / upsample)


def summarise(values: np.ndarray) -> dict[str, float]:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "mean": float(values.mean())}


def measure(images: np.ndarray, cfg: FramingConfig) -> dict:
    """Detection rate and scale / shift statistics over a stack of square faces."""
    detector = box_finder(cfg)
    found = []
    for img in tqdm(images, desc="detecting", mininterval=2):
        m = measure_one(img, detector, cfg.upsample, cfg.pad)
        if m is not None:
            found.append(m)
    if not found:
        raise RuntimeError("the detector found no face in any image; check --pad / --upsample")
    arr = np.array(found)
    return {"images": len(images), "detected": len(found),
            "detection_rate": len(found) / len(images),
            "scale": summarise(arr[:, 0]), "shift_y": summarise(arr[:, 1]),
            "shift_x": summarise(arr[:, 2])}


def save_preview(path: Path, astronaut_gray: np.ndarray, fer: np.ndarray, scale: float,
                 shift_y: float, cfg: FramingConfig) -> None:
    """Astronaut crops (current and measured framing) beside FER faces, 4x enlarged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    box = box_finder(cfg).detect(astronaut_gray)
    if box is None:
        raise RuntimeError("no face found on the astronaut")
    now = FRAMING[cfg.detector]
    tiles = [(crop_at(astronaut_gray, box, 48, now["scale"], now["shift_y"]),
              f"astronaut, current\nscale {now['scale']:g} shift {now['shift_y']:g}"),
             (crop_at(astronaut_gray, box, 48, scale, shift_y),
              f"astronaut, measured\nscale {scale:.3f} shift {shift_y:.3f}")]
    tiles += [(img, "FER2013 Training") for img in fer]
    fig, axes = plt.subplots(1, len(tiles), figsize=(2.0 * len(tiles), 2.5))
    for ax, (img, title) in zip(axes, tiles, strict=True):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from skimage import data as skdata

    from training import data as D

    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.time()
    faces = D.load_fer2013(cfg.data_root, cfg.split, cfg.classes)
    order = np.random.default_rng(cfg.seed).permutation(len(faces))
    pick = np.sort(order[:cfg.limit] if cfg.limit else order)
    stats = measure(faces.images[pick], cfg)
    scale = stats["scale"]["median"]
    shift_y = stats["shift_y"]["median"]
    result = {"config": asdict(cfg), **stats,
              "FRAMING": {cfg.detector: {"scale": round(scale, 3),
                                         "shift_y": round(shift_y, 3)}},
              "FRAME_SCALE": round(scale, 3), "FRAME_SHIFT_Y": round(shift_y, 3),
              "seconds": time.time() - t0}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("detected %d of %d (%.1f%%); median scale %.3f, shift_y %.3f, shift_x %.3f -> %s",
             stats["detected"], stats["images"], 100 * stats["detection_rate"], scale, shift_y,
             stats["shift_x"]["median"], out)
    if cfg.preview:
        gray = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY)
        save_preview(Path(cfg.preview), gray, faces.images[pick[:6]], scale, shift_y, cfg)
        log.info("preview %s", cfg.preview)
    return result


if __name__ == "__main__":
    main()
