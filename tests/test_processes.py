"""`--processes N`: several serving processes on one port, as an operator runs them.

The real command in a subprocess with the tiny model: both processes take connections, the
load test is answered in full, /metrics sums every process whichever one a scrape reaches,
and SIGTERM to the parent answers every frame in flight and stops them all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.kit.serverproc import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def frames_received(base: str) -> float:
    text = get(base + "/metrics").decode()
    m = re.search(r'^streamfer_frames_received_total\{source="ws"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def loadtest(url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamfer.loadtest", "--url", url,
                             "--json", "--target-ms", "10000", "--max-loss", "1", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_processes_share_the_port_sum_their_metrics_and_stop_together(
        tiny_model_path: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamfer.serve", "--model", str(tiny_model_path),
         "--host", "127.0.0.1", "--port", str(port), "--processes", "2", "--workers", "1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 90
        while len(pids) < 2 and time.monotonic() < deadline:  # new connection each time
            try:
                pids.add(json.loads(get(base + "/healthz"))["pid"])
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
        assert len(pids) == 2 and proc.pid not in pids, pids  # two children serve the port

        run = loadtest(f"ws://127.0.0.1:{port}/ws", "--clients", "6", "--fps", "10",
                       "--seconds", "2")
        out, err = run.communicate(timeout=60)
        s = json.loads(out)
        assert run.returncode == 0 and s["sent"] == s["answered"] > 0, (s["failures"], err)
        # Whichever process a scrape reaches, it counts every process's frames.
        assert [frames_received(base) for _ in range(6)] == [float(s["sent"])] * 6

        # SIGTERM while phones stream: every frame sent gets its reply, all processes stop.
        run = loadtest(f"ws://127.0.0.1:{port}/ws", "--clients", "4", "--fps", "10",
                       "--seconds", "6")
        before = frames_received(base)
        while frames_received(base) < before + 20:  # phones are streaming
            assert run.poll() is None and time.monotonic() < deadline + 60
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(timeout=30) == 0
        stopped_s = time.monotonic() - t0
        out, err = run.communicate(timeout=60)
        s = json.loads(out)
        assert s["missing"] == 0 and s["sent"] == s["answered"] > 0, (s, err)
        for pid in pids:  # no child left behind
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert stopped_s < 25
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()


def test_processes_need_a_fixed_port() -> None:
    proc = subprocess.run([sys.executable, "-m", "streamfer.serve", "--port", "0",
                           "--processes", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "processes > 1 needs a fixed port" in proc.stderr
