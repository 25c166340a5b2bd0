"""The serving install before and after torch left it, side by side.

Two virtual environments, each made as README's run command makes it, from a wheel of one
commit: BEFORE (torch installed first, as that command did) and AFTER (this checkout: no
torch). For each, alternately (A B A B, so drift of a shared machine hits both alike):
installed size (MB), `pip install` time from a warm pip cache (the first install of each
warms it and is not counted), server start to a healthy /healthz, idle resident memory of
each process with --processes 1 and 2, and server CPU per frame at 10 clients x 15 fps
(crops, and full frames the server searches). Medians; the ratios BEFORE / AFTER.

    python -m bench.lean_install --before COMMIT
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.machine import describe, machine_info
from bench.venvs import Venv, build_wheel, clean_env, make_venv
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.detect import WEIGHTS_DIR
from tests.kit.serverproc import ROOT, rss_mb, running_server


@dataclass(frozen=True)
class LeanConfig:
    before: str = opt("main", "the commit whose install is the baseline (git ref)")
    before_pip: tuple[str, ...] = opt(("torch==2.13.0",), "what the baseline's run command "
                                      "installed before the package (repeatable)")
    repeats: int = opt(3, "timed installs, server starts and idle readings per side")
    clients: int = opt(10, "load-test clients for CPU per frame")
    fps: float = opt(15.0, "frames per second per client")
    seconds: float = opt(20.0, "how long each CPU-per-frame run streams")
    idle_s: float = opt(3.0, "seconds a started server is left idle before its RSS is read")
    work_dir: Path | None = opt(None, "where the venvs go (default: a temporary folder)")
    reuse: bool = opt(False, "use the venvs a previous run left in --work-dir (venv-before-0, "
                      "venv-after-0): no installs, so no install times")
    only_cpu: bool = opt(False, "measure CPU per frame only (with --reuse: a rerun of that part)")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    name: str = opt("lean_install", "result name")


def source_tree(ref: str, dest: Path) -> Path:
    """`ref`'s files (git archive) with this checkout's installed page detector beside them,
    so both wheels carry the same BlazeFace weights."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    if WEIGHTS_DIR.is_dir():
        shutil.copytree(WEIGHTS_DIR, dest / WEIGHTS_DIR.relative_to(ROOT))
    return dest


def installed_model(venv: Venv) -> Path:
    out = subprocess.run([str(venv.python), "-c", "from streamfer.paths import DEFAULT_MODEL;"
                          "print(DEFAULT_MODEL)"], capture_output=True, text=True, check=True,
                         env=clean_env(), cwd=venv.path)
    return Path(out.stdout.strip())


def start_and_idle(venv: Venv, args: tuple[str, ...], cfg: LeanConfig, log: Path) -> dict:
    """Seconds from start to healthy, then the RSS (MB) of each process after idling."""
    t = time.monotonic()
    with running_server(installed_model(venv), args, log_path=log, python=venv.python,
                        start_timeout=180) as server:
        start_s = time.monotonic() - t
        time.sleep(cfg.idle_s)
        return {"start_s": round(start_s, 2), "runtime": server.health.get("runtime"),
                "detector": server.health.get("face_detector"),
                "rss_mb": {f"{role(pid, server.pid, i)}": round(rss_mb(pid), 1)
                           for i, pid in enumerate(server.pids())}}


def role(pid: int, server: int, i: int) -> str:
    """'server' (--processes 1), 'parent' (the one that starts --processes N), 'child I' (a
    serving process) or 'resource tracker' (multiprocessing's, which serves nothing)."""
    if pid == server:
        return "server" if "--processes" not in Path(f"/proc/{pid}/cmdline").read_text() \
            else "parent"
    cmdline = Path(f"/proc/{pid}/cmdline").read_text()
    return "resource tracker" if "resource_tracker" in cmdline else f"child {i}"


def serving_rss(rss: dict[str, float], n: int) -> list[float]:
    """The RSS of the `n` serving processes of one reading: the children (files written
    before `role` named the resource tracker: the n largest children)."""
    children = [v for k, v in rss.items() if k.startswith("child")]
    return sorted(children, reverse=True)[:n]


def cpu_per_frame(venv: Venv, kind: str, cfg: LeanConfig, log: Path) -> dict:
    """Server CPU ms per answered frame under the load test (run from this checkout)."""
    with running_server(installed_model(venv), ("--device", "cpu"), log_path=log,
                        python=venv.python, start_timeout=180) as server:
        subprocess.run([sys.executable, "-m", "streamfer.loadtest", "--url", server.url,
                        "--kind", kind, "--clients", "2", "--seconds", "2", "--json"],
                       cwd=ROOT, capture_output=True, check=False, timeout=120)  # warm-up
        cpu0 = server.cpu_seconds()
        done = subprocess.run([sys.executable, "-m", "streamfer.loadtest", "--url",
                               server.url, "--kind", kind, "--clients", str(cfg.clients),
                               "--fps", str(cfg.fps), "--seconds", str(cfg.seconds), "--json"],
                              cwd=ROOT, capture_output=True, text=True, check=False,
                              timeout=cfg.seconds + 120)
        cpu = server.cpu_seconds() - cpu0
    summary = json.loads(done.stdout)
    answered = max(1, summary["answered"])
    return {"cpu_ms_per_frame": round(cpu * 1e3 / answered, 3), "answered": answered,
            "sent": summary["sent"], "p50_ms": summary["rtt_ms"].get("p50"),
            "p99_ms": summary["rtt_ms"].get("p99"), "cpu_s": round(cpu, 2)}


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(results: dict) -> tuple[dict, dict]:
    """Medians per side, and before / after for each."""
    table = {}
    for side, r in results.items():
        one = [x["rss_mb"]["server"] for x in r["idle"]["1"]]
        two = [statistics.mean(serving_rss(x["rss_mb"], 2)) for x in r["idle"]["2"]]
        row = {"venv_mb": r["size_mb"], "install_s": median(r["install_s"]),
               "start_to_healthy_s": median(r["start_s"]),
               "idle_rss_mb_processes_1": median(one),
               "idle_rss_mb_per_serving_process_processes_2": median(two),
               "idle_rss_mb_parent_processes_2": median(
                   [x["rss_mb"]["parent"] for x in r["idle"]["2"]]),
               **{f"cpu_ms_per_frame_{k}": median([x["cpu_ms_per_frame"] for x in
                                                   (v if isinstance(v, list) else [v])])
                  for k, v in r["cpu"].items()}}
        table[side] = {k: v for k, v in row.items() if v is not None}
    ratios = {k: round(table["before"][k] / table["after"][k], 2)
              for k in table["after"] if table["after"][k]}
    return table, ratios


def main(argv: list[str] | None = None) -> None:
    cfg = parse(LeanConfig, argv, prog="python -m bench.lean_install",
                description=__doc__.split("\n\n")[0])
    info = machine_info()
    print(describe(info))
    with tempfile.TemporaryDirectory(prefix="streamfer-lean-") as tmp:
        work = cfg.work_dir or Path(tmp)
        wheels = {} if cfg.reuse else {
            "before": build_wheel(work / "wheel-before",
                                  source_tree(cfg.before, work / "src-before")),
            "after": build_wheel(work / "wheel-after")}

        def install(side: str, i: int) -> Venv:
            path = work / f"venv-{side}-{i}"
            shutil.rmtree(path, ignore_errors=True)
            if side == "after":
                return make_venv(path, str(wheels["after"]))
            venv = make_venv(path, *cfg.before_pip)  # README's order: torch first
            t = time.monotonic()
            subprocess.run([str(venv.python), "-m", "pip", "install", "-q",
                            str(wheels["before"])], check=True, env=clean_env(), cwd=path)
            return Venv(path, venv.install_s + time.monotonic() - t)

        venvs = {side: Venv(work / f"venv-{side}-0", 0.0) if cfg.reuse else install(side, 0)
                 for side in ("before", "after")}  # the first install warms the cache
        runs: dict = {side: {"size_mb": round(v.size_mb(), 1),
                                "has_torch": v.has("torch"), "install_s": [],
                                "start_s": [], "idle": {"1": [], "2": []},
                                "cpu": {"crops": [], "frames": []}}
                         for side, v in venvs.items()}
        for i in range(1, 0 if cfg.reuse else cfg.repeats + 1):
            for side in ("before", "after"):
                v = install(side, i)
                runs[side]["install_s"].append(round(v.install_s, 2))
                print(f"install {side} #{i}: {v.install_s:.1f} s")
                shutil.rmtree(v.path)
        for i in range(0 if cfg.only_cpu else cfg.repeats):
            for side, venv in venvs.items():
                for n in ("1", "2"):
                    args = () if n == "1" else ("--processes", "2")
                    got = start_and_idle(venv, args, cfg, work / f"{side}-{n}-{i}.log")
                    runs[side]["idle"][n].append(got)
                    if n == "1":
                        runs[side]["start_s"].append(got["start_s"])
                    print(f"{side} --processes {n}: {got}")
        for i in range(cfg.repeats):
            for kind in ("crops", "frames"):
                for side, venv in venvs.items():
                    got = cpu_per_frame(venv, kind, cfg, work / f"{side}-{kind}-{i}.log")
                    runs[side]["cpu"][kind].append(got)
                    print(f"{side} {kind} {cfg.clients} x {cfg.fps:g} fps: {got}")
    table, ratios = summarize(runs)
    print(f"{'':44} {'before':>9} {'after':>9} {'before/after':>12}")
    for k in table["after"]:
        print(f"{k:44} {table['before'][k]:>9} {table['after'][k]:>9} {ratios.get(k, ''):>12}")
    record = results.make(cfg.name, {**table, "before_over_after": ratios},
                          {"before": cfg.before, "before_pip": cfg.before_pip, "runs": runs},
                          command="python -m bench.lean_install " + " ".join(
                              argv if argv is not None else sys.argv[1:]))
    print(f"wrote {results.write(cfg.results, record)}")

if __name__ == "__main__":
    main()
