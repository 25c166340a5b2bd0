"""python -m streamfer.video IN.mp4 [--every N] [--out DIR]: a recording's expression
timeline -- timeline.csv and timeline.json (one row per processed frame and face: time,
face id, box, each class's probability, top class), face-ID.png (each class over time, per
face) and summary.json (per face, the share of its time each expression was on top).

Faces are found by the server's detector (BlazeFace from web/node_modules, else OpenCV's
Haar cascade), followed across frames with stable ids, and run through the served model
in batches on an inference thread while the next frames decode."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from streamfer.cli import opt, parse
from streamfer.contract import TTA_MODES, ModelError
from streamfer.detect import load_detector
from streamfer.model import DEVICES
from streamfer.onnx_int8 import RUNTIMES
from streamfer.optional import OpenCVMissing
from streamfer.paths import DEFAULT_MODEL
from streamfer.server.batcher import load_predictor
from streamfer.server.config import ServeConfig
from streamfer.smooth import SMOOTH_MS
from streamfer.video.decode import (
    MAX_VIDEO_BYTES,
    MAX_VIDEO_PIXELS,
    MAX_VIDEO_SECONDS,
    Limits,
    VideoError,
    open_video,
)
from streamfer.video.run import expected_frames, process

log = logging.getLogger(__name__)

PROG = "python -m streamfer.video"


@dataclass(frozen=True)
class VideoConfig:
    video: Path = opt(None, "the recording (MP4, MOV, MKV, WebM, AVI: what FFmpeg reads)",
                      positional=True)
    every: int = opt(1, "process every Nth frame (the others are decoded, not analysed)")
    out: Path | None = opt(None, "output folder (default: IN without its suffix + "
                           "'-timeline', beside it)")
    model: Path = opt(DEFAULT_MODEL, "TorchScript model (its classes name the columns)")
    device: str = opt("auto", "auto = CUDA when torch sees a GPU", DEVICES)
    runtime: str = opt("auto", "CPU inference, as the server's --runtime", RUNTIMES)
    tta: str | None = opt(None, "test-time averaging (default: the model's own)", TTA_MODES)
    threads: int = opt(1, "torch threads for the face detector and the model (decoding, "
                       "detection and inference already run side by side, one thread each)")
    batch: int = opt(32, "faces per inference batch")
    max_faces: int = opt(4, "faces per frame, largest first")
    smooth_ms: float = opt(SMOOTH_MS, "the plots' smoothing time constant in ms, as the live "
                           "page's (0 = none; the CSV and JSON hold the raw probabilities)")
    max_bytes: int = opt(MAX_VIDEO_BYTES, "largest video file")
    max_seconds: float = opt(MAX_VIDEO_SECONDS, "longest video")
    max_pixels: int = opt(MAX_VIDEO_PIXELS, "largest frame, in pixels")
    progress: bool = opt(True, "show a progress bar (tqdm, on stderr)")

    def __post_init__(self) -> None:
        if min(self.every, self.batch, self.max_faces, self.threads) < 1:
            raise ValueError("--every, --batch, --max-faces and --threads must be >= 1")
        if self.smooth_ms < 0:
            raise ValueError("--smooth-ms must be >= 0")

    @property
    def serving(self) -> ServeConfig:
        """The model's settings as the server takes them, so that the model is loaded the one
        way the server loads it (streamfer.server.batcher.load_predictor)."""
        return ServeConfig(model=self.model, device=self.device, tta=self.tta,
                           max_batch=self.batch, runtime=self.runtime, threads=self.threads)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_bytes, self.max_seconds, self.max_pixels)

    @property
    def out_dir(self) -> Path:
        return self.out or self.video.with_name(self.video.stem + "-timeline")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse(VideoConfig, argv, prog=PROG, description=__doc__)
    try:
        cap, info = open_video(config.video, config.limits)
    except OpenCVMissing as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except (VideoError, OSError) as exc:
        print(f"{PROG}: {config.video}: {exc}", file=sys.stderr)
        return 2
    try:  # its threads also set torch's where the TorchScript runs (torch is not imported else)
        predictor = load_predictor(config.serving)
    except (ModelError, OSError) as exc:
        cap.release()
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    detector = load_detector(predictor.device)
    from tqdm import tqdm

    bar = tqdm(total=expected_frames(info, config.every, config.limits), unit="frame",
               disable=not config.progress, desc=config.video.name)
    with ThreadPoolExecutor(1, thread_name_prefix="streamfer-infer") as pool:
        try:
            summary = process(cap, info, config.out_dir, detector=detector,
                              classes=predictor.classes, input_size=predictor.input_size,
                              infer=lambda faces: pool.submit(predictor.forward, faces),
                              every=config.every, limits=config.limits,
                              smooth_ms=config.smooth_ms, model=predictor.name,
                              batch=config.batch, max_faces=config.max_faces,
                              on_frame=lambda _i: bar.update())
        except VideoError as exc:
            bar.close()
            print(f"{PROG}: {config.video}: {exc}", file=sys.stderr)
            return 2
    bar.close()
    print(f"{summary['rows']} rows for {len(summary['faces'])} face(s) in "
          f"{summary['frames_processed']} frames -> {config.out_dir}")
    return 0
