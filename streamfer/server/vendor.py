"""The page's third-party face detector, served from the local npm install.

`web/package.json` pins `@mediapipe/face_detection` (Apache-2.0: BlazeFace weights, a wasm
runtime and a classic-script loader); `(cd web && npm ci)` installs it under
`web/node_modules/`, which is never committed. The server serves only that package's own
top-level files, under a URL that carries its version (`/vendor/face_detection@VERSION/...`),
so browsers may cache them for good and an upgrade changes the URL. Without the install the
server still runs: the greeting then offers no in-page detector and phones send full frames
for the server to check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

PACKAGE = "@mediapipe/face_detection"
NAME = "blazeface"  # what the page, `?detector=` and the greeting call this detector
SCRIPT = "face_detection.js"
MODEL = "short"  # BlazeFace short range: faces within ~2 m, i.e. a selfie (docs/BENCHMARKS.md)
# Where the page runs the network: "cpu" (the wasm runtime's XNNPACK, the package's own
# `useCpuInference` option, its default on iOS) or "webgl" (its default elsewhere). The tiny
# 128x128 network costs more as WebGL draws and a GPU->CPU readback than as SIMD wasm: in
# headless Chromium here (software WebGL) a median 14.6 against 93.8 ms a frame, same faces
# found, same boxes (docs/BENCHMARKS.md section 4b). The operator picks with --page-inference
# (a fleet of phones whose GPUs beat their CPUs may prefer webgl).
INFERENCES = ("cpu", "webgl")
INFERENCE = "cpu"  # the default
# Served with these types; files of any other kind in the package are not served.
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".tflite": "application/octet-stream",
    ".binarypb": "application/octet-stream",
    ".data": "application/octet-stream",
}
# The URL names the exact version, so a cached copy can never be stale.
CACHE_CONTROL = "public, max-age=31536000, immutable"
MISSING = (f"no in-page face detector (web/node_modules has no {PACKAGE}: run `(cd web && "
           "npm ci)`): phones will send full frames and the server detects")


@dataclass(frozen=True)
class VendorPackage:
    """An installed copy of PACKAGE: where it is, its version and the files to serve."""

    folder: Path
    version: str
    files: frozenset[str]
    inference: str = INFERENCE  # where phones run the network (one of INFERENCES)

    @property
    def url(self) -> str:
        """The folder's URL relative to the page (no leading slash: works behind a prefix)."""
        return f"vendor/face_detection@{self.version}/"

    def greeting(self) -> dict[str, Any]:
        """What the page needs to load it (the greeting's `page_detector`)."""
        return {"name": NAME, "base": self.url, "script": self.url + SCRIPT, "model": MODEL,
                "inference": self.inference, "package": f"{PACKAGE}@{self.version}"}


def find(web_dir: Path, inference: str = INFERENCE) -> VendorPackage | None:
    """The installed package under `web_dir`/node_modules, or None (not installed); phones
    run its network where `inference` says (one of INFERENCES)."""
    folder = web_dir / "node_modules" / PACKAGE
    try:
        version = str(json.loads((folder / "package.json").read_text())["version"])
        files = frozenset(p.name for p in folder.iterdir()
                          if p.is_file() and p.suffix in CONTENT_TYPES)
    except (OSError, ValueError, KeyError):
        return None
    return VendorPackage(folder, version, files, inference) if SCRIPT in files else None


def add_routes(app: web.Application, package: VendorPackage) -> None:
    """GET /vendor/face_detection@VERSION/<file>, for the package's own files only."""

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in package.files:  # also rules out "..", subfolders and other packages
            raise web.HTTPNotFound(text=f"{name} is not part of {PACKAGE}\n")
        return web.FileResponse(package.folder / name, headers={
            "Content-Type": CONTENT_TYPES[Path(name).suffix],
            "Cache-Control": CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
        })

    app.router.add_get("/" + package.url + "{name}", serve)
