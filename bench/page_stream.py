"""The real phone path end to end: the page in headless Chromium at a phone viewport, a fake
camera showing a webfaces-dev photo (never trained or tuned on) in a camera scene, the real
server with the shipped model. How many of the frames the page sends are crops (the server's
own /metrics count, by kind), and what the page shows.

    python -m bench.page_stream                  # 5 seeded photos, 20 s each
    python -m bench.page_stream --photos 10 --seconds 30 --detector server   # the old path

Each photo is pasted 300 px square into a 640x480 scene (bench/fakecam.py `scene`, the
browser tests' own) with a few pixels of camera shake; the page runs as a phone user opens
it. Prints one row per photo and writes bench/results/page_stream.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bench.browserkit import Server, counts, open_page, phone, prediction
from bench.fakecam import scene, shaking, write_y4m
from bench.machine import describe, machine_info
from bench.serverproc import free_port
from streamfer.cli import opt, parse
from streamfer.paths import DEFAULT_MODEL

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
    out: str = opt(str(BENCH / "results/page_stream.json"), "results JSON")


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
                    video = write_y4m(Path(tmp) / "cam.y4m", shaking(scene(photo)))
                    before = {k: server.frames_by_kind(k) for k in ("crop", "full")}
                    with phone(pw, video) as context:
                        page = open_page(context, server.url + (
                            f"?detector={args.detector}" if args.detector else ""))
                        time.sleep(args.seconds)
                        shown, page_counts = prediction(page), counts(page)
                        detector = page.get_attribute("body", "data-detector")
                    time.sleep(1.0)  # replies in flight land in /metrics
                    got = {k: server.frames_by_kind(k) - before[k] for k in ("crop", "full")}
                    sent = got["crop"] + got["full"]
                    row = {"photo": str(paths[i].relative_to(args.data)), "detector": detector,
                           "received": sent, **got,
                           "crop_share": got["crop"] / sent if sent else None,
                           "ok": page_counts["ok"], "shown": shown["top"],
                           "skipped_no_face": page_counts["skippedNoFace"]}
                    rows.append(row)
                    share = "-" if row["crop_share"] is None else f"{100 * row['crop_share']:.0f}%"
                    print(f"{row['photo']:40} {detector:9} sent {sent:4.0f} crops {share:>5} "
                          f"ok {row['ok']:4} shows {row['shown'] or '-'}", flush=True)
        finally:
            server.stop()
    total = sum(r["received"] for r in rows)
    crops = sum(r["crop"] for r in rows)
    result = {"rows": rows, "received": total, "crops": crops,
              "crop_share": crops / total if total else None,
              "showing_expression": sum(bool(r["shown"]) for r in rows), "photos": len(rows),
              "seconds_each": args.seconds, "machine": machine_info(),
              "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(describe(result["machine"]))
    print(f"all: {total:.0f} frames received, {crops:.0f} crops "
          f"({100 * (result['crop_share'] or 0):.1f}%); an expression shown for "
          f"{result['showing_expression']}/{len(rows)} photos -> {args.out}")


if __name__ == "__main__":
    main()
