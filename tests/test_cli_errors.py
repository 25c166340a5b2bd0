"""What a new user's first mistakes print, through the real commands: one line naming the
fix and exit status 2, before anything slow is loaded; and every program's --help shows each
default once, never an empty one."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROGRAMS = [
    "streamfer.serve", "streamfer.loadtest",
    "training.fit", "training.baseline", "training.calibrate", "training.evaluate",
    "training.export", "training.framing", "training.quantize", "training.report",
    "training.tradeoff", "training.search", "training.people", "bench.candidate",
    "bench.class_bias", "bench.training_views",
    "bench.decode", "bench.detect_bench", "bench.false_faces",
    "bench.model", "bench.model batches", "bench.model runtimes", "bench.model served",
    "bench.model first-calls",
    "bench.page_accuracy", "bench.page_detectors", "bench.page_stream", "bench.screenshot",
    "bench.server", "bench.server ramp", "bench.server fixed", "bench.server overhead",
    "bench.webfaces_e2e",
]


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full)


def flag_helps(text: str) -> dict[str, str]:
    """--flag -> its help text (argparse's wrapping undone) from a --help output."""
    options = text.split("options:", 1)[-1]
    out: dict[str, str] = {}
    for block in re.split(r"\n  (?=-)", options):
        m = re.match(r"(-\S+)", block.strip())
        if m:
            out[m.group(1)] = " ".join(block.split())
    return out


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_shows_each_default_once_and_never_empty(program: str) -> None:
    proc = run(*program.split(), "--help")  # a benchmark's mode: its own --help
    assert proc.returncode == 0, proc.stderr
    helps = flag_helps(proc.stdout)
    assert helps, proc.stdout
    for flag, text in helps.items():
        assert "(default: )" not in text, f"{program} {flag}: {text}"
        assert text.lower().count("default:") <= 1, f"{program} {flag}: {text}"


def test_a_bad_value_is_one_line_naming_the_flag() -> None:
    proc = run("streamfer.serve", "--port", "80800")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "port must be 0-65535" in proc.stderr and "--help" in proc.stderr


def test_a_port_in_use_is_one_line_before_the_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run("streamfer.serve", "--host", "127.0.0.1", "--port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"port {port} on 127.0.0.1 is in use" in proc.stderr and "--port" in proc.stderr
    assert "model" not in proc.stderr  # it stopped before loading anything


def test_training_defaults_do_not_depend_on_the_current_folder(tmp_path: Path) -> None:
    from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL

    proc = run("training.evaluate", "--help", cwd=tmp_path)
    shown = "".join(proc.stdout.split())
    assert f"(default:{DEFAULT_MODEL})" in shown and DEFAULT_MODEL.is_file()
    assert f"(default:{DEFAULT_DATASETS})" in shown


def test_training_evaluate_runs_from_another_folder(tmp_path: Path, datasets: Path) -> None:
    proc = run("training.evaluate", "ferplus", cwd=tmp_path,
               env={"STREAMFER_DATASETS": str(datasets)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"set": "ferplus"' in proc.stdout and '"balanced_accuracy"' in proc.stdout


@pytest.mark.parametrize(("args", "flag"), [
    (("training.evaluate", "ferplus", "--datasets", "/nonexistent"), "--datasets"),
    (("training.evaluate", "ferplus", "--model", "/nonexistent/m.pt"), "--model"),
    (("training.fit", "--data-root", "/nonexistent"), "--data-root"),
])
def test_a_missing_path_is_one_line_naming_the_flag(args: tuple[str, ...], flag: str,
                                                    tmp_path: Path) -> None:
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not found at /nonexistent" in proc.stderr and flag in proc.stderr


def test_training_without_the_train_extra_names_the_install(tmp_path: Path) -> None:
    """A server-only install: the train extra's modules cannot be imported."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tqdm', 'sklearn', 'skimage', 'matplotlib'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _NotInstalled())\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    for program in ("training.fit", "training.evaluate"):
        proc = run(program, "--help", env=env)
        assert proc.returncode != 0
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "pip install 'streamfer[train]'" in proc.stderr and "tqdm" in proc.stderr
