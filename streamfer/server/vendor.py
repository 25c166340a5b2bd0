"""The page's third-party face detector, served from the local npm install.

`web/package.json` pins `@mediapipe/face_detection` (Apache-2.0: BlazeFace weights, a wasm
runtime and a classic-script loader); `(cd web && npm ci)` installs it under
`web/node_modules/`, which is never committed. The server serves only that package's own
top-level files, under a URL that carries its version (`/vendor/face_detection@VERSION/...`),
so browsers may cache them for good and an upgrade changes the URL. Without the install the
server still runs: the greeting then offers no in-page detector and phones send full frames
for the server to check.

The in-page detection engine (web/detection/) runs those same networks with LiteRT.js
(`@litertjs/core` and its `@litertjs/wasm-utils`, Apache-2.0), in a Web Worker. Its files
and the two networks are served from one folder whose URL names both versions
(`/vendor/litert@CORE_VERSION+face_detection@VERSION/`), from an allow-list (RUNTIME_FILES).
The one bare module specifier in LiteRT.js's ES module is rewritten to the served file's
relative URL, since Workers have no import maps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from streamfer.faces import BLAZEFACE

PACKAGE = "@mediapipe/face_detection"
NAME = BLAZEFACE  # what the page, `?detector=` and the greeting call this detector
SCRIPT = "face_detection.js"
MODEL = "short"  # BlazeFace short range: faces within ~2 m, i.e. a selfie (docs/BENCHMARKS.md)
# Where the page runs the network: "cpu" (the wasm runtime's XNNPACK, the package's own
# `useCpuInference` option, its default on iOS) or "webgl" (its default elsewhere). The tiny
# 128x128 network costs more as WebGL draws and a GPU->CPU readback than as SIMD wasm: in
# headless Chromium (software WebGL), with the same faces found and the same boxes
# (docs/BENCHMARKS.md, "The page's face detector"). The operator picks with --page-inference
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


RUNTIME = "litert"  # the greeting's page_detector.runtime.name
RUNTIME_PACKAGE = "@litertjs/core"
# Served name -> (npm package, path inside it). Only the single-threaded wasm builds: the
# threaded one needs a cross-origin-isolated page, the JSPI one WebNN.
RUNTIME_FILES = {
    "litert.js": (RUNTIME_PACKAGE, "dist/index.js"),
    "wasm-utils.js": ("@litertjs/wasm-utils", "dist/index.js"),
    **{f"litert_wasm{v}_internal{ext}": (RUNTIME_PACKAGE, f"wasm/litert_wasm{v}_internal{ext}")
       for v in ("", "_compat") for ext in (".js", ".wasm")},
    **{name: (PACKAGE, name) for name in ("face_detection_short_range.tflite",
                                          "face_detection_full_range.tflite")},
}
IMPORT_REWRITES = {"litert.js": (b'from "@litertjs/wasm-utils"', b'from "./wasm-utils.js"')}


@dataclass(frozen=True)
class VendorRuntime:
    """The installed LiteRT.js and the networks it runs: the files under one versioned URL."""

    version: str  # of RUNTIME_PACKAGE
    files: dict[str, Path] = field(hash=False)
    rewritten: dict[str, bytes] = field(hash=False)  # served from memory (IMPORT_REWRITES)
    url: str = ""

    def greeting(self) -> dict[str, str]:
        return {"name": RUNTIME, "base": self.url, "package": f"{RUNTIME_PACKAGE}@{self.version}"}


def find_runtime(web_dir: Path, detector_version: str) -> VendorRuntime | None:
    """LiteRT.js under `web_dir`/node_modules with every file of RUNTIME_FILES, or None."""
    modules = web_dir / "node_modules"
    try:
        version = str(json.loads((modules / RUNTIME_PACKAGE / "package.json").read_text())
                      ["version"])
        files = {name: modules / pkg / path for name, (pkg, path) in RUNTIME_FILES.items()}
        if not all(p.is_file() for p in files.values()):
            return None
        rewritten = {}
        for name, (old, new) in IMPORT_REWRITES.items():
            text = files[name].read_bytes()
            if old not in text:
                return None  # another build of the package: not served half-working
            rewritten[name] = text.replace(old, new)
    except (OSError, ValueError, KeyError):
        return None
    url = f"vendor/{RUNTIME}@{version}+face_detection@{detector_version}/"
    return VendorRuntime(version, files, rewritten, url)


@dataclass(frozen=True)
class VendorPackage:
    """An installed copy of PACKAGE: where it is, its version and the files to serve."""

    folder: Path
    version: str
    files: frozenset[str]
    inference: str = INFERENCE  # where phones run the network (one of INFERENCES)
    runtime: VendorRuntime | None = None  # the Worker engine's files, when installed

    @property
    def url(self) -> str:
        """The folder's URL relative to the page (no leading slash: works behind a prefix)."""
        return f"vendor/face_detection@{self.version}/"

    def greeting(self) -> dict[str, Any]:
        """What the page needs to load it (the greeting's `page_detector`)."""
        return {"name": NAME, "base": self.url, "script": self.url + SCRIPT, "model": MODEL,
                "inference": self.inference, "package": f"{PACKAGE}@{self.version}",
                "runtime": self.runtime.greeting() if self.runtime else None}


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
    if SCRIPT not in files:
        return None
    return VendorPackage(folder, version, files, inference, find_runtime(web_dir, version))


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
    if package.runtime is not None:
        add_runtime_routes(app, package.runtime)


def add_runtime_routes(app: web.Application, runtime: VendorRuntime) -> None:
    """GET /vendor/litert@V+face_detection@V/<file>, for RUNTIME_FILES only."""

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in runtime.files:
            raise web.HTTPNotFound(text=f"{name} is not served with {RUNTIME_PACKAGE}\n")
        headers = {"Content-Type": CONTENT_TYPES[Path(name).suffix],
                   "Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
        if name in runtime.rewritten:
            return web.Response(body=runtime.rewritten[name], headers=headers)
        return web.FileResponse(runtime.files[name], headers=headers)

    app.router.add_get("/" + runtime.url + "{name}", serve)
