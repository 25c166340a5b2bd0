"""The in-page detector's files, served from web/node_modules by streamfer.server.vendor, and the
server without them (no npm, or before `npm ci`): it still starts and says so.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamfer.faces import FRAMING
from streamfer.model import Predictor
from streamfer.server import vendor
from streamfer.server.app import init_app
from streamfer.server.config import ServeConfig, parse_config

ROOT = Path(__file__).resolve().parent.parent
INSTALLED = vendor.find(ROOT / "web")
BOUND_S = 60.0


def config(tiny_model_path: Path, web_dir: Path) -> ServeConfig:
    return ServeConfig(model=tiny_model_path, host="127.0.0.1", port=0, device="cpu",
                       workers=1, web_dir=web_dir)


@pytest.mark.skipif(INSTALLED is None, reason="web/node_modules not installed: "
                    "`(cd web && npm ci)`")
async def test_the_operator_picks_where_phones_run_the_network(
        aiohttp_client: Any, predictor: Predictor, tiny_model_path: Path) -> None:
    chosen = parse_config(["--page-inference", "webgl", "--model", str(tiny_model_path),
                           "--web-dir", str(ROOT / "web"), "--device", "cpu"], env={})
    assert chosen.page_inference == "webgl"
    assert parse_config(["--model", str(tiny_model_path)],
                        env={"STREAMFER_PAGE_INFERENCE": "webgl"}).page_inference == "webgl"
    with pytest.raises(SystemExit):
        parse_config(["--page-inference", "gpu"], env={})
    client = await aiohttp_client(init_app(chosen, predictor))
    async with client.ws_connect("/ws") as ws:
        hello = await asyncio.wait_for(ws.receive_json(), BOUND_S)
    assert hello["page_detector"]["inference"] == "webgl"


@pytest.mark.skipif(INSTALLED is None, reason="web/node_modules not installed: "
                    "`(cd web && npm ci)`")
async def test_serves_the_installed_package(aiohttp_client: Any, predictor: Predictor,
                                            tiny_model_path: Path) -> None:
    assert INSTALLED is not None
    client = await aiohttp_client(init_app(config(tiny_model_path, ROOT / "web"), predictor))
    async with client.ws_connect("/ws") as ws:
        hello = await asyncio.wait_for(ws.receive_json(), BOUND_S)
    info = hello["page_detector"]
    assert info["name"] == "blazeface" and info["model"] == "short"
    assert info["inference"] == "cpu"  # the network on the CPU: no WebGL readback per frame
    assert info["package"] == f"@mediapipe/face_detection@{INSTALLED.version}"
    assert info["script"] == info["base"] + "face_detection.js"
    # One framing table, the server's own, for the page to crop with.
    assert hello["framing"] == FRAMING and hello["framing"]["blazeface"]["scale"] > 1

    folder = INSTALLED.folder
    expected = {".js": "text/javascript", ".wasm": "application/wasm",
                ".tflite": "application/octet-stream", ".binarypb": "application/octet-stream"}
    for suffix, ctype in expected.items():
        name = next(n for n in sorted(INSTALLED.files) if n.endswith(suffix))
        resp = await client.get("/" + info["base"] + name)
        assert resp.status == 200, name
        assert resp.content_type == ctype
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert await resp.read() == (folder / name).read_bytes()
        again = await client.get("/" + info["base"] + name,
                                 headers={"If-None-Match": resp.headers["ETag"]})
        assert again.status == 304  # revalidation costs no body
    # Nothing else from node_modules: not the package's other files, not other paths.
    for path in ("/" + info["base"] + "package.json", "/" + info["base"] + "..%2Fpackage.json",
                 "/" + info["base"] + "nope.js", "/node_modules/.package-lock.json",
                 "/node_modules/@mediapipe/face_detection/face_detection.js",
                 "/vendor/face_detection@0.0.0/face_detection.js"):
        assert (await client.get(path)).status == 404, path
    assert (await client.get("/app.js")).status == 200  # the page itself is still served


async def test_the_command_starts_without_npm(tiny_model_path: Path, tmp_path: Path) -> None:
    """A checkout where `npm ci` never ran: the server starts, its start line says the page
    has no in-page detector, and the greeting offers none."""
    web = tmp_path / "web"
    shutil.copytree(ROOT / "web", web, ignore=shutil.ignore_patterns("node_modules"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamfer.serve", "--model", str(tiny_model_path),
        "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--workers", "1",
        "--web-dir", str(web), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stderr is not None
    try:
        for _ in range(50):
            line = (await asyncio.wait_for(proc.stderr.readline(), BOUND_S)).decode()
            match = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
            if match or not line:
                break
        assert match, line
        assert "no in-page face detector" in line and "npm ci" in line, line
        assert "the server detects" in line
        url = match.group(1)
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                assert resp.status == 200  # the page
            async with session.ws_connect(url + "ws") as ws:
                hello = await asyncio.wait_for(ws.receive_json(), BOUND_S)
                assert hello["page_detector"] is None
                assert "blazeface" in hello["framing"]
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), BOUND_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_find_ignores_a_broken_install(tmp_path: Path) -> None:
    folder = tmp_path / "node_modules" / vendor.PACKAGE
    folder.mkdir(parents=True)
    assert vendor.find(tmp_path) is None  # no package.json
    (folder / "package.json").write_text('{"version": "1.2.3"}')
    assert vendor.find(tmp_path) is None  # no loader script
    (folder / "face_detection.js").write_text("// loader")
    (folder / "notes.txt").write_text("not served")
    found = vendor.find(tmp_path)
    assert found is not None and found.version == "1.2.3"
    assert found.files == {"face_detection.js"}
    assert found.url == "vendor/face_detection@1.2.3/"


@pytest.mark.skipif(INSTALLED is None or INSTALLED.runtime is None,
                    reason="web/node_modules not installed: `(cd web && npm ci)`")
async def test_serves_the_detection_runtime_from_an_allow_list(
        aiohttp_client: Any, predictor: Predictor, tiny_model_path: Path) -> None:
    """LiteRT.js and both BlazeFace networks, under one URL naming both versions: the files
    of vendor.RUNTIME_FILES only, .wasm as application/wasm, LiteRT.js's one bare import
    pointed at the served wasm-utils.js."""
    assert INSTALLED is not None and INSTALLED.runtime is not None
    client = await aiohttp_client(init_app(config(tiny_model_path, ROOT / "web"), predictor))
    async with client.ws_connect("/ws") as ws:
        hello = await asyncio.wait_for(ws.receive_json(), BOUND_S)
    runtime = hello["page_detector"]["runtime"]
    core = json.loads((ROOT / "web/node_modules/@litertjs/core/package.json").read_text())
    assert runtime == {"name": "litert", "package": f"@litertjs/core@{core['version']}",
                       "base": f"vendor/litert@{core['version']}+face_detection@"
                               f"{INSTALLED.version}/"}
    types = {".js": "text/javascript", ".wasm": "application/wasm",
             ".tflite": "application/octet-stream"}
    for name, (package, path) in vendor.RUNTIME_FILES.items():
        resp = await client.get("/" + runtime["base"] + name)
        assert resp.status == 200, name
        assert resp.content_type == types[Path(name).suffix], name
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        body = await resp.read()
        original = (ROOT / "web/node_modules" / package / path).read_bytes()
        if name == "litert.js":
            assert b'"@litertjs/wasm-utils"' in original
            assert body == original.replace(b'from "@litertjs/wasm-utils"',
                                            b'from "./wasm-utils.js"')
        else:
            assert body == original, name
    for name in ("package.json", "litert_wasm_threaded_internal.wasm", "index.js",
                 "..%2Flitert.js", "dist/index.js", "face_detection.js"):
        assert (await client.get("/" + runtime["base"] + name)).status == 404, name


def test_find_runtime_needs_every_file(tmp_path: Path) -> None:
    """A partial or different LiteRT.js install is not offered (the greeting says none)."""
    modules = tmp_path / "node_modules"
    for name, (package, path) in vendor.RUNTIME_FILES.items():
        (modules / package / path).parent.mkdir(parents=True, exist_ok=True)
        (modules / package / path).write_text(
            'import { x } from "@litertjs/wasm-utils";' if name == "litert.js" else name)
    (modules / vendor.RUNTIME_PACKAGE / "package.json").write_text('{"version": "9.9.9"}')
    found = vendor.find_runtime(tmp_path, "1.0")
    assert found is not None and found.url == "vendor/litert@9.9.9+face_detection@1.0/"
    assert found.rewritten["litert.js"] == b'import { x } from "./wasm-utils.js";'
    (modules / vendor.RUNTIME_PACKAGE / "dist/index.js").write_text("no bare import")
    assert vendor.find_runtime(tmp_path, "1.0") is None  # another build: not served half-done
    (modules / vendor.RUNTIME_PACKAGE / "wasm/litert_wasm_internal.wasm").unlink()
    assert vendor.find_runtime(tmp_path, "1.0") is None


def test_the_wheel_carries_every_served_runtime_file() -> None:
    """pyproject's data-files (what `pip install .` copies) cover every file RUNTIME_FILES
    serves and the package.json that names its version, so an installed server offers the
    Worker detector too (tests/test_install.py serves them from a real install)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"]
    shipped = [(target, pattern) for target, patterns in data_files.items()
               for pattern in patterns]
    needed = {f"web/node_modules/{package}/{path}"
              for package, path in vendor.RUNTIME_FILES.values()}
    needed |= {f"web/node_modules/{p}/package.json" for p in (vendor.RUNTIME_PACKAGE,
                                                              vendor.PACKAGE)}
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "web/detection").glob("*.js")}
    for path in sorted(needed):
        targets = [t for t, pattern in shipped if fnmatch.fnmatch(path, pattern)]
        assert targets, f"{path} is not in pyproject's data-files"
        # ... and lands where the server looks: share/streamfer/<the same relative folder>
        assert f"share/streamfer/{path.rsplit('/', 1)[0]}" in targets, (path, targets)
