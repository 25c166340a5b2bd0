"""Make docs/screenshot.png: the phone page, live, with the astronaut as its camera.

    python -m bench.screenshot [--model models/ferplus-5class.pt] [--out docs/screenshot.png]

Starts the real server and headless Chromium exactly as tests/test_browser.py does, lets
predictions stream for a few seconds, prints the page's counters, and saves a phone-viewport
screenshot (390x844 CSS px; saved at 2x to keep the file small).
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright
from skimage import data

from streamfer.cli import opt, parse
from streamfer.paths import DEFAULT_MODEL
from tests.kit.browserkit import ROOT, Server, counts, open_page, phone, prediction
from tests.kit.fakecam import face_frames, write_y4m
from tests.kit.serverproc import free_port


def shrink(png: bytes, out: Path, budget: int = 480_000) -> None:
    """Save the PNG as is if it fits `budget` bytes, else as 256 colours (photos dominate)."""
    if len(png) <= budget:
        out.write_bytes(png)
        return
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG
                   ).save(out, optimize=True)


@dataclass(frozen=True)
class ScreenshotConfig:
    model: Path = opt(DEFAULT_MODEL, "the model the server runs")
    out: Path = opt(ROOT / "docs" / "screenshot.png", "the PNG to write")
    seconds: float = opt(6.0, "streaming time before the shot")
    scale: float = opt(2.0, "device pixels per CSS pixel")
    landscape: bool = opt(False, "844x390 instead of 390x844")


def main(argv: list[str] | None = None) -> int:
    args = parse(ScreenshotConfig, argv, prog="python -m bench.screenshot",
                 description=__doc__.splitlines()[0])

    with tempfile.TemporaryDirectory(prefix="streamfer-shot-") as tmp:
        video = write_y4m(Path(tmp) / "astronaut.y4m", face_frames(data.astronaut()))
        server = Server(args.model.resolve(), free_port(), Path(tmp) / "server.log")
        server.start()
        try:
            with sync_playwright() as p, phone(p, video, device_scale_factor=args.scale) as context:
                page = open_page(context, server.url)
                if args.landscape:
                    page.set_viewport_size({"width": 844, "height": 390})
                page.wait_for_selector('#status[data-state="streaming"]', timeout=30_000)
                time.sleep(args.seconds)
                print(json.dumps({"counts": counts(page), "shown": prediction(page),
                                  "rtt": page.inner_text("#rtt"),
                                  "fps": page.inner_text("#fps"), "errors": page.errors}))
                shrink(page.screenshot(), args.out)
        finally:
            server.stop()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
