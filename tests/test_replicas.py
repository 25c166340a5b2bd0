"""Replicas behind nginx: the shipped proxy configuration, three real servers, one killed
mid-run, and the load test's clients reconnecting to the others.

Runs `deploy/nginx/streamfer.conf` itself (only its upstream and listen lines are swapped for
free loopback ports), so the file operators copy is the file under test. Skips when nginx is
not installed, unless STREAMFER_REQUIRE_NGINX=1 (CI sets it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kit.serverproc import free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nginx" / "streamfer.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = pytest.mark.slow


def _need_nginx() -> str:
    if NGINX is None:
        if os.environ.get("STREAMFER_REQUIRE_NGINX") == "1":
            pytest.fail("nginx is required here (STREAMFER_REQUIRE_NGINX=1) but not installed")
        pytest.skip("nginx not installed (Debian: apt-get install nginx)")
    return NGINX


def render(conf: str, listen_port: int, upstream_ports: list[int]) -> str:
    """The shipped site file with its replicas and listen address moved to test ports."""
    servers = re.findall(r"^\s*server 127\.0\.0\.1:\d+ (.*);$", conf, flags=re.M)
    assert servers, "deploy/nginx/streamfer.conf lists no upstream servers"
    options = servers[0]
    conf = re.sub(r"^\s*server 127\.0\.0\.1:\d+ .*;\n", "", conf, flags=re.M)
    lines = "".join(f"    server 127.0.0.1:{p} {options};\n" for p in upstream_ports)
    conf = conf.replace("    least_conn;\n", "    least_conn;\n" + lines, 1)
    conf, n = re.subn(r"listen \d+;", f"listen 127.0.0.1:{listen_port};", conf)
    assert n == 1
    return conf


@contextlib.contextmanager
def running_nginx(tmp: Path, site: str, port: int) -> Iterator[str]:
    nginx = _need_nginx()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    (tmp / "streamfer.conf").write_text(site)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log warn;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n"
        f"  proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fastcgi;\n"
        f"  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n"
        f"  include {tmp}/streamfer.conf;\n}}\n")
    check = subprocess.run([nginx, "-t", "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                            "-e", str(tmp / "error.log")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                             "-e", str(tmp / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/nginx-healthz",
                                            timeout=1) as r:
                    assert r.read() == b"ok\n"
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def health(addr: str) -> dict:
    with urllib.request.urlopen(f"http://{addr}/healthz", timeout=5) as r:
        return json.loads(r.read())


def test_the_shipped_config_renders_with_every_replica() -> None:
    site = render(CONF.read_text(), 9000, [9001, 9002, 9003, 9004])
    assert site.count("server 127.0.0.1:900") == 4 and "listen 127.0.0.1:9000;" in site
    assert "proxy_set_header Upgrade $http_upgrade;" in site


def test_killing_a_replica_mid_run_sends_its_phones_to_the_others(
        tiny_model_path: Path, tmp_path: Path) -> None:
    _need_nginx()
    clients, fps, seconds = 6, 10, 6.0
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server(
            tiny_model_path, ("--workers", "1", "--threads", "1"),
            log_path=tmp_path / f"server{i}.log")) for i in range(3)]
        ports = [int(s.url.split(":")[2].split("/")[0]) for s in servers]
        port = free_port()
        addr = stack.enter_context(running_nginx(
            tmp_path / "nginx", render(CONF.read_text(), port, ports), port))
        assert health(addr)["status"] == "ok"  # /healthz through the proxy
        load = subprocess.Popen(
            [sys.executable, "-m", "streamfer.loadtest", "--url", f"ws://{addr}/ws",
             "--clients", str(clients), "--fps", str(fps), "--seconds", str(seconds),
             "--reconnect", "--json", "--target-ms", "10000", "--max-loss", "1"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Once every phone streams, kill the replica holding the most, a second later.
        deadline = time.monotonic() + 30
        while sum(held := [health(f"127.0.0.1:{p}")["connections"] for p in ports]) < clients:
            assert load.poll() is None and time.monotonic() < deadline, held
            time.sleep(0.1)
        time.sleep(1.0)
        victim = max(range(3), key=held.__getitem__)
        assert sum(held) == clients and held[victim] >= 1, held
        os.kill(servers[victim].proc.pid, signal.SIGKILL)
        out, err = load.communicate(timeout=60)
        survivors = [health(f"127.0.0.1:{p}") for i, p in enumerate(ports) if i != victim]
    s = json.loads(out)
    # The killed replica's phones came back through the proxy to the others...
    assert s["reconnects"] >= held[victim], (s, err)
    assert s["connected"] == clients and all(h["status"] == "ok" for h in survivors)
    # ...and every frame sent was answered, or was in flight on a lost connection and is
    # reported as lost: none is silently missing.
    assert s["missing"] == 0 and s["missing_ids"] == []
    assert s["sent"] == s["answered"] + s["lost_on_disconnect"]
    assert s["lost_on_disconnect"] <= held[victim] * 2  # at most a window per lost phone
    assert s["errors"] == 0 and s["passed"], s["failures"]
    # The outage was short: most of the killed replica's frame slots were still sent.
    assert s["not_sent_disconnected"] < held[victim] * fps * 2
    assert s["ok"] + s["no_face"] + s["dropped"] == s["answered"] > 0.8 * clients * fps * seconds
