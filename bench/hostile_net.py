"""Honest phones beside one hostile client: does the network side keep them served?

Starts the real server once on a free 127.0.0.1 port (its default limits unless
--server-arg says otherwise). Each case runs the load test's clients (5 x 15 fps of the
page's face crops by default) for --seconds while one hostile client attacks as fast as the
server's limits let it -- every time the server cuts it, it starts again at once:

- baseline: no attacker;
- tiny_parts: back-to-back uploads of ~500 KB multipart bodies of one-byte parts;
- flood_<kind>: one WebSocket blasting messages that are not frames (empty, text, an
  unknown version, oversize, pings) or junk frames, reconnecting whenever it is closed;
- idle_sockets: as many TCP connections as the server will hold, sending nothing;
- held_uploads: uploads that announce 20 MB and stall, as many as are admitted.

Prints, and writes as JSON, each case's honest p50/p99 round trip and answered fraction side
by side with the baseline measured in the same run, and what the attacker managed. The
attacker runs in a process of its own, so it shares no interpreter lock with the honest
clients; on a machine with few cores it still competes with them and the server for CPU.

    python -m bench.hostile_net                         # every case, 10 s each
    python -m bench.hostile_net --cases baseline,flood_ping --seconds 5
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serverrun import ServerRunConfig, parse_cpus
from streamfer.cli import opt, parse
from streamfer.loadtest.client import Load, run_load
from streamfer.loadtest.frames import load_frames
from streamfer.loadtest.report import summarize
from tests.kit.rawws import ws_frame, ws_upgrade
from tests.kit.serverproc import running_server

FLOODS = ("empty", "text", "wrong_version", "oversize", "ping", "frames")
CASES = ("baseline", "tiny_parts", *(f"flood_{k}" for k in FLOODS), "idle_sockets",
         "held_uploads")


@dataclass(frozen=True)
class HostileNetConfig(ServerRunConfig):
    cases: tuple[str, ...] = opt(CASES, "comma-separated cases to run, in order", CASES,
                                 comma=True)
    clients: int = opt(5, "honest load-test clients")
    fps: float = opt(15.0, "frames per second per honest client")
    seconds: float = opt(10.0, "length of each case")
    target_ms: float = opt(150.0, "the p99 an honest client should stay within")
    name: str = opt("hostile_net", "result name")


# -- the attackers: blocking sockets in a thread, each loops until `stop` ---------------------


def _connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def flood_bytes(kind: str, max_frame_bytes: int) -> bytes:
    """~400 KB of one kind of message."""
    one = {
        "empty": ws_frame(b"", 2),
        "text": ws_frame(b"hi", 1),
        "wrong_version": ws_frame(struct.pack(">BBHI", 9, 1, 0, 1) + b"x", 2),
        "oversize": ws_frame(struct.pack(">BBHI", 1, 1, 0, 1) + b"x" * (max_frame_bytes + 1), 2),
        "ping": ws_frame(b"p", 9),
        "frames": ws_frame(struct.pack(">BBHI", 1, 1, 0, 1) + b"\xff\xd8junk", 2),
    }[kind]
    return one * max(20, 400_000 // len(one))


def flood(port: int, stop: threading.Event, stats: Counter, kind: str,
          max_frame_bytes: int) -> None:
    burst = flood_bytes(kind, max_frame_bytes)
    while not stop.is_set():
        try:
            s = ws_upgrade(port)
        except OSError as exc:
            stats[f"connect failed: {type(exc).__name__}"] += 1
            time.sleep(0.05)
            continue
        stats["connections"] += 1
        s.settimeout(0.5)
        try:
            while not stop.is_set():
                s.sendall(burst)
                stats["bytes"] += len(burst)
        except OSError:
            stats["cut"] += 1
        finally:
            s.close()


def tiny_parts(port: int, stop: threading.Event, stats: Counter) -> None:
    part = b"--b\r\nContent-Disposition: form-data; name=\"j\"\r\n\r\nx\r\n"
    body = part * 10_000 + b"--b--\r\n"
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n"
            % len(body))
    while not stop.is_set():
        try:
            s = _connect(port, timeout=20)
            s.sendall(head + body)
            reply = s.recv(64)
            stats[reply.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"] += 1
            s.close()
        except OSError as exc:
            stats[type(exc).__name__] += 1


def _hold(port: int, stop: threading.Event, stats: Counter, most: int, first: bytes,
          counted: str) -> None:
    """Keep up to `most` connections open, each having sent `first`, reopening cut ones."""
    held: list[socket.socket] = []
    while not stop.is_set():
        held = [s for s in held if _alive(s)]
        while len(held) < most and not stop.is_set():
            try:
                s = _connect(port, timeout=1.0)
                if first:
                    s.sendall(first)
                held.append(s)
                stats[counted] += 1
            except OSError:
                stats["refused"] += 1
                break
        stats["held_max"] = max(stats["held_max"], len(held))
        time.sleep(0.2)
    for s in held:
        s.close()


def idle_sockets(port: int, stop: threading.Event, stats: Counter, most: int = 2000) -> None:
    _hold(port, stop, stats, most, b"", "opened")


def _alive(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        data = s.recv(1, socket.MSG_PEEK)
        alive = bool(data) and not data.startswith(b"H")  # an answer (503) or EOF: cut
    except BlockingIOError:
        alive = True
    except OSError:
        alive = False
    if not alive:
        s.close()
    return alive


def held_uploads(port: int, stop: threading.Event, stats: Counter, most: int = 120) -> None:
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 20000000\r\n\r\n")
    _hold(port, stop, stats, most, head + b"\xff" * 65536, "started")


def attacker(case: str, max_frame_bytes: int) -> Callable[[int, threading.Event, Counter],
                                                          None] | None:
    if case == "baseline":
        return None
    if case.startswith("flood_"):
        kind = case.removeprefix("flood_")
        return lambda port, stop, stats: flood(port, stop, stats, kind, max_frame_bytes)
    return {"tiny_parts": tiny_parts, "idle_sockets": idle_sockets,
            "held_uploads": held_uploads}[case]


# -- the run ----------------------------------------------------------------------------------


def _attack_process(case: str, max_frame_bytes: int, port: int, stop: Any,
                    out: Any) -> None:
    """The attacker in its own process (not sharing the load test's interpreter lock)."""
    attack = attacker(case, max_frame_bytes)
    assert attack is not None
    stats: Counter = Counter()
    local = threading.Event()
    thread = threading.Thread(target=attack, args=(port, local, stats), daemon=True)
    thread.start()
    stop.wait()
    local.set()
    thread.join(30)
    out.put(dict(stats))


def run_case(case: str, url: str, port: int, cfg: HostileNetConfig, frames, hello: dict
             ) -> dict:
    ctx = multiprocessing.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    proc = None
    stats: dict = {}
    if attacker(case, 0) is not None:
        proc = ctx.Process(target=_attack_process, args=(
            case, hello.get("max_frame_bytes", 256 * 1024), port, stop, out), daemon=True)
        proc.start()
        time.sleep(1.0)  # the attack under way before the honest clients connect
    try:
        run = asyncio.run(run_load(Load(url=url, clients=cfg.clients, fps=cfg.fps,
                                        seconds=cfg.seconds), frames))
    finally:
        stop.set()
        if proc is not None:
            with contextlib.suppress(Exception):
                stats = out.get(timeout=40)
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    s = summarize(run)
    answered = s["answered"] / max(s["slots"], 1)
    ok = s["ok"] / max(s["slots"], 1)
    return {"case": case, "p50_ms": s["rtt_ms"]["p50"], "p99_ms": s["rtt_ms"]["p99"],
            "answered_fraction": round(answered, 4), "ok_fraction": round(ok, 4),
            "slots": s["slots"], "sent": s["sent"], "answered": s["answered"],
            "dropped_by_reason": s["dropped_by_reason"], "errors_by_reason":
            s["errors_by_reason"], "failures": s["failures"], "attacker": stats}


def main(argv: list[str] | None = None) -> int:
    cfg = parse(HostileNetConfig, argv, prog="python -m bench.hostile_net",
                description=__doc__.split("\n\n")[0])
    info, line = cfg.pin_client()
    print(line, flush=True)
    frames = load_frames("crops", None)
    rows = []
    with running_server(cfg.model, cfg.server_arg, cpus=parse_cpus(cfg.server_cpus),
                        log_path=cfg.log_path(f"{cfg.name}_server")) as server:
        port = server.port
        hello = {"max_frame_bytes": 256 * 1024}
        for arg, value in zip(cfg.server_arg, cfg.server_arg[1:], strict=False):
            if arg == "--max-frame-bytes":
                hello["max_frame_bytes"] = int(value)
        for case in cfg.cases:
            row = run_case(case, server.url, port, cfg, frames, hello)
            rows.append(row)
            print(f"{case:22s} p50 {row['p50_ms']} p99 {row['p99_ms']} ms, answered "
                  f"{row['answered_fraction']:.1%} (ok {row['ok_fraction']:.1%}); attacker "
                  f"{row['attacker']}", flush=True)
            time.sleep(1.0)
        with contextlib.suppress(OSError):
            log_tail = server.log_path.read_text().splitlines()[-20:]
    base = next((r for r in rows if r["case"] == "baseline"), None)
    print(f"\n{'case':22s} {'p99 ms':>8s} {'x baseline':>10s} {'answered':>9s}  "
          f"target p99 < {cfg.target_ms:g} ms, every frame answered")
    for r in rows:
        ratio = (r["p99_ms"] / base["p99_ms"]) if base and base["p99_ms"] and r["p99_ms"] \
            else None
        met = r["p99_ms"] is not None and r["p99_ms"] < cfg.target_ms and \
            r["answered"] == r["sent"] and not r["failures"]
        r["meets_target"] = met
        print(f"{r['case']:22s} {r['p99_ms'] or float('nan'):8.1f} "
              f"{ratio if ratio is not None else float('nan'):10.2f} "
              f"{r['answered_fraction']:9.1%}  {'yes' if met else 'NO'}")
    cases = {r["case"]: {"p99_ms": r["p99_ms"],
                         "x_baseline": round(r["p99_ms"] / base["p99_ms"], 2)
                         if base and base["p99_ms"] and r["p99_ms"] else None,
                         "answered": r["answered_fraction"], "meets_target": r["meets_target"]}
             for r in rows}
    cfg.save(cfg.name, {"clients": cfg.clients, "fps": cfg.fps, "target_p99_ms": cfg.target_ms,
                        "cases": cases},
             {"benchmark": "hostile_net", "model": str(cfg.model), "machine": info,
              "config": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in cfg.__dict__.items()},
              "server_args": list(cfg.server_arg), "rows": rows, "server_log_tail": log_tail})
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
