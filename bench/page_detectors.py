"""In-page face detectors in headless Chromium on this CPU: recall and milliseconds per frame
on web photos composited into camera-like frames, and the framing calibration of their boxes.

    python -m bench.page_detectors                       # 300 webfaces-dev photos x 6 variants
    python -m bench.page_detectors --limit 0             # every photo
    python -m bench.page_detectors --calibrate           # the page's BlazeFace framing on FER2013

Frames (640x480, like a front camera's default stream): each webfaces-dev photo (evaluation
only: nothing here is tuned on it) is pasted onto a background (skimage's coffee, rocket or a
gray gradient, in turn) as `centre` (photo 300 px square in the middle), `large` (440 px, a
selfie held close), `small` (160 px), `offcentre` (300 px, at a seeded random place near an
edge) and `rot+20` / `rot-20` (`centre` turned about the photo's centre).
webfaces-dev photos show one face in the middle of the photo, so a face counts as found when
a detected box is centred within the middle half of the pasted photo and its side is 15-130%
of the photo's.

Detectors (`--models`, side by side in one run), each `NAME[/WHERE][@WIDTH]`:
- `short`, `full`: @mediapipe/face_detection's BlazeFace as the page runs it; `/cpu` runs the
  network in the package's wasm runtime (XNNPACK; its `useCpuInference` option, what the page
  uses: streamfer.server.vendor.INFERENCE), `/webgl` on WebGL (the package's default off iOS);
- `tasks/cpu`, `tasks/gpu`: @mediapipe/tasks-vision's FaceDetector (installed in a scratch
  folder, `--tasks-vision`) on `--tasks-model` (default: the short-range .tflite of
  @mediapipe/face_detection); a detector that fails to load is reported with its error;
- `faceapi-tiny/webgl`, `faceapi-tiny/cpu`: @vladmandic/face-api's TinyFaceDetector
  (`--faceapi`);
- `@WIDTH`: the frame is drawn into a canvas WIDTH px wide first.
The page fetches each frame, draws it into a canvas and times only the detector's call;
the server's Haar cascade (streamfer.detect.FaceDetector) runs on the same frames in Python
for comparison. Prints a table and writes bench/results/<machine>/page_detectors.json.

`--calibrate` measures how FER2013 frames a face relative to the page's BlazeFace box, exactly
as training/framing.py does for the server's detectors (Training faces enlarged to 192 px and
padded with 25% edge pixels; medians of image side / box side and of the centre offsets), and
writes bench/results/<machine>/page_framing_blazeface.json: streamfer/faces.py FRAMING["blazeface"].

The detectors come from web/node_modules (`cd web && npm ci`), served by streamfer.server.vendor as
the real server serves them. Chromium: /usr/bin/chromium (headless, software WebGL).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.machine import describe, machine_info
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.detect import FaceDetector
from streamfer.server import vendor

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


SHARED = ROOT.parent / "shared" / "datasets"


@dataclass(frozen=True)
class PageDetectorsConfig:
    """This benchmark's settings (streamfer.cli builds its flags from them)."""

    data: Path = opt(SHARED / "webfaces-dev", "webfaces-dev photos (evaluation only)")
    limit: int = opt(300, "photos (seeded sample); 0: all")
    models: tuple[str, ...] = opt(("short/webgl", "short/cpu"), "detectors to run side by "
                                  "side, each NAME[/WHERE][@WIDTH] (module docstring); "
                                  "repeatable or comma-separated")
    faceapi: Path | None = opt(None, "a folder holding an npm install of @vladmandic/face-api, "
                               "for faceapi-tiny/webgl or faceapi-tiny/cpu")
    tasks_vision: Path | None = opt(None, "a folder holding an npm install of "
                                    "@mediapipe/tasks-vision, for tasks/cpu or tasks/gpu")
    tasks_model: Path | None = opt(None, "the .tflite tasks-vision's FaceDetector loads "
                                   "(default: @mediapipe/face_detection's short range)")
    haar: bool = opt(True, "also the server's Haar cascade on the same frames, in Python")
    calibrate: bool = opt(False, "measure the page's BlazeFace framing on FER2013 instead")
    fer_root: Path = opt(SHARED / "fer2013", "FER2013 folder (for --calibrate)")
    fer_limit: int = opt(2000, "FER2013 Training faces for --calibrate")
    seed: int = opt(0, "seed of the photo sample and the off-centre placements")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str | None = opt(None, "result name (default: page_detectors, or "
                           "page_framing_blazeface with --calibrate)")

    def __post_init__(self) -> None:
        for spec in self.specs():
            parse_spec(spec)
        if any(s.startswith("faceapi") for s in self.specs()) and not self.faceapi:
            raise ValueError("faceapi-tiny needs --faceapi FOLDER")
        if any(s.startswith("tasks") for s in self.specs()) and not self.tasks_vision:
            raise ValueError("tasks needs --tasks-vision FOLDER")

    def specs(self) -> list[str]:
        return [s.strip() for m in self.models for s in m.split(",") if s.strip()]


W, H = 640, 480
VARIANTS = ("centre", "large", "small", "offcentre", "rot+20", "rot-20")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]

HARNESS = """<!doctype html><html><head><meta charset="utf-8">
<script src="%(script)s"></script></head><body><script>
// window.detect(canvas) -> boxes [x, y, w, h] in canvas pixels
async function startBlazeFace(model, where) {
  const fd = new FaceDetection({ locateFile: (f) => "%(base)s" + f });
  // (minDetectionConfidence aborts this build's graph; default 0.5)
  fd.setOptions({ model, useCpuInference: where === "cpu" });
  let last = null;
  fd.onResults((r) => { last = r; });
  await fd.initialize();
  window.detect = async (canvas) => {
    await fd.send({ image: canvas });
    return last.detections.map(({ boundingBox: b }) => [
      (b.xCenter - b.width / 2) * canvas.width, (b.yCenter - b.height / 2) * canvas.height,
      b.width * canvas.width, b.height * canvas.height]);
  };
}
async function startTasks(where) {  // @mediapipe/tasks-vision's FaceDetector (--tasks-vision)
  const { FaceDetector, FilesetResolver } = await import("/tasks/vision_bundle.mjs");
  const fileset = await FilesetResolver.forVisionTasks("/tasks/wasm");
  const det = await FaceDetector.createFromOptions(fileset, {
    baseOptions: { modelAssetPath: "%(tasks_model)s", delegate: where.toUpperCase() },
    runningMode: "IMAGE",
  });
  window.detect = async (canvas) => det.detect(canvas).detections.map(({ boundingBox: b }) =>
    [b.originX, b.originY, b.width, b.height]);
}
async function startFaceApi(backend) {  // @vladmandic/face-api's TinyFaceDetector (--faceapi)
  const faceapi = await import("/faceapi/dist/face-api.esm.js");
  await faceapi.tf.setBackend(backend);
  await faceapi.tf.ready();
  await faceapi.nets.tinyFaceDetector.loadFromUri("/faceapi/model");
  const options = new faceapi.TinyFaceDetectorOptions({ inputSize: 320, scoreThreshold: 0.5 });
  window.detect = async (canvas) => (await faceapi.detectAllFaces(canvas, options))
    .map((d) => [d.box.x, d.box.y, d.box.width, d.box.height]);
}
async function startLitert(range, where) {  // web/detection/ (LiteRT.js), as the page runs it
  const { createFaceDetector } = await import("/detection/index.js");
  const det = await createFaceDetector({ baseUrl: "%(runtime)s", range, worker: where === "worker",
                                         track: false });
  window.detectorInfo = { runtime: det.runtime, inWorker: det.inWorker };
  window.detect = async (canvas) => (await det.detect(canvas)).faces.map(({ box: b }) =>
    [b.x, b.y, b.w, b.h]);
}
window.startDetector = async (name, where) => {
  const t0 = performance.now();
  if (name.startsWith("litert-")) await startLitert(name.slice(7), where);
  else if (name === "faceapi-tiny") await startFaceApi(where);
  else if (name === "tasks") await startTasks(where);
  else await startBlazeFace(name, where);
  return performance.now() - t0;
};
window.runFrames = async (first, count, width) => {
  const out = [];
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  for (let i = first; i < first + count; i++) {
    const blob = await (await fetch(`frame/${i}.jpg`)).blob();
    const bmp = await createImageBitmap(blob);
    const t = performance.now();  // timed: the page's own downscale + the detector
    const w = width || bmp.width;
    const h = Math.round((bmp.height * w) / bmp.width);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    ctx.drawImage(bmp, 0, 0, canvas.width, canvas.height);
    const boxes = await window.detect(canvas);
    const ms = performance.now() - t;
    const k = bmp.width / canvas.width;
    out.push({ ms, boxes: boxes.map((b) => b.map((v) => v * k)) });
  }
  return out;
};
</script></body></html>"""


@dataclass
class Frame:
    image: np.ndarray  # RGB
    kind: str
    photo: str
    rect: tuple[float, float, float]  # pasted photo: centre x, centre y, side (frame pixels)


def backgrounds() -> list[np.ndarray]:
    from skimage import data as skdata

    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    grad = (90 + 80 * (xx / W) + 40 * np.sin(yy / H * np.pi)).astype(np.uint8)
    return [cv2.resize(skdata.coffee(), (W, H), interpolation=cv2.INTER_AREA),
            cv2.resize(skdata.rocket(), (W, H), interpolation=cv2.INTER_AREA),
            np.repeat(grad[..., None], 3, axis=2)]


def paste(bg: np.ndarray, photo: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    out = bg.copy()
    img = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA if side < photo.shape[0]
                     else cv2.INTER_LINEAR)
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    out[y0:y0 + side, x0:x0 + side] = img
    return out


def camera_frames(photo: np.ndarray, name: str, bg: np.ndarray,
                  rng: np.random.Generator) -> list[Frame]:
    """The six variants of one photo (see the module's docstring)."""
    frames = []
    for kind, side in (("centre", 300), ("large", 440), ("small", 160)):
        frames.append(Frame(paste(bg, photo, W / 2, H / 2, side), kind, name,
                            (W / 2, H / 2, side)))
    side = 300
    half = side / 2
    cx = rng.choice([half + 4, W - half - 4]) + rng.uniform(-40, 40)
    cy = rng.uniform(half + 4, H - half - 4)
    cx = float(np.clip(cx, half + 2, W - half - 2))
    frames.append(Frame(paste(bg, photo, cx, cy, side), "offcentre", name, (cx, cy, side)))
    centre = frames[0].image
    for angle in (20, -20):
        m = cv2.getRotationMatrix2D((W / 2, H / 2), angle, 1.0)
        turned = cv2.warpAffine(centre, m, (W, H), borderMode=cv2.BORDER_REFLECT)
        frames.append(Frame(turned, f"rot{angle:+d}", name, (W / 2, H / 2, 300)))
    return frames


def found(boxes: list[list[float]], rect: tuple[float, float, float]) -> bool:
    cx, cy, side = rect
    for x, y, w, h in boxes:
        bx, by, bside = x + w / 2, y + h / 2, max(w, h)
        if (abs(bx - cx) <= side / 4 and abs(by - cy) <= side / 4
                and 0.15 * side <= bside <= 1.3 * side):
            return True
    return False


class Site:
    """An aiohttp server on a free 127.0.0.1 port, in a thread: the harness, the frames (JPEG,
    quality 95) and the vendored detector, served by streamfer.server.vendor (and the scratch
    installs of other candidates, when given)."""

    def __init__(self, package: vendor.VendorPackage, faceapi: Path | None = None,
                 tasks_vision: Path | None = None, tasks_model: Path | None = None) -> None:
        self.package = package
        self.faceapi = faceapi
        self.tasks_vision = tasks_vision
        self.tasks_model = tasks_model
        self.frames: list[bytes] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def set_frames(self, images: list[np.ndarray]) -> None:
        self.frames = [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                       for im in images]

    def start(self) -> str:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(30)
        return f"http://127.0.0.1:{self.port}/"

    def _run(self) -> None:
        from aiohttp import web

        tasks_model = ("/tasks-model.tflite" if self.tasks_model
                       else "/" + self.package.url + "face_detection_short_range.tflite")
        runtime = "/" + self.package.runtime.url if self.package.runtime else ""
        page = HARNESS % {"script": self.package.url + vendor.SCRIPT, "base": self.package.url,
                          "tasks_model": tasks_model, "runtime": runtime}

        async def index(_: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html")

        async def frame(request: web.Request) -> web.Response:
            return web.Response(body=self.frames[int(request.match_info["i"])],
                                content_type="image/jpeg")

        async def main() -> None:
            app = web.Application()
            app.router.add_get("/", index)
            app.router.add_get("/frame/{i}.jpg", frame)
            vendor.add_routes(app, self.package)
            app.router.add_static("/detection", ROOT / "web" / "detection")
            # The Worker cuts the crop with the page's geometry (web/detection/worker.js).
            app.router.add_get("/crop.js", lambda _: web.FileResponse(ROOT / "web" / "crop.js"))
            if self.faceapi:
                app.router.add_static("/faceapi", self.faceapi)
            if self.tasks_vision:
                app.router.add_static("/tasks", self.tasks_vision)
            if self.tasks_model:
                model = self.tasks_model
                app.router.add_get("/tasks-model.tflite", lambda _: web.FileResponse(model))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await asyncio.Event().wait()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())


LITERT = ("litert-auto", "litert-short", "litert-full")  # web/detection/, by its `range`


def parse_spec(spec: str) -> tuple[str, str, int]:
    """`NAME[/WHERE][@WIDTH]` (see the module's docstring) -> (name, where, width or 0)."""
    head, _, width = spec.partition("@")
    name, _, where = head.partition("/")
    if name in ("short", "full"):
        where = where or vendor.INFERENCE
        if where not in ("cpu", "webgl"):
            raise ValueError(f"{spec}: BlazeFace runs on cpu or webgl")
    elif name in LITERT:
        where = where or "worker"
        if where not in ("worker", "main"):
            raise ValueError(f"{spec}: web/detection runs in a worker or on the main thread")
    elif name == "tasks":
        if where not in ("cpu", "gpu"):
            raise ValueError(f"{spec}: tasks-vision's delegates are cpu and gpu")
    elif name == "faceapi-tiny":
        if where not in ("cpu", "webgl"):
            raise ValueError(f"{spec}: face-api's backends here are cpu and webgl")
    else:
        raise ValueError(f"{spec}: unknown detector (short, full, {', '.join(LITERT)}, tasks, "
                         "faceapi-tiny)")
    return name, where, int(width or 0)


def run_in_chromium(url: str, spec: str, count: int, chunk: int = 60) -> dict[str, Any]:
    """Run `spec`'s detector (parse_spec) on frames 0..count-1 of the site at `url`. A
    detector that fails to load gives {"error": its message} instead of frames."""
    name, where, width = parse_spec(spec)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    results: list[dict] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        try:
            init_ms = page.evaluate("([n, w]) => startDetector(n, w)", [name, where])
        except PlaywrightError as exc:
            browser.close()
            error = str(exc).split("\n=== Source Location Trace")[0].strip()
            error = error.removeprefix("Page.evaluate: ").removeprefix("Error: ")
            print(f"  {spec}: failed to load: {error}", flush=True)
            return {"error": error}
        t0 = time.time()
        for first in range(0, count, chunk):
            results += page.evaluate("([a, n, w]) => runFrames(a, n, w)",
                                     [first, min(chunk, count - first), width])
            print(f"  {spec}: {len(results)}/{count} frames, {time.time() - t0:.0f} s",
                  flush=True)
        browser.close()
    return {"init_ms": init_ms, "frames": results}


def haar(frames: list[Frame]) -> dict[str, Any]:
    det = FaceDetector()
    out = []
    for f in frames:
        gray = cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY)
        t = time.perf_counter()
        box = det.detect(gray)
        ms = (time.perf_counter() - t) * 1000
        out.append({"ms": ms, "boxes": [] if box is None else [[box.x, box.y, box.w, box.h]]})
    return {"init_ms": 0.0, "frames": out}


def score(frames: list[Frame], run: dict[str, Any]) -> dict[str, Any]:
    if "error" in run:
        return {"error": run["error"]}
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for f, r in zip(frames, run["frames"], strict=True):
        by_kind[f.kind].append(found(r["boxes"], f.rect))
    hits = [h for v in by_kind.values() for h in v]
    ms = [r["ms"] for r in run["frames"]]
    return {"recall": sum(hits) / len(hits),
            "recall_by_variant": {k: sum(v) / len(v) for k, v in by_kind.items()},
            "ms_median": statistics.median(ms), "ms_p90": float(np.percentile(ms, 90)),
            "init_ms": run["init_ms"], "frames": len(ms)}


def load_photos(root: Path, limit: int, seed: int) -> list[tuple[str, np.ndarray]]:
    paths = sorted(root.glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no photos under {root}")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.permutation(len(paths))[:limit]) if limit else range(len(paths))
    out = []
    for i in pick:
        bgr = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
        side = min(bgr.shape[:2])  # a square from the middle: the face is centred
        y0, x0 = (bgr.shape[0] - side) // 2, (bgr.shape[1] - side) // 2
        out.append((str(paths[i].relative_to(root)),
                    cv2.cvtColor(bgr[y0:y0 + side, x0:x0 + side], cv2.COLOR_BGR2RGB)))
    return out


def benchmark(args: PageDetectorsConfig, package: vendor.VendorPackage) -> dict[str, Any]:
    photos = load_photos(args.data, args.limit, args.seed)
    bgs = backgrounds()
    rng = np.random.default_rng(args.seed)
    frames = [f for i, (name, img) in enumerate(photos)
              for f in camera_frames(img, name, bgs[i % len(bgs)], rng)]
    print(f"{len(photos)} photos -> {len(frames)} frames", flush=True)
    site = Site(package, args.faceapi, args.tasks_vision, args.tasks_model)
    site.set_frames([f.image for f in frames])
    url = site.start()
    rows = {}
    for spec in args.specs():
        rows[f"{spec} (page)"] = score(frames, run_in_chromium(url, spec, len(frames)))
    if args.haar:
        rows["haar (server, Python)"] = score(frames, haar(frames))
    return {"photos": len(photos), "frames": len(frames), "variants": list(VARIANTS),
            "rows": rows}


def calibrate(args: PageDetectorsConfig, package: vendor.VendorPackage) -> dict[str, Any]:
    from training import data as D

    faces = D.load_fer2013(args.fer_root, "train", "fer7")
    order = np.random.default_rng(args.seed).permutation(len(faces))[:args.fer_limit]
    up, pad = 192, 48
    images = []
    for i in sorted(order):
        big = cv2.resize(faces.images[i], (up, up), interpolation=cv2.INTER_CUBIC)
        padded = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        images.append(cv2.cvtColor(padded, cv2.COLOR_GRAY2RGB))
    site = Site(package)
    site.set_frames(images)
    spec = f"{vendor.MODEL}/{vendor.INFERENCE}"  # as the page runs it
    run = run_in_chromium(site.start(), spec, len(images))
    if "error" in run:
        raise SystemExit(f"{spec} failed to load: {run['error']}")
    measured = []
    centre = pad + up / 2
    for r in run["frames"]:
        if not r["boxes"]:
            continue
        x, y, w, h = max(r["boxes"], key=lambda b: b[2] * b[3])
        side = max(w, h)
        measured.append((up / side, (centre - (y + h / 2)) / up, (centre - (x + w / 2)) / up))
    arr = np.array(measured)

    def summary(v: np.ndarray) -> dict[str, float]:
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        return {"median": float(med), "q1": float(q1), "q3": float(q3)}

    return {"detector": spec, "images": len(images), "detected": len(measured),
            "detection_rate": len(measured) / len(images), "scale": summary(arr[:, 0]),
            "shift_y": summary(arr[:, 1]), "shift_x": summary(arr[:, 2]),
            "FRAME_SCALE": round(float(np.median(arr[:, 0])), 3),
            "FRAME_SHIFT_Y": round(float(np.median(arr[:, 1])), 3),
            "ms_median": statistics.median(r["ms"] for r in run["frames"])}


def parse_args(argv: list[str] | None = None) -> PageDetectorsConfig:
    return parse(PageDetectorsConfig, argv, prog="python -m bench.page_detectors",
                 description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    package = vendor.find(ROOT / "web")
    if package is None:
        raise SystemExit(vendor.MISSING)
    t0 = time.time()
    result = calibrate(args, package) if args.calibrate else benchmark(args, package)
    result.update(package=f"{vendor.PACKAGE}@{package.version}", seconds=time.time() - t0,
                  machine=machine_info())
    if args.calibrate:
        figures = {k: result[k] for k in ("images", "detected", "FRAME_SCALE", "FRAME_SHIFT_Y")}
    else:
        figures = {"photos": result["photos"], "frames": result["frames"],
                   "package": result["package"],
                   "detectors": {name: {"recall": round(row["recall"], 4),
                                        "ms_median": round(row["ms_median"], 1),
                                        "ms_p90": round(row["ms_p90"], 1)}
                                 for name, row in result["rows"].items() if "error" not in row}}
    name = args.name or ("page_framing_blazeface" if args.calibrate else "page_detectors")
    out = results.write(args.results, results.make(name, figures, result))
    print(describe(result["machine"]))
    if args.calibrate:
        print(f"detected {result['detected']}/{result['images']}; FRAME_SCALE "
              f"{result['FRAME_SCALE']} FRAME_SHIFT_Y {result['FRAME_SHIFT_Y']} "
              f"(shift_x {result['shift_x']['median']:.3f}) -> {out}")
        return
    print(f"{result['photos']} webfaces-dev photos, {result['frames']} frames 640x480")
    head = f"{'detector':26} {'recall':>7} {'ms med':>7} {'ms p90':>7}  " + " ".join(
        f"{v:>9}" for v in VARIANTS)
    print(head)
    for name, row in result["rows"].items():
        if "error" in row:
            print(f"{name:26} failed to load: {row['error']}")
            continue
        print(f"{name:26} {100 * row['recall']:6.1f}% {row['ms_median']:7.1f} "
              f"{row['ms_p90']:7.1f}  " + " ".join(
                  f"{100 * row['recall_by_variant'][v]:8.1f}%" for v in VARIANTS))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
