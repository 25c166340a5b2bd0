"""webfaces-dev through the page's own detector and crop in headless Chromium, then the real
server: per-class recall and balanced accuracy as phone users get them.

    python -m bench.page_accuracy                   # every photo, the page's own detector
    python -m bench.page_accuracy --limit 60 --detector blazeface
                                                    # -> bench/results/<machine>/page_accuracy.json

The real server (`python -m streamfer.serve`, the shipped model, CPU, one worker) serves the
page; Chromium opens it at a phone's viewport (camera refused, so the page's own client
stays idle) and imports the page's ES modules into that window: web/detectors.js
`chooseDetector` with the server's greeting (its `framing` and `page_detector`), as the page
does after connecting, web/capture.js `FrameGrabber`, web/stream.js `StreamClient` (its
socket, web/protocol.js `packFrame`) and web/smooth.js `argmax`. web/streamfer.js `_step`
itself is not called (it skips unchanged frames and paces itself to the camera), so its steps
after detection are taken here the way it takes them: the face's crop (the Worker's own, else
`FrameGrabber.faceCrop` with the detector's framing), or the full frame where the detector
cannot tell, sent as a WebSocket frame with the crop flag (or without it), one at a time,
never faster than the greeting's max_fps.

Protocol: each photo (webfaces-dev is evaluation only: nothing is tuned on it) is pasted
300 px square in the middle of a 640x480 camera scene (tests/kit/fakecam.py `scene`, the
browser tests' own), sent to the page as a JPEG (OpenCV's default quality) and drawn into a
canvas that stands for the camera's <video> (it answers `videoWidth`/`videoHeight`); one frame
per photo, in the seeded order, the detector keeping its tracking across photos as the page
does (every face is in the same place). The top class (argmax of the reply's probabilities,
as the page shows it) is scored against the folder's label (bench/webfaces_e2e.py's names):
a photo with no face found, or no answer, counts as wrong, as the page then shows nothing;
balanced accuracy = mean per-class recall; also the share of photos with a face.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.webfaces_e2e import LABELS
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from tests.kit.browserkit import open_page, phone, serving
from tests.kit.fakecam import gradient_frames, jpeg, scene, write_y4m

log = logging.getLogger("bench.page_accuracy")

PROTOCOL = ("every photo pasted 300 px square in a 640x480 camera scene, through the page's "
            "detector and crop in headless Chromium and the server's WebSocket; the top class "
            "scored against the folder's label; a photo with no face found counts as wrong")
NONE = "(none)"  # the confusion matrix's column for photos the page sent nothing for

# In the page's window: the page's own modules, one detector chosen as the page chooses it.
SETUP = """async (wanted) => {
  const base = new URL(".", location.href);
  const load = (file) => import(new URL(file, base).href);
  const { chooseDetector } = await load("detectors.js");
  const { FrameGrabber } = await load("capture.js");
  const { socketUrl, STATUS } = await load("protocol.js");
  const { StreamClient } = await load("stream.js");
  const { argmax } = await load("smooth.js");
  const socket = new StreamClient(socketUrl(base));
  const hello = await new Promise((resolve) => {
    socket.addEventListener("hello", (e) => resolve(e.detail.hello), { once: true });
    socket.start();
  });
  const notes = [];
  const detector = await chooseDetector(hello, wanted || undefined, (m) => notes.push(m),
                                        base.href);
  const camera = document.createElement("canvas");  // stands for the camera's <video>
  camera.width = 640;
  camera.height = 480;
  Object.defineProperty(camera, "videoWidth", { get: () => camera.width });
  Object.defineProperty(camera, "videoHeight", { get: () => camera.height });
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  let lastSent = -Infinity;
  const once = (bytes, isCrop) => new Promise((resolve) => {
    const id = socket.send(bytes, isCrop, {});
    if (id === null) { resolve({ status: "not sent" }); return; }
    const done = (reply) => {
      socket.removeEventListener("result", onResult);
      socket.removeEventListener("lost", onLost);
      resolve(reply);
    };
    const onResult = (e) => { if (e.detail.reply.id === id) done(e.detail.reply); };
    const onLost = (e) => { if (e.detail.id === id) done({ status: "lost" }); };
    socket.addEventListener("result", onResult);
    socket.addEventListener("lost", onLost);
  });
  const ask = async (bytes, isCrop) => {  // paced as the page is; a dropped frame is re-sent
    let reply = null;
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const wait = lastSent + 1000 / socket.limits.max_fps - performance.now();
      if (wait > 0) await sleep(wait);
      lastSent = performance.now();
      reply = await once(bytes, isCrop);
      if (reply.status !== STATUS.DROPPED && reply.status !== "not sent") return reply;
      await sleep(100 * (attempt + 1));
    }
    return reply;
  };
  window.__bench = { detector, camera, ctx: camera.getContext("2d"), ask, argmax, STATUS,
                     grabber: new FrameGrabber() };
  return { name: detector.name, thread: detector.thread, framing: detector.framing, notes,
           model: hello.model, classes: hello.classes, limits: socket.limits };
}"""

# One photo: the frame drawn as the camera's, then what the page's _step does with it.
ONE = """async (b64) => {
  const B = window.__bench;
  const blob = await (await fetch("data:image/jpeg;base64," + b64)).blob();
  const bitmap = await createImageBitmap(blob);
  B.ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const t0 = performance.now();
  const found = await B.detector.detect(B.camera);
  const detectMs = performance.now() - t0;
  if (found === null) return { sent: false, status: "no face found", detect_ms: detectMs };
  let bytes;
  if (found) {
    bytes = found.crop || (await B.grabber.faceCrop(B.camera, found.box, B.detector.framing)).bytes;
  } else {
    bytes = (await B.grabber.fullFrame(B.camera)).bytes;
  }
  const reply = await B.ask(bytes, Boolean(found));
  return {
    sent: true, crop: Boolean(found), detect_ms: detectMs, bytes: bytes.byteLength,
    box: found ? [found.box.x, found.box.y, found.box.w, found.box.h].map(Math.round) : null,
    status: reply.status, code: reply.code || reply.reason || null,
    top: reply.status === B.STATUS.OK ? B.argmax(reply.probs) : null,
  };
}"""


@dataclass(frozen=True)
class PageAccuracyConfig:
    """This benchmark's settings (streamfer.cli builds its flags from them)."""

    data: str = opt(str(DEFAULT_DATASETS / "webfaces-dev"), "webfaces-dev folder (CLASS/*.jpg)")
    model: str = opt(str(DEFAULT_MODEL), "the model the server runs")
    limit: int = opt(0, "photos (seeded sample); 0: all", at_least=0)
    seed: int = opt(0, "seeds the sample and the order the photos are shown in")
    detector: str = opt("", "the page's ?detector= (empty: the page's own choice)")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("page_accuracy", "result name")


def photo_paths(root: Path, limit: int, seed: int) -> list[Path]:
    """The labelled photos, in the seeded order (the first `limit` of it, unless 0)."""
    paths = sorted(p for p in root.glob("*/*.jpg") if p.parent.name in LABELS)
    if not paths:
        raise SystemExit(f"no photos under {root} (CLASS/*.jpg, CLASS one of {sorted(LABELS)})")
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in (order[:limit] if limit else order)]


def camera_frame(path: Path) -> bytes | None:
    """The photo as the fake cameras show it (fakecam `scene`), JPEG; None if unreadable."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return jpeg(scene(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))


def score(rows: list[dict[str, Any]], classes: tuple[str, ...]) -> dict[str, Any]:
    """training/evaluate.py `scores`, with one more predicted column for "nothing shown"."""
    from training.evaluate import scores

    columns = (*classes, NONE)
    true = np.array([columns.index(r["label"]) for r in rows])
    pred = np.array([columns.index(r["top"] or NONE) for r in rows])
    out = scores(true, pred, columns)
    for key in ("recall", "support"):
        out[key].pop(NONE)
    out["confusion_columns"] = list(columns)
    return out


def run(args: PageAccuracyConfig, paths: list[Path]) -> dict[str, Any]:
    """Every photo through the page in Chromium and the server; rows and the page's setup."""
    from playwright.sync_api import sync_playwright

    root = Path(args.data)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, \
            serving(Path(args.model), Path(tmp) / "server.log") as server, \
            sync_playwright() as pw:
        idle = write_y4m(Path(tmp) / "idle.y4m", gradient_frames(2))
        with phone(pw, idle, allow_camera=False) as context:
            page = open_page(context, server.url)
            setup = page.evaluate(SETUP, args.detector)
            log.info("detector %s (%s)", setup["name"], setup["thread"])
            for note in setup["notes"]:
                log.info("page: %s", note)
            t0 = time.time()
            for i, path in enumerate(paths):
                row: dict[str, Any] = {"photo": str(path.relative_to(root)),
                                       "label": LABELS[path.parent.name]}
                frame = camera_frame(path)
                if frame is None:
                    row.update(sent=False, status="unreadable", top=None)
                else:
                    row.update(page.evaluate(ONE, base64.b64encode(frame).decode("ascii")))
                    row["detect_ms"] = round(row["detect_ms"], 1)
                    row.setdefault("top", None)
                rows.append(row)
                if (i + 1) % 100 == 0:
                    log.info("%d/%d photos, %.0f s", i + 1, len(paths), time.time() - t0)
            seconds = time.time() - t0
            errors = list(page.errors)
        # The server's own count of what reached it, by kind (a re-sent dropped frame too).
        received = {kind: int(server.frames_by_kind(kind)) for kind in ("crop", "full")}
    return {"setup": setup, "rows": rows, "seconds": seconds, "page_errors": errors,
            "server_frames": received}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse(PageAccuracyConfig, argv, prog="python -m bench.page_accuracy",
                 description=__doc__.split("\n\n")[0])
    paths = photo_paths(Path(args.data), args.limit, args.seed)
    t0 = time.time()
    out = run(args, paths)
    setup, rows = out["setup"], out["rows"]
    classes = tuple(setup["classes"])
    missing = sorted({r["label"] for r in rows} - set(classes))
    if missing:
        raise SystemExit(f"the model has no class {missing} (its classes: {list(classes)})")
    s = score(rows, classes)
    faces = sum(r["top"] is not None for r in rows) / len(rows)
    model = Path(args.model)
    figures = {"model": model.stem, "set": Path(args.data).name, "protocol": PROTOCOL,
               "detector": setup["name"], "photos": len(rows), "faces_found": round(faces, 4),
               "balanced_accuracy": round(s["balanced_accuracy"], 4),
               "accuracy": round(s["accuracy"], 4), "recall": s["recall"]}
    details = {"data": args.data, "model": os.path.relpath(model),
               "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
               "protocol": __doc__.split("\n\n")[3], "seed": args.seed,
               "detector": {k: setup[k] for k in ("name", "thread", "framing", "notes")},
               "limits": setup["limits"], "support": s["support"],
               "confusion": s["confusion"], "confusion_columns": s["confusion_columns"],
               "statuses": {st: sum(r["status"] == st for r in rows)
                            for st in sorted({r["status"] for r in rows})},
               "page_errors": out["page_errors"], "server_frames": out["server_frames"],
               "seconds_photos": out["seconds"],
               "seconds": time.time() - t0, "rows": rows}
    written = results.write(args.results, results.make(args.name, figures, details))
    print(f"{len(rows)} {Path(args.data).name} photos through the page's detector "
          f"\"{setup['name']}\" ({setup['thread']}) and the server ({model.name}), "
          f"{out['seconds']:.0f} s")
    print(f"{'class':12} {'photos':>6} {'recall':>7}")
    for c, r in s["recall"].items():
        shown = f"{100 * r:6.1f}%" if s["support"][c] else "      -"
        print(f"{c:12} {s['support'][c]:6d} {shown}")
    print(f"faces found {100 * faces:.1f}%  balanced accuracy {100 * s['balanced_accuracy']:.1f}%"
          f"  accuracy {100 * s['accuracy']:.1f}%")
    print("saved", written)


if __name__ == "__main__":
    main()
