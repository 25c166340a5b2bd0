"""Honest clients beside one hostile client whose images cost the most to decode.

Each case is the real server (`python -m streamfer.serve`, its defaults plus --server-arg) on
a free 127.0.0.1 port, streamed N honest clients x F fps of page-made crops
(streamfer.loadtest's client, which keeps the page's window) while one more connection sends
one kind of hostile image as fast as the server's rate cap allows (--max-fps, default 30),
never waiting for its replies. The baseline (no hostile client) runs in the same process
and server, so every case meets the same machine. Reported per case: the honest clients'
round-trip p50/p99, the fraction of their frames answered, and how the hostile frames were
answered.

The cases: JPEG scan bombs as crops (a progressive 128x128 file whose last scan is repeated
thousands of times) and the costliest crop the limits let through (1024x1024 progressive,
12 scans); junk crops (200 KB of 0xFF fill before the first marker; empty APP1 segments);
full frames of 16 megapixels (a black PNG) and the largest a frame may be (1280x1024).
`--tree before=DIR` also runs every case against another checkout (e.g. the code before a
change, from `git archive`), side by side in one run:

    git archive --prefix=before/ main | tar -x -C /tmp
    python -m bench.hostile_decode --tree /tmp/before
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import aiohttp
import cv2
import numpy as np

from bench.serverrun import ServerRunConfig
from streamfer.cli import opt, parse
from streamfer.loadtest.client import Load, run_load
from streamfer.loadtest.frames import astronaut_frames
from streamfer.loadtest.report import summarize
from streamfer.protocol import pack_frame
from tests.kit.serverproc import running_server

CASES = ("baseline", "scan_bomb_crops", "costliest_crops", "ff_fill_crops", "empty_app1_crops",
         "16mpx_frames", "largest_frames")


@dataclass(frozen=True)
class HostileConfig(ServerRunConfig):
    clients: int = opt(5, "honest clients")
    fps: float = opt(15.0, "honest frames per second per client")
    seconds: float = opt(15.0, "how long each case streams")
    hostile_fps: float = opt(30.0, "hostile frames per second (the server's --max-fps default)")
    case: tuple[str, ...] = opt((), "cases to run (repeatable; default: all)", CASES)
    tree: Path | None = opt(None, "also run every case against the server of this checkout "
                            "(labelled 'before')")
    name: str = opt("hostile_decode", "result name")


# -- hostile images, made here ------------------------------------------------------------------


def progressive_jpeg(width: int, height: int, *, noise: bool = False) -> bytes:
    """A progressive grayscale JPEG (Pillow: libjpeg's default script); flat gray unless
    `noise`, so that each of its scans is a few bytes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width), dtype=np.uint8) if noise else \
        np.full((height, width), 100, np.uint8)
    buf = BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", progressive=True, quality=90)
    return buf.getvalue()


def scan_bomb(data: bytes, copies: int) -> bytes:
    """`data` (a progressive JPEG) with its last scan repeated `copies` more times: libjpeg
    warns of a bogus progression and decodes every copy, each a pass over every block."""
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * copies + data[end:]


def junk_jpegs(jpeg: bytes, size: int = 200_000) -> dict[str, bytes]:
    """`jpeg` padded to about `size` bytes of what a header parser must walk through: 0xFF
    fill bytes before its first marker (legal: libjpeg skips them), or empty APP1 segments."""
    return {"ff_fill": jpeg[:2] + b"\xff" * size + jpeg[2:],
            "empty_app1": jpeg[:2] + b"\xff\xe1\x00\x02" * (size // 4) + jpeg[2:]}


def black_png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width), np.uint8))[1].tobytes()


def hostile_images(crop: bytes) -> dict[str, tuple[bytes, bool]]:
    """Case -> (image, is_crop)."""
    junk = junk_jpegs(crop)
    return {"scan_bomb_crops": (scan_bomb(progressive_jpeg(128, 128), 5000), True),
            "costliest_crops": (scan_bomb(progressive_jpeg(1024, 1024), 6), True),
            "ff_fill_crops": (junk["ff_fill"], True),
            "empty_app1_crops": (junk["empty_app1"], True),
            "16mpx_frames": (black_png(4000, 4000), False),
            "largest_frames": (black_png(1280, 1024), False)}


# -- the run -------------------------------------------------------------------------------


async def hostile(url: str, image: bytes, is_crop: bool, fps: float, stop: asyncio.Event
                  ) -> Counter:
    """Send `image` at `fps` without waiting for replies; count the replies by status."""
    seen: Counter = Counter()
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.receive_json(timeout=10)

        async def read() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    reply = json.loads(msg.data)
                    if reply.get("type") == "result":
                        seen[reply.get("code") or reply.get("reason") or reply["status"]] += 1

        reader = asyncio.ensure_future(read())
        i, start = 0, time.monotonic()
        while not stop.is_set() and not ws.closed:
            i += 1
            await ws.send_bytes(pack_frame(i, image, is_crop=is_crop))
            await asyncio.sleep(max(0.0, start + i / fps - time.monotonic()))
        seen["sent"] = i
        await asyncio.sleep(1.0)
        reader.cancel()
    return seen


async def one_case(cfg: HostileConfig, url: str, case: str, frames, images) -> dict:
    load = Load(url=url, clients=cfg.clients, fps=cfg.fps, seconds=cfg.seconds)
    stop = asyncio.Event()
    attack = None
    if case != "baseline":
        image, is_crop = images[case]
        attack = asyncio.ensure_future(hostile(url, image, is_crop, cfg.hostile_fps, stop))
        await asyncio.sleep(0.5)
    run = await run_load(load, frames)
    stop.set()
    summary = summarize(run)
    out = {"case": case, "p50_ms": summary["rtt_ms"].get("p50"),
           "p99_ms": summary["rtt_ms"].get("p99"),
           "answered": round(summary["answered"] / max(summary["sent"], 1), 4),
           "sent": summary["sent"], "ok": summary["ok"], "dropped": summary["dropped_by_reason"],
           "errors": summary["errors_by_reason"]}
    if attack is not None:
        out["hostile"] = dict(await attack)
        out["hostile_bytes"] = len(images[case][0])
    return out


async def run_tree(cfg: HostileConfig, label: str, root: Path | None, frames, images,
                   cases: list[str]) -> list[dict]:
    log = cfg.log_path(f"{cfg.name}_{label}")
    rows = []
    with running_server(cfg.model, ("--device", "cpu", *cfg.server_arg), log_path=log,
                        start_timeout=180, root=root) as srv:
        for case in cases:
            row = {"server": label, **await one_case(cfg, srv.url, case, frames, images)}
            print(f"{label:>7} {case:<18} p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                  f"answered {row['answered']:.1%}  hostile {row.get('hostile', '-')}",
                  flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    cfg = parse(HostileConfig, argv, prog="python -m bench.hostile_decode",
                description=__doc__.split("\n\n")[0])
    info, line = cfg.pin_client()
    print(line)
    frames = astronaut_frames("crops")
    images = hostile_images(frames.images[0])
    cases = list(cfg.case or CASES)
    rows = asyncio.run(run_tree(cfg, "after", None, frames, images, cases))
    if cfg.tree is not None:
        rows += asyncio.run(run_tree(cfg, "before", cfg.tree, frames, images, cases))
    cases_fig = {r["case"]: {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                             "answered": r["answered"],
                             "hostile": {k: v for k, v in r.get("hostile", {}).items()
                                         if k != "sent"}}
                 for r in rows if r["server"] == "after"}
    cfg.save(cfg.name, {"clients": cfg.clients, "fps": cfg.fps, "hostile_fps": cfg.hostile_fps,
                        "cases": cases_fig},
             {"machine": info, "clients": cfg.clients, "fps": cfg.fps, "seconds": cfg.seconds,
              "hostile_fps": cfg.hostile_fps, "rows": rows})


if __name__ == "__main__":
    main()
