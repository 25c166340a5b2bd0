"""The real phone path end to end: the page in headless Chromium at a phone viewport, a fake
camera showing a webfaces-dev photo (never trained or tuned on) in a camera scene, the real
server with the shipped model. How many of the frames the page sends are crops (the server's
own /metrics count, by kind), and what the page shows.

    python -m bench.page_stream                  # 5 seeded photos, 20 s each
    python -m bench.page_stream --photos 10 --seconds 30 --detector server   # the old path
    python -m bench.page_stream --detector worker --face-px 200 --face-px 120 --face-px 60 \
        --throttle 1 --throttle 4 --throttle 6 --photos 2 --seconds 15 \
        --name page_phone_cpu                                       # phone-class CPU

Each photo is pasted 300 px square into a 640x480 scene (tests/kit/fakecam.py `scene`, the
browser tests' own) with a few pixels of camera shake; the page runs as a phone user opens
it. Prints one row per photo and writes bench/results/<machine>/page_stream.json
(streamfer/results.py's schema).

`--face-px N` scales each photo instead so that its face (found by the server's BlazeFace,
streamfer.detect) is N px wide in the frame; `--throttle R` slows Chromium's CPU R times
(CDP Emulation.setCPUThrottlingRate), a phone-class CPU at 4-6. Each row then also gives
crops/s the server received after the page first streamed, the page's own detector time
per frame (<html data-detect-ms>), its median round trip (which, with at most two frames
unanswered, caps the rate) and the main thread's long tasks (PerformanceObserver
'longtask': tasks over 50 ms) per second and their total share of the time.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bench.machine import describe, machine_info
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.paths import DEFAULT_MODEL
from tests.kit.browserkit import Server, counts, phone, prediction
from tests.kit.fakecam import HEIGHT, scene, shaking, write_y4m
from tests.kit.serverproc import free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class PageStreamConfig:
    data: str = opt(str(ROOT.parent / "shared/datasets/webfaces-dev"),
                    "webfaces-dev folder (CLASS/*.jpg)")
    model: str = opt(str(DEFAULT_MODEL), "the model the server runs")
    photos: int = opt(5, "photos, drawn with --seed")
    seconds: float = opt(20.0, "how long the page streams each photo")
    detector: str = opt("", "the page's ?detector= (empty: the page's own)")
    seed: int = opt(1, "seeds the choice of photos")
    face_px: tuple[int, ...] = opt((), "face widths in the 640x480 frame (repeatable; "
                                   "none: the photo 300 px square)")
    throttle: tuple[float, ...] = opt((1.0,), "Chromium CPU throttling rates (CDP "
                                      "Emulation.setCPUThrottlingRate), each run in turn "
                                      "(repeatable)")
    shake_px: float = opt(4.0, "radius of the camera's circular shake, px (16 frames a "
                          "turn: 4 px moves ~1.6 px a frame)")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("page_stream", "result name")


LONG_TASKS = """(() => {
  window.__longTasks = { count: 0, ms: 0 };
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        window.__longTasks.count++;
        window.__longTasks.ms += e.duration;
      }
    }).observe({ type: "longtask", buffered: true });
  } catch (e) { window.__longTasks = null; }
})();"""


def sized_scene(photo: np.ndarray, face_px: int) -> np.ndarray:
    """The middle square of `photo`, scaled so that its largest face (the server's
    BlazeFace) is `face_px` wide, pasted in the middle of the fakecam scene (cut to the
    frame's height when larger)."""
    from streamfer.detect import load_detector

    side = min(photo.shape[:2])
    y0, x0 = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = photo[y0:y0 + side, x0:x0 + side]
    found = load_detector().detect_photo(cv2.cvtColor(square, cv2.COLOR_RGB2GRAY))
    if not found:
        raise ValueError("no face found in the photo")
    px = round(side * face_px / max(d.box.w for d in found))
    scaled = cv2.resize(square, (px, px), interpolation=cv2.INTER_AREA)
    fit = min(px, HEIGHT - 2) // 2 * 2  # a photo larger than the frame: its middle
    cut = (px - fit) // 2
    return scene(scaled[cut:cut + fit, cut:cut + fit], side=fit)


def stream_one(pw: object, server: Server, video: Path, args: PageStreamConfig,
               rate: float) -> dict[str, object]:
    """One page on `video` at CPU throttling `rate`, measured for args.seconds once it
    streams (or has not within args.seconds)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    before = {k: server.frames_by_kind(k) for k in ("crop", "full")}
    with phone(pw, video) as context:
        context.add_init_script(LONG_TASKS)
        page = context.new_page()
        if rate != 1:
            page.context.new_cdp_session(page).send("Emulation.setCPUThrottlingRate",
                                                    {"rate": rate})
        page.goto(server.url + (f"?detector={args.detector}" if args.detector else ""))
        t0 = time.monotonic()
        streamed = True
        try:
            page.wait_for_selector('#status[data-state="streaming"]',
                                   timeout=args.seconds * 1000)
        except PlaywrightTimeout:  # never streamed: measured all the same (crops/s 0)
            streamed = False
        first = time.monotonic()
        # The measured window: args.seconds from the first reply shown (or the time out).
        at_first = {k: server.frames_by_kind(k) for k in ("crop", "full")}
        page.evaluate("() => { window.__longTasks && (window.__longTasks = {count: 0, ms: 0}); }")
        window_t = time.monotonic()
        time.sleep(args.seconds)
        span = time.monotonic() - window_t
        crops_in_window = server.frames_by_kind("crop") - at_first["crop"]
        shown, page_counts = prediction(page), counts(page)
        detector = page.get_attribute("body", "data-detector")
        rtt = page.get_attribute("#rtt", "data-ms")
        info = page.evaluate("() => ({thread: document.documentElement.dataset.detectorThread,"
                             " ms: document.documentElement.dataset.detectMs,"
                             " long: window.__longTasks})")
    time.sleep(1.0)  # replies in flight land in /metrics
    got = {k: server.frames_by_kind(k) - before[k] for k in ("crop", "full")}
    sent = got["crop"] + got["full"]
    long = info["long"] or {}
    return {"detector": detector, "thread": info["thread"], "throttle": rate, "streamed": streamed,
            "received": sent, **got, "crop_share": got["crop"] / sent if sent else None,
            "seconds_to_stream": first - t0, "window_s": span,
            "crops_per_s": crops_in_window / span if span > 0 else None,
            "detect_ms": float(info["ms"]) if info["ms"] else None,
            "rtt_ms": float(rtt) if rtt else None,  # the page's median round trip
            "long_tasks_per_s": long.get("count", 0) / span if span > 0 else None,
            "long_task_share": long.get("ms", 0) / 1000 / span if span > 0 else None,
            "ok": page_counts["ok"], "shown": shown["top"],
            "skipped_no_face": page_counts["skippedNoFace"],
            "skipped_still": page_counts["skippedStill"]}


def main(argv: list[str] | None = None) -> None:
    args = parse(PageStreamConfig, argv, prog="python -m bench.page_stream",
                 description=__doc__.split("\n\n")[0])
    from playwright.sync_api import sync_playwright

    paths = sorted(Path(args.data).glob("*/*.jpg"))
    pick = np.random.default_rng(args.seed).permutation(len(paths))[:args.photos]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(args.model), free_port(), Path(tmp) / "server.log")
        server.start()
        try:
            with sync_playwright() as pw:
                for i in pick:
                    photo = cv2.cvtColor(cv2.imread(str(paths[i])), cv2.COLOR_BGR2RGB)
                    for face_px in args.face_px or (0,):
                        frame = sized_scene(photo, face_px) if face_px else scene(photo)
                        video = write_y4m(Path(tmp) / "cam.y4m",
                                          shaking(frame, radius=args.shake_px))
                        for rate in args.throttle:
                            row = {"photo": str(paths[i].relative_to(args.data)),
                                   "face_px": face_px or None,
                                   **stream_one(pw, server, video, args, rate)}
                            rows.append(row)
                            share = ("-" if row["crop_share"] is None
                                     else f"{100 * row['crop_share']:.0f}%")
                            print(f"{row['photo']:36} face {face_px or '-':>4} x{rate:g} "
                                  f"{row['detector']:9} {row['thread'] or '-':6} crops/s "
                                  f"{row['crops_per_s'] or 0:5.1f} crops {share:>5} detect "
                                  f"{row['detect_ms'] or 0:6.1f} ms rtt "
                                  f"{row['rtt_ms'] or 0:5.0f} ms long tasks/s "
                                  f"{row['long_tasks_per_s'] or 0:4.1f} "
                                  f"({100 * (row['long_task_share'] or 0):.0f}%) shows "
                                  f"{row['shown'] or '-'}", flush=True)
        finally:
            server.stop()
    total = sum(r["received"] for r in rows)
    crops = sum(r["crop"] for r in rows)
    result = {"rows": rows, "received": total, "crops": crops,
              "crop_share": crops / total if total else None,
              "showing_expression": sum(bool(r["shown"]) for r in rows), "photos": len(rows),
              "seconds_each": args.seconds, "machine": machine_info()}
    figures = {k: result[k] for k in ("photos", "seconds_each", "received", "crop_share",
                                      "showing_expression")}
    out = results.write(args.results, results.make(args.name, figures, result))
    print(describe(result["machine"]))
    print(f"all: {total:.0f} frames received, {crops:.0f} crops "
          f"({100 * (result['crop_share'] or 0):.1f}%); an expression shown for "
          f"{result['showing_expression']}/{len(rows)} photos -> {out}")


if __name__ == "__main__":
    main()
