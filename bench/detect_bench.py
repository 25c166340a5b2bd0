"""Face detectors side by side: recall on webfaces-dev photos, CPU ms per 320 px frame.

    python -m bench.detect_bench --data ../shared/datasets/webfaces-dev \\
        --results bench/results     # -> bench/results/<machine>/detect.json

webfaces-dev is evaluation only: nothing here is tuned on it (each detector runs with its
own library defaults; BlazeFace is the short-range model; the padded retry's margin is
fixed in streamfer/detect.py on
principle). Every photo holds one face, near the middle (LFW-style), so a photo counts as
found when the detector returns a face, and as `centred` when the best face's centre also
lies in the middle half of the photo (a check against counting false positives).
Images go through the server's decoder (grayscale). Timing: one thread
(torch.set_num_threads(1), cv2.setNumThreads(1)), each photo scaled to 320 px wide, median
of every call, as CPU time of the calling thread (time.thread_time: what one core spends,
robust to a shared machine) and as wall time; all detectors in one run, interleaved per
photo, so a shared machine's noise falls on all of them alike.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from streamfer import results
from streamfer.cli import opt, parse
from streamfer.detect import TIGHT_PAD, BlazeFace, HaarFallback
from streamfer.faces import load_gray
from streamfer.paths import DEFAULT_DATASETS


def variants() -> dict:
    short, haar = BlazeFace("short"), HaarFallback()

    def with_retry(det):
        return lambda g: det.detect(g) or det.detect(g, pad=TIGHT_PAD)

    return {"haar": haar.detect, "haar+pad": with_retry(haar),
            "blazeface": short.detect, "blazeface+pad": with_retry(short)}


@dataclass(frozen=True)
class DetectBenchConfig:
    data: str = opt(str(DEFAULT_DATASETS / "webfaces-dev"), "webfaces-dev folder (CLASS/*.jpg)")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("detect", "result name")
    limit: int = opt(0, "photos (0: all)")


def main(argv: list[str] | None = None) -> None:
    args = parse(DetectBenchConfig, argv, prog="python -m bench.detect_bench",
                 description=__doc__.split("\n")[0])
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = sorted(Path(args.data).glob("*/*.jpg"))
    if args.limit:
        paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
    dets = variants()
    found = dict.fromkeys(dets, 0)
    centred = dict.fromkeys(dets, 0)
    per_class = {k: {} for k in dets}
    ms = {k: [] for k in dets}
    cpu_ms = {k: [] for k in dets}
    for path in tqdm(paths, mininterval=5):
        gray = load_gray(path)
        h, w = gray.shape
        frame = cv2.resize(gray, (320, max(1, round(h * 320 / w))), interpolation=cv2.INTER_AREA
                           if w > 320 else cv2.INTER_LINEAR)
        cls = path.parent.name
        for name, detect in dets.items():
            faces = detect(gray)
            hit = bool(faces)
            c = per_class[name].setdefault(cls, [0, 0])
            c[0] += hit
            c[1] += 1
            found[name] += hit
            if hit:
                b = faces[0].box
                cx, cy = (b.x + b.w / 2) / w, (b.y + b.h / 2) / h
                centred[name] += 0.25 <= cx <= 0.75 and 0.25 <= cy <= 0.75
            t, c = time.perf_counter(), time.thread_time()
            detect(frame)
            ms[name].append((time.perf_counter() - t) * 1000)
            cpu_ms[name].append((time.thread_time() - c) * 1000)
    n = len(paths)
    rows = {name: {"recall": found[name] / n, "recall_centred": centred[name] / n,
                   "per_class_recall": {c: v[0] / v[1] for c, v in sorted(per_class[name].items())},
                   "cpu_ms_per_320px_frame_median": float(np.median(cpu_ms[name])),
                   "ms_per_320px_frame_median": float(np.median(ms[name])),
                   "ms_p90": float(np.percentile(ms[name], 90))} for name in dets}
    result = {"photos": n, "data": str(args.data), "threads": 1,
              "machine": f"{platform.processor() or platform.machine()}, shared with other jobs",
              "torch": torch.__version__, "opencv": cv2.__version__, "detectors": rows}
    figures = {"photos": n, "detectors": {
        name: {"recall": round(r["recall"], 4),
               "cpu_ms_per_320px_frame_median": round(r["cpu_ms_per_320px_frame_median"], 2)}
        for name, r in rows.items()}}
    out = results.write(args.results, results.make(args.name, figures, result))
    print(f"{n} webfaces-dev photos; one thread; CPU ms and wall ms per 320 px frame (median)")
    print(f"{'detector':22} {'recall':>7} {'centred':>8} {'cpu ms':>7} {'wall ms':>7}  per class")
    for name, r in rows.items():
        pc = " ".join(f"{c} {v:.2f}" for c, v in r["per_class_recall"].items())
        print(f"{name:22} {r['recall']:7.3f} {r['recall_centred']:8.3f} "
              f"{r['cpu_ms_per_320px_frame_median']:7.2f} {r['ms_per_320px_frame_median']:7.2f}"
              f"  {pc}")
    print("saved", out)


if __name__ == "__main__":
    main()
