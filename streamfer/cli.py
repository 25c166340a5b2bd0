"""One way to build a program's command line: from its config dataclass.

Each setting is one dataclass field declared with `opt(default, help, choices)` (and, for a
number, its range: `at_least`, `above`, `at_most`), so the
dataclass is the single list of a program's settings (read top to bottom, as nanoGPT's
config) and its flags, `--help` text, allowed values and environment fallbacks all derive
from it: adding a setting is one line. Types come from the annotations:

- `bool` -> `--flag / --no-flag`;
- `tuple[str, ...]` -> a repeatable flag (the environment variable: a comma-separated list);
  with `opt(..., comma=True)` one flag taking a comma-separated list instead (`--modes a,b`),
  each item checked against the choices; with `positional=True` the command's arguments;
- `X | None` -> an `X` that may be left unset;
- `int`, `float`, `str`, `Path` -> that type.

With an `env_prefix` (the server's `STREAMFER_`), a flag left out falls back to the
environment variable `PREFIX<NAME>` and then to the default: flag > environment > default.
`check(config)` holds every field to its declared choices and range: `parse` calls it on
what it built, and a config's own `__post_init__` calls it (then its cross-field rules), so a
config built directly is held to them too. Its ValueError becomes argparse's usage error, so a
bad setting stops with a one-line message before anything is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def opt(default: Any, text: str, choices: Sequence[str] | None = None, *,
        factory: Callable[[], Any] | None = None, metavar: str | None = None,
        comma: bool = False, positional: bool = False, at_least: float | None = None,
        above: float | None = None, at_most: float | None = None) -> Any:
    """A config field with its --help text (and its allowed values, for a string; its range,
    for a number: >= `at_least`, > `above`, <= `at_most`; each item of a tuple likewise).
    `factory` computes the default when the config is made (e.g. from the CPU count)."""
    meta = {"help": text, "choices": tuple(choices) if choices else None, "metavar": metavar,
            "comma": comma, "positional": positional, "at_least": at_least, "above": above,
            "at_most": at_most}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the docstring's layout."""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line that names the problem and where the options are listed,
    not argparse's full usage block (a program with 40 flags would bury the error under it)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists every "
                     "option)\n")


def _kind(annotation: Any) -> tuple[type, bool, bool]:
    """(base type, is a repeatable tuple, may be None) of a field's annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is tuple:
        return typing.get_args(annotation)[0], True, optional
    return annotation, False, optional


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def shows_default(text: str, default: Any) -> bool:
    """Whether --help appends "(default: X)": not for an unset or empty default (nothing to
    show) nor where the help text already says what the default is."""
    if default is None or (not isinstance(default, bool) and str(default) == "") or (
            isinstance(default, tuple) and not default):
        return False
    return "default:" not in text.lower() and "(default)" not in text.lower()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_list(base: type, choices: Sequence[str] | None) -> Callable[[str], tuple]:
    """argparse `type` for a comma-separated list flag: `a,b` -> (a, b), items checked."""
    def convert(raw: str) -> tuple:
        items = tuple(base(part.strip()) for part in raw.split(",") if part.strip())
        if not items or (choices and any(item not in choices for item in items)):
            allowed = f" of {', '.join(choices)}" if choices else ""
            raise argparse.ArgumentTypeError(f"expected a comma-separated list{allowed}, "
                                             f"got {raw!r}")
        return items
    return convert


def env_name(prefix: str, name: str) -> str:
    return prefix + name.upper()


def _settings(cls: type) -> list[tuple[dataclasses.Field, type, bool, bool]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:  # not a setting (e.g. a field the program fills in)
            continue
        base, many, optional = _kind(hints[f.name])
        out.append((f, base, many, optional))
    return out


def build_parser(cls: type, *, prog: str, description: str | None,
                 env_prefix: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser for `cls`'s settings. With `env_prefix`, every flag's default is
    None (unset), so the environment can fill it in; the help shows the real default."""
    p = _Parser(prog=prog, description=description, formatter_class=_Formatter)
    for f, base, many, _optional in _settings(cls):
        default = _default(f)
        text = f.metadata["help"]
        if f.metadata.get("positional"):
            p.add_argument(f.name, nargs="+" if many else None, type=base, help=text)
            continue
        if shows_default(text, default):
            sep = "," if f.metadata.get("comma") else ", "
            text += f" (default: {sep.join(map(str, default)) if many else default})"
        if env_prefix:
            text += f" [env {env_name(env_prefix, f.name)}]"
        # Unset (None) where the environment may fill it in, and for repeatable flags (argparse
        # appends to its default; the dataclass's own default applies when none is given).
        kwargs: dict[str, Any] = {"help": text,
                                  "default": None if env_prefix or many else default}
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif many and f.metadata.get("comma"):
            kwargs.update(type=_comma_list(base, f.metadata.get("choices")))
        elif many:
            kwargs.update(action="append", type=base)
        else:
            kwargs.update(type=base, choices=f.metadata.get("choices"))
        p.add_argument(_flag(f.name), **kwargs)
    return p


def _out_of_range(name: str, value: float, meta: Mapping[str, Any]) -> str | None:
    lo, above, hi = meta.get("at_least"), meta.get("above"), meta.get("at_most")
    if (lo is None or value >= lo) and (above is None or value > above) and (
            hi is None or value <= hi):
        return None
    if lo is not None and hi is not None:
        return f"{name} must be {lo:g}-{hi:g}, got {value:g}"
    said = [f">= {lo:g}" if lo is not None else "", f"> {above:g}" if above is not None else "",
            f"<= {hi:g}" if hi is not None else ""]
    return f"{name} must be {' and '.join(s for s in said if s)}, got {value:g}"


def problems(config: Any) -> list[str]:
    """Every setting of `config` (a dataclass of `opt` fields) outside its declared choices
    or range, one line each; a field left unset (None) is not checked."""
    out = []
    for f in dataclasses.fields(config):
        if "help" not in f.metadata:
            continue
        value = getattr(config, f.name)
        if value is None or isinstance(value, bool):
            continue
        values = value if isinstance(value, tuple) else (value,)
        choices = f.metadata.get("choices")
        if choices and any(v not in choices for v in values):
            out.append(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                said = _out_of_range(f.name, v, f.metadata)
                if said:
                    out.append(said)
                    break
    return out


def check(config: Any) -> None:
    """Raise ValueError naming every setting outside its declared choices or range."""
    found = problems(config)
    if found:
        raise ValueError("; ".join(found))


def _from_env(raw: str, base: type, many: bool) -> Any:
    if many:
        return tuple(base(part.strip()) for part in raw.split(",") if part.strip())
    if base is bool:
        word = raw.strip().lower()
        if word in TRUE:
            return True
        if word in FALSE:
            return False
        raise ValueError(f"not a yes/no value (use one of {', '.join(TRUE + FALSE[:-1])})")
    return base(raw)


def parse(cls: type[T], argv: Sequence[str] | None, *, prog: str, description: str | None,
          env_prefix: str | None = None, env: Mapping[str, str] | None = None) -> T:
    """Flags, then (with `env_prefix`) the environment, then the defaults -> a `cls`."""
    import os

    env = os.environ if env is None else env
    parser = build_parser(cls, prog=prog, description=description, env_prefix=env_prefix)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for f, base, many, _optional in _settings(cls):
        value = args.get(f.name)
        if value is None and env_prefix:
            name = env_name(env_prefix, f.name)
            raw = env.get(name, "")
            if raw != "":
                try:
                    value = _from_env(raw, base, many)
                except ValueError as exc:
                    parser.error(f"{name}={raw!r}: {exc}")
                choices = f.metadata.get("choices")
                if choices and any(v not in choices for v in (value if many else (value,))):
                    parser.error(f"{name}={raw!r}: must be one of {', '.join(choices)}")
        if value is not None:
            values[f.name] = tuple(value) if many else value
    try:
        config = cls(**values)
        check(config)  # a no-op for a config whose __post_init__ checked already
        return config
    except ValueError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")  # parser.error exits


