"""The training programs' command lines, built from their config dataclasses.

The same builder as the server's and the load test's (streamfer/cli.py: `opt(default, help,
choices)` fields; booleans become `--flag / --no-flag`; a misspelt choice such as
`--fold-mode grupped` stops at the command line with argparse's usage error instead of
silently falling back to another protocol hours later), plus two things training needs: a
`check` of the whole config, and the command that made it, recorded so every metrics.json
says how to rerun it.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from streamfer.cli import build_parser, opt

T = TypeVar("T")

__all__ = ["fail", "need_path", "opt", "parse_config"]


def parse_config(cls: type[T], argv: Sequence[str] | None, *, program: str, doc: str | None,
                 check: Callable[[T], str | None] | None = None) -> T:
    """Parse `argv` (sys.argv[1:] when None) into `cls`; `check` returns an error or None."""
    p = build_parser(cls, prog=f"python -m {program}", description=doc)
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = cls(**{k: v for k, v in vars(p.parse_args(args)).items() if v is not None})
    problem = check(cfg) if check else None
    if problem:
        p.error(problem)
    cfg.command = f"python -m {program} " + shlex.join(args)  # type: ignore[attr-defined]
    return cfg


def fail(program: str, message: str) -> NoReturn:
    """Stop a training command with one line naming what to fix (exit status 2, as argparse)."""
    print(f"python -m {program}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def need_path(program: str, path: str | Path, flag: str, what: str) -> Path:
    """`path` if it exists, else stop with one line naming the flag that sets it."""
    p = Path(path)
    if not p.exists():
        fail(program, f"{what} not found at {p}: give its location with {flag}")
    return p
