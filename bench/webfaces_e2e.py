"""End to end on webfaces-dev through the real server's /api/predict, per face detector.

    python -m bench.webfaces_e2e --data ../shared/datasets/webfaces-dev \\
        --results bench/results    # -> bench/results/<machine>/webfaces_e2e.json

Starts `python -m streamfer.serve` (shipped model, CPU) once per `--detectors` entry on a
free loopback port, posts every photo as a user would (multipart `image`), and scores the
largest face's `top` against the folder's label. webfaces-dev is evaluation only: one number
per configuration, nothing chosen on it. Protocol: the paper's five classes (angry->anger,
happy->happiness, neutral, sad->sadness, surprise); a photo where the server finds no face,
or which it refuses (an error reply; its code and file are listed under "errors"), counts as
wrong (it is what a user gets); balanced accuracy = mean per-class recall; also the
share of photos with a face, and balanced accuracy over those photos only. Each detector's
`rows` in the file say what every photo got.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamfer import results
from streamfer.cli import opt, parse
from streamfer.faces import BLAZEFACE, HAAR
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from streamfer.protocol import ERROR, OK
from streamfer.server.config import DETECTOR_CHOICES
from tests.kit.serverproc import running_server

PROTOCOL = ("every photo posted to /api/predict, the largest face's top class scored against the "
            "folder's label; a photo with no face found (or refused) counts as wrong")
LABELS = {"angry": "anger", "happy": "happiness", "neutral": "neutral", "sad": "sadness",
          "surprise": "surprise"}


def post(url: str, data: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, body, {"Content-Type":
                                             f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:  # an error reply (e.g. 400 unreadable image) is JSON too
        return json.loads(e.read())


def score(rows: list[tuple[str, str | None]]) -> dict:
    classes = sorted(set(LABELS.values()))
    recall = {}
    recall_found = {}
    for c in classes:
        mine = [p for t, p in rows if t == c]
        found = [p for p in mine if p is not None]
        recall[c] = sum(p == c for p in mine) / max(1, len(mine))
        recall_found[c] = sum(p == c for p in found) / max(1, len(found))
    return {"photos": len(rows), "with_face": sum(p is not None for _, p in rows) / len(rows),
            "balanced_accuracy": float(np.mean(list(recall.values()))),
            "per_class_recall": recall,
            "balanced_accuracy_faces_found": float(np.mean(list(recall_found.values())))}


@dataclass(frozen=True)
class WebfacesE2EConfig:
    data: str = opt(str(DEFAULT_DATASETS / "webfaces-dev"), "webfaces-dev folder (CLASS/*.jpg)")
    model: str = opt(str(DEFAULT_MODEL), "the model the server runs")
    detectors: tuple[str, ...] = opt((HAAR, BLAZEFACE), "one server per detector, in turn",
                                     DETECTOR_CHOICES, comma=True)
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("webfaces_e2e", "result name")
    limit: int = opt(0, "photos, spread over the folder (0: all)")


def main(argv: list[str] | None = None) -> None:
    args = parse(WebfacesE2EConfig, argv, prog="python -m bench.webfaces_e2e",
                 description=__doc__.split("\n")[0])
    paths = sorted(p for p in Path(args.data).glob("*/*.jpg") if p.parent.name in LABELS)
    if args.limit:
        paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
    model = Path(args.model)
    result = {"data": args.data, "model": os.path.relpath(model),
              "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
              "protocol": __doc__.split("\n\n")[2], "detectors": {}}
    for det in args.detectors:
        with running_server(model, ["--device", "cpu", "--detector", det],
                            log_path=Path(f"/tmp/webfaces_e2e_{det}.log")) as server:
            url = server.url.replace("ws://", "http://").replace("/ws", "/api/predict")
            rows, t0, errors = [], time.time(), {}
            for path in tqdm(paths, desc=det, mininterval=5):
                reply = post(url, path.read_bytes())
                rows.append((LABELS[path.parent.name],
                             reply.get("top") if reply.get("status") == OK else None))
                if reply.get("status") == ERROR:  # counted as wrong, as a user gets it
                    errors.setdefault(reply.get("code", "?"), []).append(str(path))
            result["detectors"][det] = {
                **score(rows), "errors": errors,
                "face_detector": server.health.get("face_detector"),
                "seconds": time.time() - t0,
                # one per photo, as bench.page_accuracy's (training.people reads both)
                "rows": [{"photo": f"{p.parent.name}/{p.name}", "label": label, "top": top}
                         for p, (label, top) in zip(paths, rows, strict=True)]}
    figures = {"model": model.stem, "set": Path(args.data).name, "protocol": PROTOCOL,
               "detectors": {det: {"photos": r["photos"], "with_face": round(r["with_face"], 4),
                                   "balanced_accuracy": round(r["balanced_accuracy"], 4)}
                             for det, r in result["detectors"].items()}}
    out = results.write(args.results, results.make(args.name, figures, result))
    print(f"{len(paths)} webfaces-dev photos through /api/predict ({Path(args.model).name})")
    for det, r in result["detectors"].items():
        pc = " ".join(f"{c} {v:.2f}" for c, v in r["per_class_recall"].items())
        print(f"{det:10} faces {r['with_face']:.3f}  balanced acc {r['balanced_accuracy']:.3f}"
              f"  (on photos with a face {r['balanced_accuracy_faces_found']:.3f})  {pc}")
    print("saved", out)


if __name__ == "__main__":
    main()
