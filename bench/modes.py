"""One benchmark entry point with several modes: `python -m bench.NAME MODE [flags]`.

A mode is a config dataclass (its flags, built by streamfer.cli) and the function that runs
it, whose docstring says what the mode measures. `python -m bench.NAME --help` shows the
module's docstring and every mode's; `python -m bench.NAME MODE --help` one mode's flags.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamfer.cli import _Parser, parse


@dataclass(frozen=True)
class Mode:
    config: type
    run: Callable[[Any], int]

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.run) or ""


def main(modes: dict[str, Mode], argv: Sequence[str] | None, *, prog: str, doc: str) -> int:
    """Parse `MODE [flags]` and run that mode; a missing or unknown mode is a one-line usage
    error (exit 2), as a bad flag is."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in modes:
        mode = modes[argv[0]]
        cfg = parse(mode.config, argv[1:], prog=f"{prog} {argv[0]}", description=mode.doc)
        return mode.run(cfg)
    epilog = "modes:\n\n" + "\n\n".join(
        f"  {name}: " + "\n".join(f"    {line}" if line else "" for line in mode.doc.splitlines()
                                  ).lstrip() for name, mode in modes.items())
    top = _Parser(prog=prog, description=doc, epilog=epilog,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("mode", choices=list(modes), help="what to measure (below); "
                     f"`{prog} MODE --help` lists its flags")
    top.parse_args(argv[:1])  # --help, or a usage error naming the modes
    raise AssertionError("unreachable")  # a known mode was handled above

