"""Real server + headless Chromium phone, shared by the browser tests, bench/page_stream.py
and bench/screenshot.py.

The server is the real `python -m streamfer.serve` in a subprocess on a free 127.0.0.1 port;
the browser is the system Chromium (not Playwright's download) driven by Playwright, in a
phone-sized viewport, with a fake camera that plays a .y4m video (see tests/kit/fakecam.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from tests.kit.serverproc import ROOT, free_port, wait_healthy

CHROMIUM = Path(os.environ.get("STREAMFER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    # A made-up LAN name for 127.0.0.1: a page there is not a secure context (unlike
    # 127.0.0.1 and localhost), as on a phone that opens http://<laptop's IP>:8080/.
    "--host-resolver-rules=MAP insecure.streamfer.test 127.0.0.1",
]
INSECURE_HOST = "insecure.streamfer.test"
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
    "user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
}
SERVER_START_S = 60.0
# CI sets it to 1, so that a missing browser or page detector fails the page's tests instead
# of quietly skipping them.
REQUIRE_BROWSER = "STREAMFER_REQUIRE_BROWSER"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test module that lacks something (`reason`), or fail it where
    STREAMFER_REQUIRE_BROWSER=1 says the browser tests must run."""
    import pytest  # the benchmarks use this kit too, without pytest

    if os.environ.get(REQUIRE_BROWSER) == "1":
        pytest.fail(f"{REQUIRE_BROWSER}=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_chromium() -> None:
    """skip_or_fail unless the system Chromium and the playwright package are both here."""
    if not CHROMIUM.exists():
        skip_or_fail(f"Chromium not found at {CHROMIUM}: `apt-get install chromium` "
                     "(or set STREAMFER_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("the playwright package is not installed: `pip install -e '.[test]'`")


@dataclass
class Server:
    """`python -m streamfer.serve` on 127.0.0.1:`port`; start() returns once /healthz answers."""

    model: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "streamfer.serve", "--model", str(self.model),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.proc, self.port, SERVER_START_S, self.log)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM (the server shuts down gracefully), SIGKILL if it hangs."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def metrics(self) -> dict[str, float]:
        """The /metrics samples, keyed like `streamfer_replies_total{status="ok"}`."""
        with urllib.request.urlopen(self.url + "metrics", timeout=5) as resp:
            text = resp.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def replies(self, status: str) -> float:
        """Frames the server answered with `status` (the counter streamfer_replies)."""
        return self.metrics().get(f'streamfer_replies_total{{status="{status}"}}', 0.0)

    def frames_by_kind(self, kind: str) -> float:
        """Frames the server read as `kind`: "crop" (the page cropped a face) or "full"."""
        return self.metrics().get(f'streamfer_frames_by_kind_total{{kind="{kind}"}}', 0.0)

    def frames_received(self) -> float:
        """Frames the server received, from any source."""
        return sum(v for k, v in self.metrics().items()
                   if k.startswith("streamfer_frames_received_total"))


@contextmanager
def serving(model: Path, log: Path) -> Iterator[Server]:
    """A `Server` of `model` on a free port for the block, stopped however the block ends."""
    server = Server(model, free_port(), log)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def phone(playwright: Any, video: Path, *, allow_camera: bool = True,
          **context_options: Any) -> Iterator[Any]:
    """A phone-sized Chromium browser context whose front camera plays `video`
    (`context_options` override PHONE's). With allow_camera=False the person says no to the
    camera permission prompt."""
    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={video}"]
    if not allow_camera:
        args = [a for a in args if a != "--use-fake-ui-for-media-stream"]
        args.append("--deny-permission-prompts")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    try:
        yield browser.new_context(**{**PHONE, **context_options})
    finally:
        browser.close()


def open_page(context: Any, url: str) -> Any:
    """Open `url`; `page.errors` collects uncaught exceptions from the page's scripts."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(url)
    return page


def counts(page: Any) -> dict[str, int]:
    """The page's own counters (#stats data-*): frames sent, replies by status, skips."""
    data = page.eval_on_selector("#stats", "el => ({...el.dataset})")
    return {k: int(v) for k, v in data.items()}


def prediction(page: Any) -> dict[str, Any]:
    """What the page shows, read at one instant: the bars, the top class and its word."""
    return page.evaluate(
        """() => ({
            bars: Object.fromEntries([...document.querySelectorAll("#bars li")]
                .map(e => [e.dataset.class, Number(e.dataset.prob)])),
            top: document.getElementById("top").dataset.class,
            word: document.getElementById("top-word").textContent,
        })"""
    )
