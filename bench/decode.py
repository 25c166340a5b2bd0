"""JPEG decode to a grayscale array: what the server runs (streamfer.pixels.decode_gray,
libjpeg-turbo through simplejpeg) against OpenCV and Pillow, on what the server receives.

Measured on the two payloads the page sends: a 320 px wide colour camera frame and a 96 px
grayscale face crop, both made from scikit-image's astronaut. OpenCV (the `[video]` extra)
was the server's decoder before; the served decoder must match its pixels and not be slower.

    python -m bench.decode      # prints a table, writes bench/results/<machine>/decode.json
    python -m bench.decode --repeats 5 --number 50 --results /tmp/results   # a quick check
"""

from __future__ import annotations

import io
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from bench.machine import machine_info
from bench.record import save
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.detect import FaceDetector
from streamfer.faces import crop_face
from streamfer.loadtest.frames import encode_jpeg, to_width
from streamfer.pixels import decode_gray


@dataclass(frozen=True)
class DecodeConfig:
    repeats: int = opt(15, "timed repeats (median)")
    number: int = opt(200, "decodes per repeat")
    threads: int = opt(1, "cv2.setNumThreads")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("decode", "result name")

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.number < 1:
            raise ValueError("--repeats and --number must be >= 1")


def parse_args(argv: list[str] | None = None) -> DecodeConfig:
    return parse(DecodeConfig, argv, prog="python -m bench.decode",
                 description=__doc__.split("\n\n")[0])


def payloads() -> dict[str, bytes]:
    """The page's two payloads: a 320 px colour frame and a 96 px grayscale face crop."""
    from skimage import data

    frame = to_width(data.astronaut())
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    box = FaceDetector().detect(gray)
    if box is None:
        raise RuntimeError("no face found in the astronaut")
    return {"frame 320 px colour": encode_jpeg(frame),
            "crop 96 px gray": encode_jpeg(crop_face(gray, box, 96))}


def decode_opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def decode_pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def decode_pillow_draft(data: bytes) -> np.ndarray:
    """Pillow asked to decode the JPEG straight to gray (libjpeg skips the colour conversion),
    the fairest Pillow can do."""
    im = Image.open(io.BytesIO(data))
    im.draft("L", im.size)
    return np.asarray(im.convert("L"))


DECODERS = {"served": decode_gray, "opencv": decode_opencv, "pillow": decode_pillow,
            "pillow_draft": decode_pillow_draft}


def time_decoder(fn, data: bytes, repeats: int, number: int) -> float:
    """Median over repeats of the mean µs per decode."""
    fn(data)  # warm up (first-call allocations, library init)
    per_repeat = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn(data)
        per_repeat.append((time.perf_counter() - t0) / number * 1e6)
    return statistics.median(per_repeat)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    cv2.setNumThreads(cfg.threads)
    rows = []
    for name, data in payloads().items():
        a, b = decode_opencv(data), decode_gray(data)
        if a.shape != b.shape:
            raise RuntimeError(f"decoders disagree on the shape: {a.shape} vs {b.shape}")
        us = {dec: time_decoder(fn, data, cfg.repeats, cfg.number)
              for dec, fn in DECODERS.items()}
        rows.append({"payload": name, "bytes": len(data), "shape": list(a.shape),
                     "served_us": round(us["served"], 1),
                     "served_over_opencv": round(us["served"] / us["opencv"], 2),
                     "opencv_us": round(us["opencv"], 1), "pillow_us": round(us["pillow"], 1),
                     "pillow_draft_us": round(us["pillow_draft"], 1),
                     "pillow_over_opencv": round(us["pillow"] / us["opencv"], 2),
                     "pillow_draft_over_opencv": round(us["pillow_draft"] / us["opencv"], 2),
                     "max_abs_pixel_diff": int(np.abs(a.astype(int) - b.astype(int)).max())})
    print(f"{'payload':22s} {'bytes':>6s} {'served µs':>10s} {'opencv µs':>10s} "
          f"{'served/opencv':>14s} {'pillow µs':>10s} {'pillow draft µs':>16s}")
    for r in rows:
        print(f"{r['payload']:22s} {r['bytes']:6d} {r['served_us']:10.1f} {r['opencv_us']:10.1f} "
              f"{r['served_over_opencv']:14.2f} {r['pillow_us']:10.1f} "
              f"{r['pillow_draft_us']:16.1f}")
    result = {"benchmark": "decode", "config": {"repeats": cfg.repeats, "number": cfg.number,
                                                "cv2_threads": cfg.threads},
              "versions": {"opencv": cv2.__version__, "pillow": Image.__version__,
                           "simplejpeg": simplejpeg.__version__,
                           "python": platform.python_version()},
              "machine": machine_info(), "rows": rows}
    figures = {"payloads": {r["payload"]: {k: r[k] for k in (
        "served_us", "opencv_us", "served_over_opencv", "pillow_us", "pillow_draft_us")}
                            for r in rows}}
    save(cfg.results, cfg.name, figures, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
