"""Where the shipped models and the phone page are: one answer for the server, the training
and evaluation programs and the benchmarks (so none of them imports the server's settings to
find a file)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DATA_DIRS = ("models", "web")  # shipped beside the package: the models, the phone page


def _data_root() -> Path:
    """Where models/ and web/ are: the checkout (an editable install, or running from it),
    else the copies that `pip install .` puts under <prefix>/share/streamfer
    (pyproject.toml's data-files), the prefix found from this file's own place."""
    here = Path(__file__).resolve()
    checkout = here.parent.parent
    if all((checkout / d).is_dir() for d in DATA_DIRS):
        return checkout
    # <prefix>/lib/pythonX.Y/site-packages/streamfer/paths.py -> <prefix>/share/streamfer
    for prefix in (here.parents[4] if len(here.parents) > 4 else None, Path(sys.prefix)):
        if prefix is not None and (prefix / "share" / "streamfer" / "models").is_dir():
            return prefix / "share" / "streamfer"
    return checkout  # nothing installed: the defaults name the checkout's folders


PACKAGE_ROOT = _data_root()
DEFAULT_MODEL = PACKAGE_ROOT / "models" / "ferplus-5class.pt"  # docs/RESULTS.md: real faces
FER8_MODEL = PACKAGE_ROOT / "models" / "ferplus-8class.pt"  # the option: FER+'s eight classes
DEFAULT_WEB_DIR = PACKAGE_ROOT / "web"
# The data sets (training and evaluation only, never shipped): the `shared/datasets` folder
# beside the checkout, or STREAMFER_DATASETS; every training program's defaults start here, so
# they do not depend on the folder a command is run from.
DEFAULT_DATASETS = Path(os.environ.get("STREAMFER_DATASETS") or
                        PACKAGE_ROOT.parent / "shared" / "datasets")
