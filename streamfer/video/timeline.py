"""The timeline files of one video (or one live recording): per-frame rows as CSV and
JSON, a plot per face of each class over time, and a summary.

Rows are written as they come, so memory does not grow with the video's length; the plots
and the summary are made from the written CSV at the end. The columns are the contract the
live page's "Download CSV" shares (web/timeline.js `columns`; a test checks they agree).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from streamfer.faces import Box
from streamfer.smooth import smooth_series

log = logging.getLogger(__name__)

FIXED_COLUMNS = ("time_s", "frame", "face_id", "x", "y", "w", "h")
TOP_COLUMN = "top"
CSV_NAME, JSON_NAME, SUMMARY_NAME = "timeline.csv", "timeline.json", "summary.json"
MAX_PLOTS = 16  # faces plotted, those seen in the most frames first


def columns(classes: list[str]) -> list[str]:
    """time_s, frame, face_id, x, y, w, h, one probability per class, top class."""
    return [*FIXED_COLUMNS, *classes, TOP_COLUMN]


def plot_name(face_id: int) -> str:
    return f"face-{face_id}.png"


@dataclass(frozen=True)
class Row:
    """One face in one processed frame."""

    time_s: float
    frame: int
    face_id: int
    box: Box
    probs: np.ndarray  # one per class, sums to 1


class TimelineWriter:
    """Writes timeline.csv and timeline.json row by row; `close` adds the plots and the
    summary and returns the summary."""

    def __init__(self, out_dir: Path, classes: list[str], about: dict[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.classes = list(classes)
        self.about = about
        self._csv_file: TextIO = (self.out_dir / CSV_NAME).open("w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(columns(self.classes))
        self._json: TextIO = (self.out_dir / JSON_NAME).open("w")
        head = json.dumps({**about, "classes": self.classes, "columns": columns(self.classes)})
        self._json.write(head[:-1] + ', "rows": [')
        self._rows = 0

    def write(self, row: Row) -> None:
        probs = [round(float(p), 5) for p in row.probs]
        top = self.classes[int(np.argmax(row.probs))]
        b = row.box
        self._csv.writerow([f"{row.time_s:.3f}", row.frame, row.face_id, b.x, b.y, b.w, b.h,
                            *probs, top])
        self._json.write(("," if self._rows else "") + "\n" + json.dumps(
            {"time_s": round(row.time_s, 3), "frame": row.frame, "face_id": row.face_id,
             "box": b.to_list(), "probs": dict(zip(self.classes, probs, strict=True)),
             "top": top}))
        self._rows += 1

    def abort(self) -> None:
        self._csv_file.close()
        self._json.close()

    def close(self, *, frames_processed: int, smooth_ms: float,
              seconds_per_frame: float) -> dict[str, Any]:
        self._json.write("\n]}\n")
        self.abort()
        series = read_series(self.out_dir / CSV_NAME, self.classes)
        summary = summarise(series, self.classes, seconds_per_frame)
        summary = {**self.about, "classes": self.classes, "frames_processed": frames_processed,
                   "rows": self._rows, "smooth_ms": smooth_ms, **summary}
        plotted = sorted(series, key=lambda f: -len(series[f][0]))[:MAX_PLOTS]
        if not plots_available():
            log.info("no per-face plots: matplotlib is not installed "
                     "(pip install 'streamfer[plots]')")
            plotted = []
        for face_id in plotted:
            times, probs = series[face_id]
            plot_face(self.out_dir / plot_name(face_id), face_id, times, probs, self.classes,
                      smooth_ms)
        summary["plots"] = {str(f): plot_name(f) for f in sorted(plotted)}
        (self.out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=1) + "\n")
        return summary


def read_series(path: Path, classes: list[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """face id -> (times in s, T x C probabilities), from a timeline CSV."""
    times: dict[int, list[float]] = defaultdict(list)
    probs: dict[int, list[list[float]]] = defaultdict(list)
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            face = int(rec["face_id"])
            times[face].append(float(rec["time_s"]))
            probs[face].append([float(rec[c]) for c in classes])
    return {f: (np.asarray(times[f]), np.asarray(probs[f]).reshape(-1, len(classes)))
            for f in times}


def summarise(series: dict[int, tuple[np.ndarray, np.ndarray]], classes: list[str],
              seconds_per_frame: float) -> dict[str, Any]:
    """Per face: frames seen, first and last time, and the share of its frames (of its time)
    that each class was the top one."""
    faces = []
    for face_id in sorted(series):
        times, probs = series[face_id]
        tops = Counter(int(i) for i in np.argmax(probs, axis=1))
        n = len(times)
        faces.append({"face_id": face_id, "frames": n, "first_s": round(float(times[0]), 3),
                      "last_s": round(float(times[-1]), 3),
                      "seconds": round(n * seconds_per_frame, 3),
                      "share": {c: round(tops.get(i, 0) / n, 4) for i, c in enumerate(classes)},
                      "mean_probs": {c: round(float(v), 4)
                                     for c, v in zip(classes, probs.mean(0), strict=True)}})
    return {"faces": faces}


def plots_available() -> bool:
    """matplotlib is an extra (`streamfer[plots]`): the serving install stays small, and the
    CSV, JSON and summary need none of it."""
    return importlib.util.find_spec("matplotlib") is not None


def plot_face(path: Path, face_id: int, times: np.ndarray, probs: np.ndarray,
              classes: list[str], smooth_ms: float) -> None:
    """One line per class over time (smoothed as the live page does when `smooth_ms` > 0)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = smooth_series(times, probs, smooth_ms) if smooth_ms > 0 else probs
    fig = Figure(figsize=(10, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, name in enumerate(classes):
        ax.plot(times, shown[:, i], label=name, linewidth=1.2)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    smoothing = f", smoothed ({smooth_ms:g} ms)" if smooth_ms > 0 else ""
    ax.set_title(f"face {face_id}{smoothing}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
