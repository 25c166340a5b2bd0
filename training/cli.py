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
from typing import TypeVar

from streamfer.cli import build_parser, opt

T = TypeVar("T")

__all__ = ["opt", "parse_config"]


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
