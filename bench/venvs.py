"""Build the streamfer wheel and install it into a fresh virtual environment, timed.

The no-torch install test (tests/test_install.py) and the install benchmark
(bench/lean_install.py) install the package as a user does: `pip install` of the wheel into
a new venv (no --system-site-packages), its dependencies resolved by pip from the index,
its cache and any local wheels the machine's pip configuration names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(out: Path, source: Path = ROOT) -> Path:
    """The wheel of the checkout at `source` (its models and page, with the page's face
    detector when `npm ci` ran in web/), built without network or a build environment."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(source)], check=True,
                   timeout=300)
    (wheel,) = out.glob("streamfer-*.whl")
    return wheel


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH or VIRTUAL_ENV: a checkout on the path would look
    installed to pip (its egg-info) and shadow the venv's own copy."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@dataclass(frozen=True)
class Venv:
    path: Path
    install_s: float  # `pip install` alone, after the venv was made

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def has(self, module: str) -> bool:
        """Is `module` importable in this venv (asked without importing it)?"""
        found = subprocess.run([str(self.python), "-c", "import importlib.util, sys; "
                                f"sys.exit(importlib.util.find_spec({module!r}) is None)"],
                               check=False, timeout=60, env=clean_env(), cwd=self.path)
        return found.returncode == 0

    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()
                   and not p.is_symlink()) / 2**20


def make_venv(path: Path, *requirements: str, timeout: float = 1200) -> Venv:
    """A new venv at `path` with `requirements` (a wheel, `wheel[extra]`, packages) installed."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    t = time.monotonic()
    subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q",
                    *requirements], check=True, timeout=timeout, env=clean_env(), cwd=path)
    return Venv(path, time.monotonic() - t)
