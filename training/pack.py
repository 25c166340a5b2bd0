"""Everything `training.fit` reads from the data set folders, in one file.

A run loads its faces through the loaders of training/data.py: FER+'s votes (with FER2013's
labels paired by pixels), the selection split, CK+'s subjects; with --teacher it also runs
each teacher over every training face. A pack holds the result, so that a machine that
trains but has no data set folders (a rented GPU, a container) trains on exactly the faces
and targets the folders give, and many runs load them once:

    python -m training.fit <data flags> --teacher A.pt,B.pt --pack runs/faces.npz --pack-only
    python -m training.fit <the same data flags> --teacher A.pt,B.pt --pack runs/faces.npz ...

The file is a NumPy .npz (no pickled objects) that records the data flags it was made with;
a run whose data flags differ is refused, naming the flag, so a pack never stands in for
other data (a run without --teacher may read a pack made with one). The teacher files need
not be present where a pack is read: their answers are in it, with each file's SHA-256 for
the record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from streamfer import contract
from training.data import FaceSet

log = logging.getLogger("training.pack")

FORMAT = "streamfer-faces-pack-1"
# training.fit's flags that decide which faces and targets a run loads: a pack is made
# under these and read only under the same ones.
DATA_FLAGS = ("data", "data_root", "val_root", "classes", "labels", "fer2013_votes",
              "fer2013_votes_on", "val_on", "size", "teacher")
_FIELDS = ("images", "labels", "groups", "paths", "soft", "taught")


def save(path: str | Path, sets: Mapping[str, FaceSet | None], flags: Mapping[str, object],
         teachers: Mapping[str, str] | None = None) -> Path:
    """Write `sets` (name -> FaceSet or None) and the data `flags` they were loaded under
    (compressed, atomically: a half-written pack never stands in for a whole one)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    classes = None
    for name, faces in sets.items():
        if faces is None:
            continue
        if classes is not None and faces.classes != classes:
            raise ValueError(f"pack {path}: {name} has classes {faces.classes}, not {classes}")
        classes = faces.classes
        for field in _FIELDS:
            value = getattr(faces, field)
            if value is None or (field == "paths" and not value):
                continue
            arrays[f"{name}.{field}"] = np.asarray(value)
    meta = {"format": FORMAT, "flags": dict(flags), "classes": list(classes or ()),
            "sets": [n for n, f in sets.items() if f is not None], "teachers": dict(teachers or {})}
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        # np.savez_compressed's layout with LZMA in place of deflate: np.load reads either,
        # and faces pack a fifth smaller
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as z:
            for key, value in arrays.items():
                with z.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, value, allow_pickle=False)

    contract.replace_atomically(path, write)
    log.info("packed %s into %s (%.1f MB)", ", ".join(
        f"{n} {len(f)}" for n, f in sets.items() if f is not None), path,
        path.stat().st_size / 1e6)
    return path


def load(path: str | Path, flags: Mapping[str, object],
         names: Iterable[str] | None = None) -> dict[str, FaceSet | None]:
    """The FaceSets of a pack made under the same data `flags` (only those of `names` that it
    holds, when given: each is decompressed on reading); else ValueError naming the first
    flag that differs."""
    path = Path(path)
    try:
        return _load(path, flags, names)
    except (KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a whole faces pack ({type(e).__name__}: {e})") from e


def _load(path: Path, flags: Mapping[str, object],
          names: Iterable[str] | None) -> dict[str, FaceSet | None]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a faces pack ({FORMAT})")
        for key in DATA_FLAGS:
            made, now = meta["flags"].get(key), flags.get(key)
            if key == "teacher" and not now:
                continue  # a run without teachers ignores the answers a pack carries
            if made != now:
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{path} was packed with {flag} {made!r}, this run has "
                                 f"{now!r}: pack again with this run's data flags")
        classes = tuple(meta["classes"])
        out: dict[str, FaceSet | None] = {}
        wanted = meta["sets"] if names is None else [n for n in meta["sets"] if n in names]
        for name in wanted:
            got = {f: z[f"{name}.{f}"] for f in _FIELDS if f"{name}.{f}" in z.files}
            out[name] = FaceSet(got["images"], got["labels"].astype(np.int64), classes,
                                got.get("groups"),
                                [str(p) for p in got["paths"]] if "paths" in got else [],
                                got.get("soft"), got.get("taught"))
    return out


def file_digests(paths: list[Path]) -> dict[str, str]:
    """{file: sha256} of the teachers whose answers a pack carries."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
