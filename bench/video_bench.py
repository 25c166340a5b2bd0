"""How fast streamfer.video turns a recording into a timeline, as a multiple of real time:
a 720p 30 fps video of a face made from a photo (tests/kit/fakevideo.py), every frame and every
3rd frame (by the wall clock, and per CPU second of the whole process: the figure a busy
machine's load does not distort), through the command line's own loop (decode, BlazeFace,
tracker, crops, the model batched on its inference thread) on the shipped model; and
decoding alone, the floor every --every pays (inter-frame codecs decode each frame).

    python -m bench.video_bench   # 60 s of video -> bench/results/<machine>/video_throughput.json
    python -m bench.video_bench --seconds 10 --results /tmp/results   # a quick check
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2

from bench.machine import describe, machine_info
from bench.record import save
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.detect import load_detector
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_MODEL
from streamfer.smooth import SMOOTH_MS
from streamfer.video.decode import (
    MAX_VIDEO_BYTES,
    MAX_VIDEO_PIXELS,
    MAX_VIDEO_SECONDS,
    Limits,
    frames,
    open_video,
)
from streamfer.video.run import process
from tests.kit.fakevideo import write_face_video


@dataclass(frozen=True)
class VideoBenchConfig:
    seconds: float = opt(60.0, "video length")
    fps: float = opt(30.0, "video frame rate")
    width: int = opt(1280, "frame width")
    height: int = opt(720, "frame height")
    every: tuple[int, ...] = opt((1, 3), "process every Nth frame (a comma-separated list)",
                                 comma=True)
    model: Path = opt(DEFAULT_MODEL, "TorchScript model")
    threads: int = opt(1, "torch threads (as python -m streamfer.video --threads)")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("video_throughput", "result name")


def timed(fn: object) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu, value


def main(argv: list[str] | None = None) -> int:
    cfg = parse(VideoBenchConfig, argv, prog="python -m bench.video_bench",
                description=__doc__.split("\n\n")[0])
    import torch
    from skimage import data

    torch.set_num_threads(cfg.threads)
    limits = Limits(MAX_VIDEO_BYTES, MAX_VIDEO_SECONDS, MAX_VIDEO_PIXELS)
    predictor = Predictor(cfg.model, device="cpu", threads=cfg.threads)
    detector = load_detector("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            ThreadPoolExecutor(1, thread_name_prefix="infer") as pool:
        video = write_face_video(Path(tmp) / "face.mp4", data.astronaut()[0:340, 80:420],
                                 seconds=cfg.seconds, fps=cfg.fps,
                                 size=(cfg.width, cfg.height))

        def decode_only() -> int:
            cap, info = open_video(video, limits)
            return sum(1 for _ in frames(cap, info, 1, limits))

        wall, cpu, n = timed(decode_only)
        rows.append({"run": "decode only, every frame to grayscale", "frames": n,
                     "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                     "x_real_time": round(cfg.seconds / wall, 2),
                     "x_real_time_per_cpu_s": round(cfg.seconds / cpu, 2)})
        for every in cfg.every:
            def run(every: int = every) -> dict:
                cap, info = open_video(video, limits)
                return process(cap, info, Path(tmp) / f"out{every}", detector=detector,
                               classes=predictor.classes, input_size=predictor.input_size,
                               infer=lambda f: pool.submit(predictor.forward, f),
                               every=every, limits=limits, smooth_ms=SMOOTH_MS,
                               model=predictor.name)
            wall, cpu, summary = timed(run)
            assert isinstance(summary, dict)
            rows.append({"run": f"timeline, every {every}", "every": every,
                         "frames": summary["frames_processed"], "rows": summary["rows"],
                         "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                         "x_real_time": round(cfg.seconds / wall, 2),
                         "x_real_time_per_cpu_s": round(cfg.seconds / cpu, 2)})
    machine = machine_info()
    print(f"{cfg.seconds:g} s of {cfg.width}x{cfg.height} at {cfg.fps:g} fps on "
          f"{describe(machine)}")
    for r in rows:
        print(f"  {r['run']:40s} {r['frames']:6d} frames {r['wall_s']:7.2f} s wall "
              f"{r['cpu_s']:7.2f} s CPU  {r['x_real_time']:6.2f}x real time "
              f"({r['x_real_time_per_cpu_s']:.2f}x per CPU second)")
    result = {"benchmark": "video_throughput",
              "config": {"seconds": cfg.seconds, "fps": cfg.fps, "size": [cfg.width, cfg.height],
                         "model": predictor.name, "runtime": predictor.runtime,
                         "torch_threads": cfg.threads,
                         "detector": detector.description},
              "versions": {"opencv": cv2.__version__}, "machine": machine, "rows": rows}
    figures = {"video": f"{cfg.seconds:g} s, {cfg.width}x{cfg.height}, {cfg.fps:g} fps",
               "model": predictor.name, "runtime": predictor.runtime,
               "runs": {r["run"]: {"x_real_time": r["x_real_time"],
                                   "x_real_time_per_cpu_s": r["x_real_time_per_cpu_s"]}
                        for r in rows}}
    save(cfg.results, cfg.name, figures, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
