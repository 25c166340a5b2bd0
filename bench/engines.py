"""Chromium, Firefox and WebKit behind one small interface, for tests/test_engines.py.

Each engine opens a page with a script that runs before the page's own (tests/kit/fakecam.py
FAKECAM_JS: a photo as the camera), evaluates JavaScript expressions in it and closes:

- Chromium: Playwright on the system Chromium (tests/kit/browserkit.py's flags), headless;
- Firefox ESR: puppeteer-core over WebDriver BiDi (bench/firefox_driver.mjs, run by node), no
  geckodriver and nothing downloaded, under Xvfb (headless Firefox has no WebGL);
- WebKitGTK: Selenium's WebKitGTK driver (WebKitWebDriver) launching MiniBrowser with mock
  capture devices, under Xvfb (it has no headless mode). WebKitWebDriver has no hook that runs
  before a page's scripts, so the script runs in a same-origin window first and the page is then
  written into that window with document.write.

`missing(name)` says why an engine cannot run here (None when it can).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.kit.browserkit import CHROMIUM, CHROMIUM_ARGS, PHONE, ROOT

ENGINES = ("chromium", "firefox", "webkit")
FIREFOX = Path(os.environ.get("STREAMFER_FIREFOX", "/usr/bin/firefox-esr"))
WEBKIT_DRIVER = Path(os.environ.get("STREAMFER_WEBKIT_DRIVER", "/usr/bin/WebKitWebDriver"))
# MiniBrowser comes with libwebkit2gtk-4.1-0, which webkit2gtk-driver depends on.
_MULTIARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
MINIBROWSER = Path(os.environ.get("STREAMFER_MINIBROWSER",
                                  f"/usr/lib/{_MULTIARCH}/webkit2gtk-4.1/MiniBrowser"))
FIREFOX_DRIVER = ROOT / "bench" / "firefox_driver.mjs"
PUPPETEER = ROOT / "web" / "node_modules" / "puppeteer-core" / "package.json"
XVFB = shutil.which("Xvfb") or "/usr/bin/Xvfb"
# A same-origin document that runs no script (the server's health check, which WebKit shows as
# text): the WebKit page is written into it.
BLANK = "/healthz"


def missing(engine: str) -> str | None:
    """Why `engine` cannot run on this machine (what to install), or None."""
    needs: list[tuple[bool, str]] = []
    if engine == "chromium":
        needs.append((CHROMIUM.exists(), f"Chromium at {CHROMIUM}: `apt-get install chromium`"))
        try:
            import playwright  # noqa: F401
        except ImportError:
            needs.append((False, "the playwright package: `pip install -e '.[test]'`"))
    elif engine == "firefox":
        needs += [(FIREFOX.exists(), f"Firefox at {FIREFOX}: `apt-get install firefox-esr`"),
                  (shutil.which("node") is not None, "node: `apt-get install nodejs npm`"),
                  (PUPPETEER.exists(), "puppeteer-core in web/node_modules: `(cd web && npm ci)`")]
    elif engine == "webkit":
        needs += [(WEBKIT_DRIVER.exists(), f"WebKitWebDriver at {WEBKIT_DRIVER}: "
                   "`apt-get install webkit2gtk-driver`"),
                  (MINIBROWSER.exists(), f"MiniBrowser at {MINIBROWSER}: "
                   "`apt-get install webkit2gtk-driver`")]
        try:
            import selenium  # noqa: F401
        except ImportError:
            needs.append((False, "the selenium package: `pip install -e '.[test]'`"))
    else:
        raise ValueError(f"no engine called {engine!r} ({', '.join(ENGINES)})")
    if engine in ("firefox", "webkit"):
        needs.append((Path(XVFB).exists(), "Xvfb: `apt-get install xvfb`"))
    gaps = [what for ok, what in needs if not ok]
    return "needs " + "; ".join(gaps) if gaps else None


@contextmanager
def xvfb() -> Iterator[str]:
    """A virtual X display for the engines that need one; yields its DISPLAY (":N")."""
    read, write = os.pipe()
    proc = subprocess.Popen([XVFB, "-displayfd", str(write), "-screen", "0", "1280x1024x24",
                             "-nolisten", "tcp"], pass_fds=(write,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        with os.fdopen(read) as fd:
            number = fd.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Engine:
    """One browser: open(url, init) a page, evaluate(js) in it, leave() it, close()."""

    name = ""

    def open(self, url: str, init: str) -> None:
        raise NotImplementedError

    def leave(self) -> None:
        """Close the page (its scripts stop: it sends nothing more)."""
        raise NotImplementedError

    def evaluate(self, js: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def wait(self, js: str, timeout_s: float, what: str = "") -> Any:
        """Poll the expression `js` until it is truthy; its value. On timeout, an error that
        says what was awaited and what `what` (an expression) shows then."""
        end = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(js)
            if value:
                return value
            if time.monotonic() > end:
                seen = self.evaluate(what) if what else None
                raise TimeoutError(f"{self.name}: not true after {timeout_s:g} s: {js} "
                                   f"(seen: {seen!r})")
            time.sleep(0.25)


class Chromium(Engine):
    name = "chromium"

    def __init__(self) -> None:
        from playwright import sync_api

        self._pw = sync_api.sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=CHROMIUM_ARGS)
        self._context = self._browser.new_context(**PHONE)
        self._page: Any = None

    def open(self, url: str, init: str) -> None:
        self.leave()
        self._page = self._context.new_page()
        self._page.add_init_script(init)
        self._page.goto(url)

    def leave(self) -> None:
        if self._page is not None:
            self._page.close()
        self._page = None

    def evaluate(self, js: str) -> Any:
        return self._page.evaluate(js)

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


class Firefox(Engine):
    name = "firefox"

    def __init__(self, display: str) -> None:
        env = {**os.environ, "DISPLAY": display, "STREAMFER_FIREFOX": str(FIREFOX)}
        self._proc = subprocess.Popen(["node", str(FIREFOX_DRIVER)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env, text=True, bufsize=1)

    def _call(self, **command: Any) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"firefox driver exited ({self._proc.wait(timeout=5)})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"firefox: {answer['error']}")
        return answer["value"]

    def open(self, url: str, init: str) -> None:
        self._call(op="open", url=url, init=init)

    def leave(self) -> None:
        self._call(op="leave")

    def evaluate(self, js: str) -> Any:
        return self._call(op="eval", js=js)

    def close(self) -> None:
        try:
            self._call(op="close")
            self._proc.wait(timeout=15)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait(timeout=5)


class WebKit(Engine):
    name = "webkit"

    def __init__(self, display: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.webkitgtk.options import Options
        from selenium.webdriver.webkitgtk.service import Service

        options = Options()
        options.binary_location = str(MINIBROWSER)
        for arg in ("--automation", "--enable-media-stream=true",
                    "--enable-mock-capture-devices=true"):
            options.add_argument(arg)
        service = Service(executable_path=str(WEBKIT_DRIVER),
                          env={**os.environ, "DISPLAY": display})
        self._driver = webdriver.WebKitGTK(options=options, service=service)
        self._driver.set_window_size(390, 844)

    def open(self, url: str, init: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as resp:
            page = resp.read().decode()
        # (with the page's query: the page reads its options from location.search)
        parts = urlsplit(url)
        self._driver.get(urlunsplit((parts.scheme, parts.netloc, BLANK, parts.query, "")))
        self._driver.execute_script(init)
        # The page, written after the camera override, with the override first again (the
        # window is the same, so is the camera; document.open() dropped the error listeners).
        self._driver.execute_script(
            "document.open(); document.write(arguments[0]); document.close();",
            f'<base href="{html.escape(url)}"><script>{init}</script>\n{page}')

    def leave(self) -> None:
        self._driver.get("about:blank")

    def evaluate(self, js: str) -> Any:
        return self._driver.execute_script(f"return ({js});")

    def close(self) -> None:
        self._driver.quit()


def launch(engine: str, display: Callable[[], str]) -> Engine:
    """Start `engine`; `display()` gives an X display for those that need one."""
    if engine == "chromium":
        return Chromium()
    if engine == "firefox":
        return Firefox(display())
    if engine == "webkit":
        return WebKit(display())
    raise ValueError(f"no engine called {engine!r} ({', '.join(ENGINES)})")
