"""Prometheus metrics for one app, in the app's own registry.

A registry per app (not prometheus-client's global one) so tests and benchmarks can build
many apps in one process without "duplicated timeseries" errors.

Under `--processes N` (several server processes sharing one port) prometheus-client's
multiprocess mode is on: the serving processes start with PROMETHEUS_MULTIPROC_DIR set, every
value is kept in a file there, and whichever process a scrape reaches renders the sum over
all of them (gauges: the sum over the live processes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from streamfer.protocol import DROPPED, ERROR, TIMING_KEYS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
T = TypeVar("T")
R = TypeVar("R")


def multiprocess() -> bool:
    """True in a process started by `--processes N` (prometheus-client reads the variable
    when it is first imported, so it is set before the serving processes start)."""
    return bool(os.environ.get(MULTIPROC_ENV))

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Seconds, 0.5 ms .. 2.5 s: the interesting range is a few ms to the 100 ms budget.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                   1.0, 2.5)
STAGES = TIMING_KEYS


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_in = Counter("streamfer_frames_received", "Frames received (WebSocket "
                                 "messages and /api/predict requests)", ["source"], registry=r)
        self.frames_by_kind = Counter(
            "streamfer_frames_by_kind", "Frames read, by what the client sent: crop (its own "
            "detector found and cropped the face) or full (the server looks for a face)",
            ["kind"], registry=r)
        self.replies = Counter("streamfer_replies", "Frames answered, by reply status",
                               ["status"], registry=r)
        self.dropped = Counter("streamfer_dropped", "Frames dropped without inference, "
                               "by reason", ["reason"], registry=r)
        self.errors = Counter("streamfer_errors", "Frames answered with an error, by code",
                              ["code"], registry=r)
        self.batch_size = Histogram("streamfer_batch_size", "Frames per inference batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("streamfer_batch_inference_seconds",
                                       "Model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.inference_cpu = Counter(
            "streamfer_inference_cpu_seconds", "CPU time of the inference thread in the "
            "model's forward (its own thread only: a runtime's extra threads are not "
            "counted); the process's CPU less this is what serving costs besides the model",
            registry=r)
        self.latency = Histogram("streamfer_frame_latency_seconds",
                                 "Per-frame time by stage (decode = decode + face detection; "
                                 "total = receipt to reply)", ["stage"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("streamfer_queue_depth", "Frames waiting for a batch "
                                 "(with --processes: the sum of each process's value at its "
                                 "last scrape)", registry=r, multiprocess_mode="livesum")
        self.connections = Gauge("streamfer_connections", "Open WebSocket connections",
                                 registry=r, multiprocess_mode="livesum")
        self._queue_depth: Callable[[], float] | None = None

    def track_queue(self, depth: Callable[[], float]) -> None:
        if multiprocess():  # a callback cannot be read from another process: sample it
            self._queue_depth = depth
        else:
            self.queue_depth.set_function(depth)

    def observe_kind(self, is_crop: bool) -> None:
        self.frames_by_kind.labels("crop" if is_crop else "full").inc()

    def timed_forward(self, forward: Callable[[T], R]) -> Callable[[T], R]:
        """`forward`, counting its CPU time (on the calling thread) in inference_cpu."""
        def timed(x: T) -> R:
            start = time.thread_time()
            try:
                return forward(x)
            finally:
                self.inference_cpu.inc(time.thread_time() - start)
        return timed

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_reply(self, body: dict[str, Any]) -> None:
        """Count one reply body (protocol.ok/no_face/dropped/error) and its timings."""
        status = body["status"]
        self.replies.labels(status).inc()
        if status == DROPPED:
            self.dropped.labels(body["reason"]).inc()
        elif status == ERROR:
            self.errors.labels(body["code"]).inc()
        for stage, ms in body.get("timings_ms", {}).items():
            if stage in STAGES:
                self.latency.labels(stage).observe(ms / 1000.0)

    def render(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        if self._queue_depth is not None:
            self.queue_depth.set(self._queue_depth())
        every_process = CollectorRegistry()
        MultiProcessCollector(every_process)
        return generate_latest(every_process)
