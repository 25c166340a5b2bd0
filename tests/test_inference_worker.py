"""`--inference-worker`: front-end processes feeding one inference process, one batcher.

The real command with the shipped model on 127.0.0.1: faces sent to several front-ends get
the probabilities the model gives them in this process, batches form across front-ends
(/metrics), SIGTERM answers every frame in flight and stops every process, and a dead worker
is reported (error replies, /healthz 503, a non-zero exit), never a hang. One test runs the
app in this process against a real worker process to see /healthz turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from streamfer.faces import decode_gray, resize_square
from streamfer.paths import DEFAULT_MODEL
from streamfer.protocol import pack_frame
from streamfer.server.config import ServeConfig
from tests.kit.serverproc import free_port

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 60.0  # no single wait may take longer (a busy machine; not a timing)

pytestmark = pytest.mark.slow


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metrics(base: str) -> str:
    return get(base + "/metrics")[1].decode()


def crops(astronaut_rgb: np.ndarray) -> list[bytes]:
    """Eight different real face crops (the astronaut, cut a little differently each)."""
    gray = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY)
    out = []
    for k in range(8):
        d = 6 * k
        ok, buf = cv2.imencode(".jpg", cv2.resize(gray[50 + d:220 + d // 2, 140 + d:310], (64, 64)))
        assert ok
        out.append(buf.tobytes())
    return out


class Server:
    """`python -m streamfer.serve --processes N --inference-worker` on a free port."""

    def __init__(self, tmp_path: Path, *flags: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "server.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamfer.serve", "--model", str(DEFAULT_MODEL),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--inference-worker", *flags],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def pids(self, n: int) -> tuple[set[int], int]:
        """The front-ends' pids (new connections until `n` answered) and the worker's."""
        pids: set[int] = set()
        worker = 0
        deadline = time.monotonic() + 120
        while len(pids) < n and time.monotonic() < deadline:
            try:
                status, body = get(self.base + "/healthz")
                health = json.loads(body)
                assert status == 200, health
                pids.add(health["pid"])
                worker = health["inference_worker"]
            except OSError:
                assert self.proc.poll() is None, self.log()
                time.sleep(0.2)
        assert len(pids) == n and worker and worker not in pids, (pids, worker, self.log())
        return pids, worker

    def log(self) -> str:
        return self.log_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its children stop when they see their parent gone
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    s = Server(tmp_path, *request.param)
    yield s
    s.close()


async def send_all(url: str, images: list[bytes], connections: int, rounds: int
                   ) -> list[tuple[int, dict[str, Any]]]:
    """`connections` sockets each send one crop per round, all at once; (image, reply)."""
    out: list[tuple[int, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url) for _ in range(connections)]
        for ws in sockets:
            assert (await asyncio.wait_for(ws.receive_json(), BOUND_S))["type"] == "hello"

        async def one(ws: aiohttp.ClientWebSocketResponse, fid: int) -> None:
            await ws.send_bytes(pack_frame(fid, images[fid % len(images)], is_crop=True))
            reply = await asyncio.wait_for(ws.receive_json(), BOUND_S)
            assert reply["id"] == fid
            out.append((fid % len(images), reply))

        for r in range(rounds):
            await asyncio.gather(*(one(ws, r * connections + i) for i, ws in enumerate(sockets)))
        for ws in sockets:
            await ws.close()
    return out


def leftover_shared_memory(parent_pid: int) -> list[str]:
    """The server's shared-memory blocks still in /dev/shm (a clean stop removes them)."""
    return [p.name for p in Path("/dev/shm").iterdir()
            if p.name.startswith(f"streamfer-{parent_pid}-")]


def loadtest(url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamfer.loadtest", "--url", url,
                             "--json", "--target-ms", "10000", "--max-loss", "1", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def mixed_batches(text: str) -> float:
    """How many of the worker's batches held faces from more than one front-end (/metrics)."""
    count = float(re.search(r"^streamfer_batch_frontends_count (\S+)$", text, re.M).group(1))
    single = float(re.search(r'^streamfer_batch_frontends_bucket\{le="1.0"\} (\S+)$', text,
                             re.M).group(1))
    return count - single


def frames_received(base: str) -> float:
    m = re.search(r'^streamfer_frames_received_total\{source="ws"\} (\S+)$',
                  metrics(base), re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("server", [("--processes", "2")], indirect=True)
def test_front_ends_share_one_batcher_with_the_in_process_answers(
        server: Server, astronaut_rgb: np.ndarray) -> None:
    from streamfer.model import Predictor

    server.pids(2)
    images = crops(astronaut_rgb)
    # 16 sockets: the kernel spreads them over both front-ends (all on one: p = 2^-15). Whether
    # a batch catches faces of both depends on timing (the int8 model answers a batch in about
    # a millisecond), so rounds of 16 x 4 go on until one does, at most 8 of them.
    replies: list[tuple[int, dict[str, Any]]] = []
    for _ in range(8):
        replies += asyncio.run(send_all(f"ws://127.0.0.1:{server.port}/ws", images, 16, 4))
        if mixed_batches(metrics(server.base)) > 0:
            break
    assert len(replies) % 64 == 0 and replies

    predictor = Predictor(DEFAULT_MODEL, device="cpu")  # the in-process path, same runtime
    size = predictor.input_size
    expected = predictor.forward(np.stack([resize_square(decode_gray(b), size)
                                           for b in images]))
    for image, reply in replies:
        assert reply["status"] == "ok", reply
        got = np.array([reply["probs"][c] for c in predictor.classes])
        np.testing.assert_allclose(got, expected[image], atol=2e-3)
        assert reply["timings_ms"]["inference"] > 0

    text = metrics(server.base)
    sizes = float(re.search(r"^streamfer_batch_size_sum (\S+)$", text, re.M).group(1))
    assert sizes == len(replies)  # every face went through the worker's batcher, once
    assert mixed_batches(text) > 0, text  # some batches held faces from both front-ends
    assert max(r["batch"] for _, r in replies) > 1


@pytest.mark.parametrize("server", [("--processes", "2")], indirect=True)
def test_sigterm_answers_every_frame_in_flight_and_stops_every_process(
        server: Server) -> None:
    front_ends, worker = server.pids(2)
    run = loadtest(f"ws://127.0.0.1:{server.port}/ws", "--clients", "4", "--fps", "10",
                   "--seconds", "6")
    before = frames_received(server.base)
    deadline = time.monotonic() + 60
    while frames_received(server.base) < before + 20:  # phones are streaming
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=40) == 0, server.log()
    out, err = run.communicate(timeout=60)
    s = json.loads(out)
    assert s["missing"] == 0 and s["sent"] == s["answered"] > 0 and s["errors"] == 0, (s, err)
    for pid in (*front_ends, worker):  # no process left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "every front-end has gone; stopped" in server.log()
    assert not leftover_shared_memory(server.proc.pid)


@pytest.mark.parametrize("server", [("--processes", "2")], indirect=True)
def test_a_dead_worker_is_reported_not_waited_for(server: Server) -> None:
    front_ends, worker = server.pids(2)
    run = loadtest(f"ws://127.0.0.1:{server.port}/ws", "--clients", "4", "--fps", "10",
                   "--seconds", "6")
    before = frames_received(server.base)
    deadline = time.monotonic() + 60
    while frames_received(server.base) < before + 20:
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    assert server.proc.wait(timeout=40) == 1  # the parent stops the front-ends, non-zero
    out, _ = run.communicate(timeout=60)
    s = json.loads(out)
    log = server.log()
    assert f"the inference worker (pid {worker}) exited" in log, log
    # Nothing hangs: every frame the phones sent was answered (an error once the worker
    # was gone), or reported lost with its connection by the load test.
    assert s["sent"] == s["answered"] + s["missing"] and s["answered"] > 0, s
    for pid in front_ends:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not leftover_shared_memory(server.proc.pid)


async def test_front_end_says_not_ready_and_answers_errors_when_the_worker_dies(
        aiohttp_client: Any, astronaut_rgb: np.ndarray) -> None:
    from streamfer.server.app import init_app
    from streamfer.server.inference_worker import WorkerClient, serve_worker, shm_name

    config = ServeConfig(model=DEFAULT_MODEL, host="127.0.0.1", port=0, device="cpu",
                         workers=1, web_dir=ROOT / "no-such-web-dir")
    spawn = multiprocessing.get_context("spawn")
    front, back = spawn.Pipe()
    name = shm_name(os.getpid(), 900 + free_port() % 1000)
    worker = spawn.Process(target=serve_worker, args=(config, [back], [name]))
    worker.start()
    back.close()
    try:
        link = WorkerClient(front)
        info = await asyncio.get_running_loop().run_in_executor(None, link.wait_ready, BOUND_S)
        assert info.pid == worker.pid and info.classes
        client = await aiohttp_client(init_app(dataclasses.replace(config), worker=link))
        image = crops(astronaut_rgb)[0]

        health = await client.get("/healthz")
        assert health.status == 200 and (await health.json())["inference_worker"] == worker.pid
        ws = await client.ws_connect("/ws")
        await asyncio.wait_for(ws.receive_json(), BOUND_S)
        await ws.send_bytes(pack_frame(1, image, is_crop=True))
        assert (await asyncio.wait_for(ws.receive_json(), BOUND_S))["status"] == "ok"

        worker.kill()
        worker.join(10)
        for _ in range(100):  # the front-end sees the pipe close on its next read
            if not link.alive:
                break
            await asyncio.sleep(0.05)
        health = await client.get("/healthz")
        body = await health.json()
        assert health.status == 503 and body["status"] == "inference_worker_down", body
        assert "inference worker" in body["error"]
        await ws.send_bytes(pack_frame(2, image, is_crop=True))
        reply = await asyncio.wait_for(ws.receive_json(), BOUND_S)
        assert reply["status"] == "error" and reply["code"] == "internal", reply
        assert "inference worker" in reply["error"]
        await ws.close()
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join(10)
        with contextlib.suppress(FileNotFoundError):
            shared_memory.SharedMemory(name).unlink()
