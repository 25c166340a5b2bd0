"""One config dataclass per program, and its command line built from it.

Each field is declared with `opt(default, help, choices)`, so the dataclass stays the single
list of a program's settings (read top to bottom, as nanoGPT's config) while `--help` says
what each does, and a misspelt choice (`--fold-mode grupped`) stops at the command line with
argparse's usage error instead of silently falling back to another protocol hours later.
Booleans become `--flag / --no-flag`. The parsed config records the command that made it,
so every metrics.json says how to rerun it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def opt(default: Any, text: str, choices: Sequence[str] | None = None) -> Any:
    """A config field with its --help text (and its allowed values, for a string)."""
    return field(default=default, metadata={"help": text, "choices": choices})


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout; append each flag's default to its help."""


def parse_config(cls: type[T], argv: Sequence[str] | None, *, program: str, doc: str | None,
                 check: Callable[[T], str | None] | None = None) -> T:
    """Parse `argv` (sys.argv[1:] when None) into `cls`; `check` returns an error or None."""
    p = argparse.ArgumentParser(prog=f"python -m {program}", description=doc,
                                formatter_class=_Formatter)
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name == "command":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=help_text)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=help_text,
                           choices=f.metadata.get("choices"))
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = cls(**vars(p.parse_args(args)))
    problem = check(cfg) if check else None
    if problem:
        p.error(problem)
    cfg.command = f"python -m {program} " + shlex.join(args)  # type: ignore[attr-defined]
    return cfg
