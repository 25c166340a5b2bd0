"""What every server benchmark shares: its settings (the model, how its servers start and
where they are pinned, where results go) and the flags that pick server variants. The
server process itself is tests/kit/serverproc.py, which the tests start the same way."""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import record
from bench.machine import describe, machine_info
from streamfer import results
from streamfer.cli import opt
from streamfer.paths import DEFAULT_MODEL


@dataclass(frozen=True)
class ServerRunConfig:
    """What every server benchmark shares: the model, how its servers start, where results
    go. Each benchmark's config extends it with its own settings (streamfer.cli builds the
    flags from both)."""

    model: Path = opt(DEFAULT_MODEL, "the model the servers run")
    server_arg: tuple[str, ...] = opt((), "extra flag for every server, e.g. "
                                      "--server-arg=--device=cpu (repeatable)")
    server_cpus: str | None = opt(None, "pin the server, e.g. 0 or 0-1")
    client_cpus: str | None = opt(None, "pin this load generator, e.g. 1")
    out_dir: Path = opt(results.ROOT, "results root: writes "
                        "<root>/<machine>/<name>.json (streamfer/results.py), the PNG beside it")
    logs: Path = opt(Path(tempfile.gettempdir()) / "streamfer-bench", "where server logs go")

    def __post_init__(self) -> None:
        if not self.model.is_file():
            raise ValueError(f"model not found: {self.model} (pass --model)")

    def log_path(self, stem: str) -> Path:
        """A server log's path under --logs (kept out of the results tree)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{stem}.log"

    def save(self, name: str, figures: dict, details: dict) -> Path:
        """Write the result in the one schema under --out-dir; its path."""
        return record.save(self.out_dir, name, figures, details)

    def pin_client(self) -> tuple[dict, str]:
        """Pin this load generator to --client-cpus; the machine's description for the
        results, and a line that says it and where each side runs."""
        cpus = parse_cpus(self.client_cpus)
        if cpus:
            os.sched_setaffinity(0, cpus)
        info = machine_info()
        return info, (f"{describe(info)}; server cpus {self.server_cpus or 'any'}, "
                      f"load-test cpus {self.client_cpus or 'any'}")


def variant_flags(variants: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`--variant 'LABEL=--flag value ...'` values -> {LABEL: server flags}, in order."""
    return {label.strip(): tuple(shlex.split(args))
            for label, _, args in (v.partition("=") for v in variants)}


def parse_cpus(spec: str | None) -> set[int] | None:
    """'0', '0,1' or '2-3' -> a CPU set for sched_setaffinity; None/'' -> no pinning."""
    if not spec:
        return None
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus
