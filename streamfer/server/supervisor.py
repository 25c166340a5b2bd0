"""`--processes N`: N serving processes on one port, started and supervised from here.

SO_REUSEPORT lets the kernel spread new connections over them, so a machine's cores all run
inference instead of one Python event loop feeding one batcher. This process then only starts
them, forwards SIGINT/SIGTERM, waits for their graceful shutdown, and stops them all if one
dies. Each is streamfer.server.serve's server with its own model, batcher and torch threads
(cores / N unless --threads); /metrics sums them (prometheus-client's multiprocess mode); one
self-signed certificate (--https) is made or reused here for all of them.

`--inference-worker` adds one inference process that owns the model (and the CUDA context)
and batches the faces of all N front-ends (streamfer/server/inference_worker.py): the layout
for a GPU machine. The front-ends go first at shutdown (they need the model to answer their
frames in flight); the worker stops once they have all gone. A dead worker stops them all too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Connection

from streamfer.imagecheck import limit_opencv

limit_opencv()  # OpenCV reads its pixel limit once, at import: set it before anything imports cv2

from streamfer.server.config import ServeConfig, available_cores  # noqa: E402
from streamfer.server.inference_worker import serve_worker, shm_name  # noqa: E402
from streamfer.server.metrics import MULTIPROC_ENV  # noqa: E402
from streamfer.server.serve import (  # noqa: E402
    bind_note,
    serve_one,
    setup_logging,
    tls_note,
    urls,
)
from streamfer.server.tls import tls_files  # noqa: E402

log = logging.getLogger("streamfer.server.supervisor")


def _child(config: ServeConfig, link: Connection | None = None) -> None:
    """One of `--processes N` (a fresh interpreter: multiprocessing's spawn)."""
    setup_logging(config)
    raise SystemExit(serve_one(config, reuse_port=True, link=link))


def _inference_child(config: ServeConfig, links: list[Connection], names: list[str]) -> None:
    """The inference worker of `--inference-worker`."""
    setup_logging(config)
    raise SystemExit(serve_worker(config, links, names))


def serve_processes(config: ServeConfig) -> int:
    """Run `config.processes` serving processes on one port until SIGINT/SIGTERM."""
    n = config.processes
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="streamfer-metrics-") as metrics_dir:
        os.environ[MULTIPROC_ENV] = metrics_dir  # read by prometheus-client in each child
        share = max(1, available_cores() // n)  # each process's share of the cores
        child = dataclasses.replace(
            config, processes=1, threads=config.threads or share,
            workers=share if config.workers == available_cores() else config.workers)
        files = tls_files(config)  # one certificate for all, made (or reused) here
        cert = files.made if files else None
        if files is not None:
            child = dataclasses.replace(child, https=False, certfile=files.certfile,
                                        keyfile=files.keyfile)
        spawn = multiprocessing.get_context("spawn")
        inference, names, links = None, [], [None] * n
        if config.inference_worker:  # one pipe and one shared-memory block per front-end
            pipes = [spawn.Pipe() for _ in range(n)]
            links = [front for front, _ in pipes]
            names = [shm_name(os.getpid(), i) for i in range(n)]
            inference = spawn.Process(target=_inference_child, name="streamfer-inference",
                                      args=(config, [back for _, back in pipes], names))
            inference.start()
        procs = [spawn.Process(target=_child, args=(child, links[i]), name=f"streamfer-{i}")
                 for i in range(n)]
        for proc in procs:
            proc.start()
        for link in links:  # the children hold the ends now: a death shows as EOF there
            if link is not None:
                link.close()
        if config.inference_worker:
            for _, back in pipes:
                back.close()
        log.info("streamfer: %d processes sharing %s (pids %s), %d inference and %d decode "
                 "threads each%s%s", n, " ".join(urls(config, config.port)),
                 " ".join(str(p.pid) for p in procs),
                 0 if inference else child.threads, child.workers,
                 f"; one inference worker (pid {inference.pid}) batches for all"
                 if inference else "",
                 f" ({bind_note(config)}){tls_note(config, cert)}")
        code = 0
        while not stop.wait(0.25):
            if inference is not None and not inference.is_alive():
                code = 1
                log.error("the inference worker (pid %s) exited with code %s: stopping the "
                          "front-ends (their frames get internal errors meanwhile)",
                          inference.pid, inference.exitcode)
                break
            dead = [p for p in procs if not p.is_alive()]
            if dead:
                code = next((p.exitcode for p in dead if p.exitcode), 0) or 1
                log.error("server process %s exited with code %s: stopping the others",
                          dead[0].pid, dead[0].exitcode)
                break
        log.info("shutting down %d processes", n)
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + config.shutdown_timeout_s + 15.0
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("server process %s did not stop: killing it", proc.pid)
                proc.kill()
                proc.join(5.0)
        if inference is not None:  # it stops by itself once every front-end has gone
            inference.join(max(5.0, deadline - time.monotonic()))
            if inference.is_alive():
                log.error("the inference worker %s did not stop: killing it", inference.pid)
                inference.kill()
                inference.join(5.0)
            for name in names:  # left behind by a worker that died
                with contextlib.suppress(FileNotFoundError):
                    shared_memory.SharedMemory(name).unlink()
    return code
