"""Load test: many phones streaming at once, against a running streamfer server.

    python -m streamfer.loadtest --url ws://127.0.0.1:8080/ws --clients 8 --fps 15 --seconds 10
    python -m streamfer.loadtest --url wss://my.host:8443/ws --insecure --ramp --target-ms 100

Each client is one WebSocket behaving like the phone page (docs/PROTOCOL.md): frames on a
fixed clock, at most `window` unanswered. It reports round trips (p50/p90/p99/max), the
throughput, frames sent vs answered -- which must be equal: the protocol promises one reply
per frame, so a reply still missing after a grace period is a failure and the exit code is
non-zero -- drops and errors by reason, and the server's own timing breakdown and batch sizes.
PASSED (exit code 0) means every frame got one reply, p99 <= --target-ms and losses <=
--max-loss, over the whole run; otherwise FAILED says which of these missed (exit code 1),
a server that cannot be reached or that closes connections before the run's end included.
`--ramp` finds the most clients the server holds with p99 under `--target-ms`.

It is a client tool: it imports neither torch nor the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamfer.cli import opt, parse
from streamfer.loadtest.client import Load, run_load
from streamfer.loadtest.frames import KINDS, FrameSet, load_frames
from streamfer.loadtest.report import format_summary, rtts_ms, save_histogram, summarize

log = logging.getLogger(__name__)

MAX_CLIENTS = 4096
MAX_SECONDS = 3600.0
MAX_FPS = 240.0


@dataclass(frozen=True)
class LoadTestConfig:
    """Everything one load-test invocation does, filled from the command line."""

    url: str = opt("ws://127.0.0.1:8080/ws", "ws:// or wss:// URL of the /ws endpoint")
    clients: int = opt(4, "concurrent connections (with --ramp: the first step)")
    fps: float = opt(15.0, "frames per second per client")
    seconds: float = opt(10.0, "how long to stream")
    kind: str = opt("crops", "crops: client-made face crops (flag bit 0, no server "
                    "detection); frames: full 320 px camera frames (the server detects)", KINDS)
    images: Path | None = opt(None, "folder of face photos (.jpg/.png); default: the built-in "
                              "astronaut")
    window: int | None = opt(None, "max unanswered frames per client (default: the "
                             "greeting's limit)")
    grace: float = opt(3.0, "seconds to wait for the last replies before counting them missing")
    insecure: bool = opt(False, "accept a self-signed TLS certificate (wss://)")
    origin: str | None = opt(None, "Origin header (default: the URL's own origin, as the page "
                             "sends)")
    json: bool = opt(False, "print one JSON object on stdout")
    ramp: bool = opt(False, "find the most clients with p99 within --target-ms")
    target_ms: float = opt(100.0, "the p99 round trip (ms) a passing run, or ramp step, stays "
                           "at or under (exit code 1 otherwise)")
    max_loss: float = opt(0.01, "most frames a passing run, or ramp step, may lose (dropped, "
                          "not sent, or in flight on a lost connection), as a fraction of its "
                          "slots (exit code 1 otherwise)")
    max_clients: int = opt(256, "ramp: upper bound")
    step_seconds: float = opt(5.0, "ramp: length of each step")
    pause: float = opt(1.0, "ramp: seconds between steps, so the server drains")
    histogram: Path | None = opt(None, "save a latency histogram PNG")
    reconnect: bool = opt(False, "open a lost connection again, as the page does (e.g. a "
                          "replica behind a load balancer went away); its unanswered frames "
                          "count as lost")

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"--url must start with ws:// or wss://, got {self.url!r}")
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise ValueError(f"--clients must be 1..{MAX_CLIENTS}")
        if not 1 <= self.max_clients <= MAX_CLIENTS:
            raise ValueError(f"--max-clients must be 1..{MAX_CLIENTS}")
        if not 0 < self.fps <= MAX_FPS:
            raise ValueError(f"--fps must be in (0, {MAX_FPS:g}]")
        for name in ("seconds", "step_seconds"):
            if not 0 < getattr(self, name) <= MAX_SECONDS:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, {MAX_SECONDS:g}]")
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {KINDS}")
        if self.window is not None and self.window < 1:
            raise ValueError("--window must be at least 1")
        if self.ramp and self.clients > self.max_clients:
            raise ValueError("--ramp starts at --clients, which must not exceed --max-clients")
        if self.target_ms <= 0:
            raise ValueError("--target-ms must be > 0")
        if self.grace < 0 or self.pause < 0 or not 0 <= self.max_loss <= 1:
            raise ValueError("--grace and --pause must be >= 0, --max-loss in [0, 1]")

    def load(self, clients: int | None = None, seconds: float | None = None) -> Load:
        return Load(url=self.url, clients=clients or self.clients, fps=self.fps,
                    seconds=seconds or self.seconds, window=self.window, grace=self.grace,
                    insecure=self.insecure, origin=self.origin, reconnect=self.reconnect)


def parse_args(argv: list[str] | None = None) -> LoadTestConfig:
    return parse(LoadTestConfig, argv, prog="python -m streamfer.loadtest",
                 description="Stream face frames from N concurrent WebSocket clients to a "
                             "streamfer server and report latency, throughput and lost replies.")


async def run_once(cfg: LoadTestConfig, frames: FrameSet, clients: int | None = None,
                   seconds: float | None = None) -> tuple[dict, list[float]]:
    """One run at a fixed load: its summary and every round trip in ms.

    The summary's `client_cpu` is this process's CPU seconds per wall second during the run:
    near 1.0 the load generator itself was the bottleneck, and its latencies overstate the
    server's.
    """
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run = await run_load(cfg.load(clients, seconds), frames)
    summary = summarize(run)
    summary["client_cpu"] = round((time.process_time() - cpu0) /
                                  max(time.perf_counter() - wall0, 1e-9), 3)
    return summary, rtts_ms(run)


def loss_rate(summary: dict) -> float:
    """Frames lost to overload (dropped, or not sent for a full window or a late client)."""
    lost = (summary["dropped"] + summary["not_sent_window_full"] + summary["not_sent_late"]
            + summary.get("lost_on_disconnect", 0) + summary.get("not_sent_disconnected", 0)
            + summary.get("not_sent_server_closed", 0))
    return lost / max(summary["slots"], 1)


def judge(summary: dict, target_ms: float, max_loss: float) -> dict:
    """The verdict means what it says: passed only when every frame got exactly one reply,
    p99 <= target_ms and losses <= max_loss; each miss adds its reason to `failures`."""
    p99 = summary["rtt_ms"]["p99"]
    loss = loss_rate(summary)
    summary.update(target_ms=target_ms, max_loss=max_loss, loss=round(loss, 4))
    failures = list(summary["failures"])
    if p99 is None:
        failures.append("no replies, so no p99 to hold to --target-ms")
    elif p99 > target_ms:
        failures.append(f"p99 round trip {p99:g} ms is over --target-ms {target_ms:g}")
    if loss > max_loss:
        failures.append(f"{100 * loss:.1f}% of frames lost (dropped or not sent), over "
                        f"--max-loss {100 * max_loss:g}%")
    summary["failures"] = failures
    summary["passed"] = not failures
    return summary


def step_passes(summary: dict, target_ms: float, max_loss: float) -> bool:
    return bool(judge(summary, target_ms, max_loss)["passed"])


def step_line(summary: dict, verdict: bool) -> str:
    r = summary["rtt_ms"]
    return (f"{summary['clients']:5d} clients  p50 {r['p50']} p90 {r['p90']} p99 {r['p99']} "
            f"max {r['max']} ms  {summary['throughput_fps']:g} replies/s "
            f"(offered {summary['offered_fps']:g})  lost {100 * loss_rate(summary):.1f}%  "
            f"batch mean {summary['batch']['mean']}  "
            f"{'ok' if verdict else 'FAIL'}"
            + ("" if summary["passed"] else "  [" + "; ".join(summary["failures"]) + "]"))


async def ramp(cfg: LoadTestConfig, frames: FrameSet,
               emit: Callable[[str], None] = print) -> tuple[dict, dict[str, list[float]]]:
    """Double the clients from --clients while steps pass, then bisect to the largest N that
    passes: p99 under the target, losses within --max-loss, every frame answered.

    Returns the ramp summary and the round trips of the best passing and first failing step.
    """
    steps: list[dict] = []
    rtts: dict[int, list[float]] = {}

    async def step(n: int) -> bool:
        if steps and cfg.pause:
            await asyncio.sleep(cfg.pause)
        summary, times = await run_once(cfg, frames, n, cfg.step_seconds)
        verdict = step_passes(summary, cfg.target_ms, cfg.max_loss)
        summary["step_passed"] = verdict
        steps.append(summary)
        rtts[n] = times
        emit(step_line(summary, verdict))
        return verdict

    best, worst = 0, None
    n = cfg.clients
    while n <= cfg.max_clients:
        if not await step(n):
            worst = n
            break
        best = n
        if n == cfg.max_clients:
            break
        n = min(n * 2, cfg.max_clients)
    if worst is not None:
        lo, hi = best, worst
        while hi - lo > 1 and hi > cfg.clients:
            mid = (lo + hi) // 2
            if mid < cfg.clients:
                break
            if await step(mid):
                lo = mid
            else:
                hi = mid
        best, worst = lo, hi
    broken = [s for s in steps if s["missing"] or any(
        not k.startswith("connect failed") for k in s["errors_by_reason"])]
    result = {
        "target_ms": cfg.target_ms,
        "max_loss": cfg.max_loss,
        "fps": cfg.fps,
        "kind": cfg.kind,
        "step_seconds": cfg.step_seconds,
        "best_clients": best,
        "first_failing_clients": worst,
        "hit_max_clients": worst is None,
        "best": next((s for s in steps if s["clients"] == best and s["step_passed"]), None),
        "steps": steps,
        "failures": [f"{s['clients']} clients: {'; '.join(s['failures'])}" for s in broken],
    }
    result["passed"] = not broken
    series = {}
    if best:
        series[f"{best} clients (best)"] = rtts[best]
    if worst is not None:
        series[f"{worst} clients (first failing)"] = rtts[worst]
    return result, series


async def amain(cfg: LoadTestConfig) -> int:
    frames = load_frames(cfg.kind, cfg.images)
    if cfg.ramp:
        emit = (lambda line: print(line, file=sys.stderr, flush=True)) if cfg.json else print
        emit(f"ramp: {cfg.fps:g} fps per client, {cfg.kind}, {cfg.step_seconds:g} s steps, "
             f"pass = p99 <= {cfg.target_ms:g} ms and loss <= {100 * cfg.max_loss:g}%")
        result, series = await ramp(cfg, frames, emit)
        if cfg.json:
            print(json.dumps(result))
        else:
            print(f"largest N with p99 <= {cfg.target_ms:g} ms: {result['best_clients']}"
                  + (" (the --max-clients cap)" if result["hit_max_clients"] else ""))
            for failure in result["failures"]:
                print(f"FAILED: {failure}")
        title = f"{cfg.url} ramp, {cfg.fps:g} fps/client, {cfg.kind}"
    else:
        summary, times = await run_once(cfg, frames)
        judge(summary, cfg.target_ms, cfg.max_loss)
        print(json.dumps(summary) if cfg.json else format_summary(summary))
        result, series = summary, {f"{cfg.clients} clients": times}
        title = f"{cfg.url}: {cfg.clients} clients x {cfg.fps:g} fps, {cfg.kind}"
    if cfg.histogram is not None:
        path = save_histogram(cfg.histogram, series, title, cfg.target_ms)
        print(f"histogram: {path}", file=sys.stderr if cfg.json else sys.stdout)
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    return asyncio.run(amain(cfg))
