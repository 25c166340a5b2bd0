"""Everything that makes a model: data, network, augmentation, fitting, baselines, export.

Needs the `train` extra (pip install 'streamfer[train]'); without it, a training command
stops at once with one line saying so, instead of a traceback from deep in an import.
"""

from __future__ import annotations

import importlib.util
import sys

TRAIN_MODULES = ("tqdm", "sklearn", "skimage", "matplotlib")  # pyproject.toml's train extra
INSTALL_HINT = "pip install 'streamfer[train]'"


def _missing() -> list[str]:
    out = []
    for name in TRAIN_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except ImportError:
            out.append(name)
    return out


if missing := _missing():
    _message = (f"the training tools need the train extra ({', '.join(missing)} not "
                f"installed): {INSTALL_HINT}")
    if sys.argv[:1] == ["-m"]:  # `python -m training.X` is being started: one line, no traceback
        raise SystemExit(f"error: {_message}")
    raise ImportError(_message)
