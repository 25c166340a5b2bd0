"""One schema for every benchmark and evaluation result, so tables can be generated from files.

A result file answers one question on one machine: ``<results>/<machine>/<name>.json``, e.g.
``bench/results/amd-epyc-2cpu/server_ramp.json``. It says what ran (the command and the commit),
where (the machine), when, and the figures. Datasheets (docs/RESULTS.md, docs/BENCHMARKS.md)
are generated from these files, so a number is written once, by the program that measured it.

    {"schema": "streamfer-result/1",
     "name": "server_ramp",                 # what it measures; also the file name
     "command": "python -m bench.server ...",
     "commit": "ea27601", "dirty": false,   # the code that ran
     "date": "2026-12-02T12:00:00Z",
     "machine": {"id": "amd-epyc-2cpu", "cpu": "AMD EPYC", "usable_cpus": 2, ...},
     "figures": {...},                      # the headline numbers a datasheet quotes
     "details": {...}}                      # anything else worth keeping (rows, logs, config)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

SCHEMA = "streamfer-result/1"
# Where a checkout keeps its result files, whatever the current folder.
ROOT = Path(__file__).resolve().parents[1] / "bench" / "results"
REQUIRED = ("schema", "name", "command", "commit", "date", "machine", "figures")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def cpu_model() -> str:
    """`lscpu`'s model name (falls back to platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_id(cpu: str, usable_cpus: int, gpu: str | None = None) -> str:
    """A short folder name for a machine: vendor and family, core count, and the GPU if any.

    >>> machine_id("AMD EPYC 7B13", 2)
    'amd-epyc-2cpu'
    >>> machine_id("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", 2, "NVIDIA H200")
    'nvidia-h200'
    """
    if gpu:
        return "-".join(re.findall(r"[a-z0-9]+", gpu.lower()))
    words = re.findall(r"[a-z]+", re.sub(r"\(r\)|\(tm\)", "", cpu.lower()))
    words = [w for w in words if w not in {"cpu", "processor", "core", "ghz", "platinum",
                                           "gold", "silver", "bronze"}][:2] or ["cpu"]
    return f"{'-'.join(words)}-{usable_cpus}cpu"


def machine_info(gpu: str | None = None) -> dict[str, Any]:
    """Where a result was measured; the load average marks a run on a busy machine as such."""
    usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count() or 1)
    cpu = cpu_model()
    return {
        "id": machine_id(cpu, usable, gpu),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "gpu": gpu,
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def git_commit(repo: Path | None = None) -> tuple[str, bool]:
    """The checked-out commit (short hash) and whether the work tree had changes."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, check=True,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=cwd, check=True, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return sha, dirty


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would retype it: `python -m package.module args`."""
    argv = list(sys.argv if argv is None else argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", argv[0]]
    return shlex.join(head + argv[1:])


def make(name: str, figures: dict[str, Any], details: dict[str, Any] | None = None, *,
         command: str | None = None, gpu: str | None = None,
         machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """A result record in the one schema (not yet written)."""
    if not _NAME.match(name):
        raise ValueError(f"result name {name!r}: use lower-case letters, digits, _ . -")
    sha, dirty = git_commit()
    return {
        "schema": SCHEMA,
        "name": name,
        "command": command or command_line(),
        "commit": sha,
        "dirty": dirty,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine or machine_info(gpu),
        "figures": figures,
        "details": details or {},
    }


def path_for(root: Path, record: dict[str, Any]) -> Path:
    return Path(root) / record["machine"]["id"] / f"{record['name']}.json"


def write(root: Path, record: dict[str, Any]) -> Path:
    """Write a record to ``root/<machine>/<name>.json`` (atomically) and return the path."""
    check(record)
    path = path_for(root, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=False, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def read(path: Path) -> dict[str, Any]:
    """Read and check one result file."""
    record = json.loads(Path(path).read_text())
    check(record, where=str(path))
    return record


def read_all(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every result under root, keyed by (machine id, name)."""
    out = {}
    for path in sorted(Path(root).glob("*/*.json")):
        record = read(path)
        out[(record["machine"]["id"], record["name"])] = record
    return out


def check(record: dict[str, Any], where: str = "result") -> None:
    """Raise ValueError naming what is missing or wrong."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    if record["schema"] != SCHEMA:
        raise ValueError(f"{where}: schema {record['schema']!r}, expected {SCHEMA!r}")
    if not isinstance(record["figures"], dict):
        raise ValueError(f"{where}: figures must be an object")
    if "id" not in record["machine"]:
        raise ValueError(f"{where}: machine has no id")


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, Paths: written as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
