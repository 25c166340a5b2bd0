"""Which machine a benchmark ran on, saved with every result: figures mean little without it.

The load average is recorded too, so a result measured while something else used the cores
(e.g. a training run) is recognisable as such.
"""

from __future__ import annotations

from streamfer.results import cpu_model, machine_info

__all__ = ["cpu_model", "describe", "machine_info"]


def describe(info: dict) -> str:
    return (f"{info['cpu']}, {info['usable_cpus']} usable of {info['cpu_count']} CPUs, "
            f"load average {info['loadavg_1m']} at start")
