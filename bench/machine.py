"""Which machine a benchmark ran on, saved with every result: figures mean little without it.

The load average is recorded too, so a result measured while something else used the cores
(e.g. a training run) is recognisable as such.
"""

from __future__ import annotations

import os
import platform
import subprocess


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


def machine_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def describe(info: dict) -> str:
    return (f"{info['cpu']}, {info['usable_cpus']} usable of {info['cpu_count']} CPUs, "
            f"load average {info['loadavg_1m']} at start")
