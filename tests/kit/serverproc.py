"""Start the real server (`python -m streamfer.serve`) as a subprocess, for a test or a
benchmark.

Both meet the server as users run it -- its own process, its own event loop and worker --
on a free loopback port, optionally pinned to chosen CPUs so a load generator does not
steal the server's cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str  # ws://127.0.0.1:PORT/ws (wss:// when started with --https)
    health: dict
    args: tuple[str, ...]
    log_path: Path
    proc: subprocess.Popen | None = None  # the server process (its RSS, a signal, its exit)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def base(self) -> str:
        """The server's HTTP(S) root, http://127.0.0.1:PORT (no trailing slash)."""
        return self.url.replace("ws", "http", 1).removesuffix("/ws")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used so far: its process and the live
        processes it started (--processes, --inference-worker) (Linux /proc)."""
        stats = _proc_stats()
        return sum(stats[pid][1] for pid in self.pids() if pid in stats) / os.sysconf(
            "SC_CLK_TCK")

    def pids(self) -> list[int]:
        """The server's process and every live process under it (Linux /proc)."""
        stats = _proc_stats()
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += [c for c, (ppid, _) in stats.items() if ppid == pid]
        return out


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def maps_torch(pid: int) -> bool:
    """Has this process loaded PyTorch's native library (imported torch)? (/proc/PID/maps)"""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def maps_opencv(pid: int) -> bool:
    """Has this process loaded OpenCV's native library (imported cv2)? (/proc/PID/maps)"""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libopencv" in maps or "/cv2/" in maps


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system clock ticks) of every process (Linux /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # it has just exited
            continue
        out[int(d.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@contextlib.contextmanager
def running_server(model: Path, args: Sequence[str] = (), *, cpus: set[int] | None = None,
                   log_path: Path, start_timeout: float = 60.0,
                   root: Path | None = None, python: Path | None = None) -> Iterator[Server]:
    """Run the server until the block ends; yields once /healthz answers. `root`: run the
    server of another checkout (e.g. the code before a change), not this one. `python`: the
    interpreter of a virtual environment where streamfer is installed, which then runs as
    installed (no checkout on its path; from the log's folder).

    With "--https" among `args` the server makes a self-signed certificate, which the health
    check accepts unverified; the URL is then wss://.
    """
    tls = "--https" in args
    port = free_port()
    cmd = [str(python or sys.executable), "-m", "streamfer.serve", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = ROOT if root is None else root.resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    cwd = root
    if python is not None:
        env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        cwd = log_path.parent
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        try:
            health = wait_healthy(proc, port, start_timeout, log_path, tls)
            scheme = "wss" if tls else "ws"
            yield Server(f"{scheme}://127.0.0.1:{port}/ws", health, tuple(args), log_path,
                         proc)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float, log_path: Path,
                 tls: bool = False) -> dict:
    """The server's /healthz once it answers; a clear error (with its log's tail) when the
    process exits or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
    context = None
    if tls:  # the server's own self-signed certificate
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}:\n"
                               f"{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer {url} within {timeout:g} s:\n"
                       f"{_tail(log_path)}")
