"""webfaces-dev by person: how many people each class's recall rests on, and how sure a
web figure is.

    python -m training.people --models models/ferplus-5class.pt
    python -m training.people --models models/ferplus-5class.pt,runs/RUN/cal.pt  # paired
    python -m training.people --paths bench/results/MACHINE/page_accuracy.json

webfaces-dev names each photo `<class>/<Name>_<n>.jpg`, and one person's photos (a film's
frames, a player's press photos) can be much of a class; they are not independent draws.
For each model, run as the server runs it on whole photos sent as client crops (as
`training.evaluate webfaces`), per class: recall over photos and mean recall over people,
the people with the most photos and their recall, recall by the photo's short side (tight
film-frame crops against 350 px news photos); and a 95% interval for balanced accuracy from
a bootstrap that resamples people, each with all of their photos. With several models, the
difference of each from the first over the same resamples, so two candidates are compared
on the same draws; `--paths FILES` adds the page's path and the server's, from the
per-photo rows of `bench.page_accuracy` and `bench.webfaces_e2e` results. Evaluation
only: it reports, it never chooses. Writes `people_<tag>` under --results/<machine>/ and a
figure of the same name under --figures.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamfer import results
from streamfer.faces import decode_gray
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from training.bootstrap import (
    RESAMPLES,
    balanced_from,
    bootstrap,
    counts_by_person,
    interval,
    person_of,
)
from training.cli import fail, need_path, opt, parse_config
from training.evaluate import load_photos, model_faces

log = logging.getLogger("training.people")
PROGRAM = "training.people"


@dataclass
class PeopleConfig:
    models: str = opt(str(DEFAULT_MODEL), "exported models, a comma list (each run as the "
                      "server runs it); differences are taken against the first")
    datasets: str = opt(str(DEFAULT_DATASETS), "folder holding webfaces-dev/")
    sizes: str = opt("128,300", "recall by the photo's short side: these edges in pixels")
    resamples: int = opt(RESAMPLES, "bootstrap resamples of the people")
    seed: int = opt(0, "bootstrap seed")
    top: int = opt(3, "list this many people with the most photos per class")
    threads: int = opt(1, "torch / onnx threads")
    results: str = opt(str(results.ROOT), "result files go under this/<machine>/")
    figures: str = opt("docs/figures", "figures go here")
    tag: str = opt("", "name in the result and figure files (default: the first model's)")
    paths: str = opt("", "also score the per-photo rows of these result files, a comma "
                     "list, on the same resamples: bench.page_accuracy's (the page's detector "
                     "and crop) and bench.webfaces_e2e's (/api/predict, one path per detector)")


def model_labels(paths: list[str]) -> list[str]:
    """Short unique names for the models: the file's stem, with its folder for a run's
    generic `model.pt` or `cal.pt`, or the whole path where two would still collide."""
    short = [f"{Path(p).parent.name}/{Path(p).stem}" if Path(p).stem in ("model", "cal")
             else Path(p).stem for p in paths]
    return [s if short.count(s) == 1 else p for s, p in zip(short, paths, strict=True)]


def per_class(true: np.ndarray, hit: np.ndarray, names: np.ndarray, side: np.ndarray,
              classes: tuple[str, ...], edges: list[int], top: int) -> dict:
    """Each class's recall over photos and over people, its biggest people, and recall by
    the photo's short side."""
    out = {}
    bins = [0, *edges, None]
    for c, cls in enumerate(classes):
        mine = true == c
        people = sorted(set(names[mine]), key=lambda n: (-int((names[mine] == n).sum()), n))
        by_person = [float(hit[mine & (names == n)].mean()) for n in people]
        by_size = {}
        for lo, hi in itertools.pairwise(bins):
            cut = mine & (side >= lo) & (side < (hi if hi is not None else np.inf))
            key = f"{lo}-{hi - 1} px" if hi is not None else f">= {lo} px"
            by_size[key] = {"photos": int(cut.sum()),
                            "recall": round(float(hit[cut].mean()), 4) if cut.any() else None}
        out[cls] = {
            "photos": int(mine.sum()), "people": len(people),
            "recall_by_photo": round(float(hit[mine].mean()), 4),
            "recall_mean_over_people": round(float(np.mean(by_person)), 4),
            "largest": [{"person": n, "photos": int((names[mine] == n).sum()),
                         "recall": round(r, 4)} for n, r in zip(people[:top], by_person[:top],
                                                                strict=False)],
            "largest_share": round(sum(int((names[mine] == n).sum()) for n in people[:top])
                                   / max(1, int(mine.sum())), 4),
            "by_short_side": by_size,
        }
    return out


def recorded_paths(path: Path) -> dict[str, list[dict]]:
    """The per-photo rows a result file holds, by path name: bench.page_accuracy's one
    (`details.rows`) or bench.webfaces_e2e's one per server detector."""
    details = results.read(path)["details"]
    if "rows" in details:
        return {"page path": details["rows"]}
    found = {f"server path ({det})": d["rows"]
             for det, d in details.get("detectors", {}).items() if "rows" in d}
    if not found:
        raise ValueError(f"{path}: no per-photo rows (rerun bench.page_accuracy or "
                         "bench.webfaces_e2e to record them)")
    return found


def row_hits(rows: list[dict], faces_paths: list[str], labels: np.ndarray,
             classes: tuple[str, ...]) -> np.ndarray:
    """Which photos a recorded path read right, from its rows (keyed `<folder>/<file>`);
    a photo it has no row for, or no face for, counts as wrong."""
    top = {r["photo"]: r.get("top") for r in rows}
    keys = [f"{Path(p).parent.name}/{Path(p).name}" for p in faces_paths]
    missing = sum(k not in top for k in keys)
    if missing:
        log.warning("no row for %d of %d photos (counted wrong)", missing, len(keys))
    return np.array([top.get(k) == classes[c] for k, c in zip(keys, labels, strict=True)])


def plot(rows: dict[str, dict], classes: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2),
                                      gridspec_kw={"width_ratios": [3, 1.3]})
    names = list(rows)
    width = 0.8 / (2 * len(names))
    x = np.arange(len(classes))
    for i, name in enumerate(names):
        pc = rows[name]["classes"]
        photo = [pc[c]["recall_by_photo"] for c in classes]
        person = [pc[c]["recall_mean_over_people"] for c in classes]
        left.bar(x + (2 * i) * width - 0.4 + width / 2, photo, width, color=f"C{i}",
                 label=f"{name}: by photo")
        left.bar(x + (2 * i + 1) * width - 0.4 + width / 2, person, width, color=f"C{i}",
                 alpha=0.5, hatch="//", label=f"{name}: mean over people")
    left.set_xticks(x, [f"{c}\n{rows[names[0]]['classes'][c]['photos']} photos,\n"
                        f"{rows[names[0]]['classes'][c]['people']} people" for c in classes],
                    fontsize=7)
    left.set_ylim(0, 1)
    left.set_ylabel("recall")
    left.set_title("webfaces-dev per class: photos vs people")
    left.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    for i, name in enumerate(names):
        r = rows[name]
        lo, hi = r["balanced_interval_95"]
        right.errorbar([i], [r["balanced_by_photo"]], yerr=[[r["balanced_by_photo"] - lo],
                                                             [hi - r["balanced_by_photo"]]],
                       fmt="o", capsize=6, color=f"C{i}")
    right.set_xticks(range(len(names)), names, fontsize=8, rotation=30, ha="right")
    right.set_xlim(-0.6, len(names) - 0.4)
    right.set_ylabel("balanced accuracy")
    right.set_title("95% interval, people resampled", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PeopleConfig, argv, program=PROGRAM, doc=__doc__)
    paths = [p.strip() for p in cfg.models.split(",") if p.strip()]
    if not paths or len(set(paths)) < len(paths):
        fail(PROGRAM, f"--models {cfg.models!r}: give one or more different model files")
    for p in paths:
        need_path(PROGRAM, p, "--models", "model file")
    need_path(PROGRAM, Path(cfg.datasets) / "webfaces-dev", "--datasets", "webfaces-dev/")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(cfg.threads)
    edges = sorted(int(e) for e in cfg.sizes.split(",") if e.strip())
    predictors = [Predictor(p, device="cpu") for p in paths]
    classes = tuple(predictors[0].classes)
    faces = load_photos(Path(cfg.datasets) / "webfaces-dev", classes, predictors[0].input_size)
    names = np.array([person_of(p) for p in faces.paths])
    _, person = np.unique(names, return_inverse=True)
    side = np.array([min(decode_gray(Path(p).read_bytes()).shape[:2]) for p in faces.paths])
    hits = [model_faces(pr, faces) == faces.labels for pr in predictors]
    labels = model_labels(paths)
    served = [{"model": p, "runtime": pr.runtime, "tta": pr.tta}
              for p, pr in zip(paths, predictors, strict=True)]
    for file in (f.strip() for f in cfg.paths.split(",") if f.strip()):
        recorded = need_path(PROGRAM, file, "--paths", "result file")
        model = results.read(recorded)["details"].get("model", "")
        try:
            found = recorded_paths(recorded)
        except ValueError as e:
            fail(PROGRAM, str(e))
        for name, rows in found.items():
            hits.append(row_hits(rows, faces.paths, faces.labels, classes))
            labels.append(name)
            served.append({"model": str(model), "runtime": name, "result": str(recorded)})
    boot = bootstrap(faces.labels, hits, person, len(classes), cfg.resamples, cfg.seed)
    rows: dict[str, dict] = {}
    for i, (label, how, hit) in enumerate(zip(labels, served, hits, strict=True)):
        photos, right = counts_by_person(faces.labels, hit, person, len(classes))
        ones = np.ones(photos.shape[0])
        pc = per_class(faces.labels, hit, names, side, classes, edges, cfg.top)
        rows[label] = {
            **how,
            "balanced_by_photo": round(float(balanced_from(ones, photos, right)), 4),
            "balanced_mean_over_people": round(float(np.mean(
                [pc[c]["recall_mean_over_people"] for c in classes])), 4),
            "balanced_interval_95": interval(boot[:, i]),
            "classes": pc,
        }
        if i:
            diff = boot[:, i] - boot[:, 0]
            rows[label]["minus_first"] = {
                "balanced": round(rows[label]["balanced_by_photo"]
                                  - rows[labels[0]]["balanced_by_photo"], 4),
                "interval_95": interval(diff),
                "share_of_resamples_above": round(float((diff > 0).mean()), 4)}
    tag = cfg.tag or labels[0].replace("/", "-").replace("-5class", "5").replace(
        "-8class", "8").replace("-", "")
    figure = Path(cfg.figures) / f"people_{tag}.png"
    plot(rows, classes, figure)
    rec = results.make(f"people_{tag}", {
        label: {k: r[k] for k in ("balanced_by_photo", "balanced_mean_over_people",
                                  "balanced_interval_95", "minus_first") if k in r}
        for label, r in rows.items()},
        {"set": "webfaces-dev (models: each whole photo as a client crop, as training.evaluate "
                "webfaces; recorded paths: as their result files say)",
         "photos": len(faces), "people": int(person.max()) + 1,
         "bootstrap": {"resamples": cfg.resamples, "seed": cfg.seed,
                       "unit": "a person, with all their photos"},
         "models": rows, "figure": str(figure)})
    log.info("wrote %s", results.write(Path(cfg.results), rec))
    for label, r in rows.items():
        log.info("%s: balanced %.3f by photo (95%% %.3f-%.3f), %.3f mean over people", label,
                 r["balanced_by_photo"], *r["balanced_interval_95"],
                 r["balanced_mean_over_people"])
    return rows


if __name__ == "__main__":
    main()
