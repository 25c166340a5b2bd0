"""The training programs' and benchmarks' command lines, built from their config dataclasses."""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

import pytest

from streamfer.cli import opt, shows_default
from training import baseline, fit, framing, search, tradeoff

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = [(fit, fit.FitConfig), (baseline, baseline.BaselineConfig),
            (framing, framing.FramingConfig), (tradeoff, tradeoff.TradeoffConfig),
            (search, search.SearchConfig)]


@pytest.mark.parametrize(("module", "config"), PROGRAMS, ids=lambda p: getattr(p, "__name__", ""))
def test_every_setting_is_a_documented_flag(module, config, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        module.parse_args(["--help"])
    assert exc.value.code == 0
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps lines, even at hyphens
    for f in fields(config):
        if f.name == "command":
            continue
        assert f.metadata.get("help"), f"{config.__name__}.{f.name} has no help text"
        assert "--" + f.name.replace("_", "-") in shown
        assert "".join(f.metadata["help"].split()) in shown
        if shows_default(f.metadata["help"], f.default):
            assert f"(default:{f.default})" in shown


@pytest.mark.parametrize(("argv", "flag"), [
    (["--fold-mode", "grupped"], "--fold-mode"),  # a typo must not mean random folds
    (["--net", "papre"], "--net"),
    (["--augment", "paper5"], "--augment"),
    (["--tta", "five"], "--tta"),
    (["--data", "fer"], "--data"),
    (["--device", "tpu"], "--device"),
    (["--epochs", "ten"], "--epochs"),
    (["--classes", "fer9"], "--classes"),
    (["--classes", "happy,happiness"], "--classes"),  # one class twice
    (["--crop", "50"], "--crop"),
])
def test_a_bad_fit_flag_stops_at_the_command_line(argv, flag, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        fit.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m training.fit: error: ") and err.count("\n") == 1
    assert f"argument {flag}" in err or f"error: {flag} " in err


def test_baseline_checks_its_lists(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        baseline.parse_args(["--radii", ","])
    assert exc.value.code == 2
    assert "--radii and --c-grid need at least one value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        baseline.parse_args(["--kernel", "poly"])
    with pytest.raises(SystemExit):
        baseline.parse_args(["--classes", "anger,joy"])
    assert "unknown expression class 'joy'" in capsys.readouterr().err


def test_parsed_values_and_the_recorded_command() -> None:
    cfg = fit.parse_args(["--net", "paper-bn", "--no-bf16", "--lr", "0.003", "--zero-head",
                          "--out", "runs/a b"])
    assert (cfg.net, cfg.bf16, cfg.lr, cfg.zero_head) == ("paper-bn", False, 0.003, True)
    assert cfg.epochs == fit.FitConfig().epochs  # untouched flags keep the dataclass default
    assert cfg.command == ("python -m training.fit --net paper-bn --no-bf16 --lr 0.003 "
                           "--zero-head --out 'runs/a b'")  # quoted: pasteable into a shell


def test_the_help_of_a_real_invocation() -> None:
    """`python -m training.fit --help` as a user types it: no data, no torch work, exit 0."""
    done = subprocess.run([sys.executable, "-m", "training.fit", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--fold-mode {grouped,stratified}" in done.stdout
    assert "SGD, batch 128, momentum 0.9" in done.stdout  # the module docstring, kept


# -- streamfer.cli's list flags, and the benchmarks' command lines ------------------------------

BENCHMARKS = ["decode", "detect_bench", "model", "page_stream", "screenshot",
              "server", "webfaces_e2e"]


def _configs_of(module) -> list[type]:
    """A benchmark's config, or each of its modes' (bench/modes.py)."""
    if hasattr(module, "MODES"):
        return [mode.config for mode in module.MODES.values()]
    (cls,) = [v for name, v in vars(module).items() if name.endswith("Config")
              and isinstance(v, type) and is_dataclass(v) and v.__module__ == module.__name__]
    return [cls]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_setting_is_a_documented_flag(name: str) -> None:
    from streamfer.cli import build_parser

    module = importlib.import_module(f"bench.{name}")
    for config in _configs_of(module):
        shown = "".join(build_parser(config, prog=name, description=None).format_help().split())
        for f in fields(config):
            assert f.metadata.get("help"), f"{config.__name__}.{f.name} has no help text"
            flag = f.name if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
            assert flag in shown and "".join(f.metadata["help"].split()) in shown


@dataclass(frozen=True)
class _Lists:
    models: tuple[Path, ...] = opt((), "models", positional=True)
    modes: tuple[str, ...] = opt(("a", "b"), "modes", ("a", "b", "c"), comma=True)
    batches: tuple[int, ...] = opt((1, 16), "batch sizes", comma=True)


def test_comma_lists_and_positional_arguments(capsys) -> None:
    from streamfer.cli import parse

    cfg = parse(_Lists, ["x.pt", "y.pt", "--modes", "c,a", "--batches", "2,8,32"], prog="t",
                description=None)
    assert cfg == _Lists((Path("x.pt"), Path("y.pt")), ("c", "a"), (2, 8, 32))
    assert parse(_Lists, ["x.pt"], prog="t", description=None).modes == ("a", "b")
    for argv, said in ((["x.pt", "--modes", "a,z"], "of a, b, c, got 'a,z'"),
                       (["x.pt", "--batches", "1,x"], "--batches"), ([], "models")):
        with pytest.raises(SystemExit):
            parse(_Lists, argv, prog="t", description=None)
        assert said in capsys.readouterr().err
