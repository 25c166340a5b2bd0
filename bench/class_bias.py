"""What a logit bias on one class buys on web photos and costs on FER+, as served.

One curve per model: that class's webfaces-dev recall against FER+ valid accuracy, one point
per bias, each point judged by the shipping bars that need neither the server nor a clock.

    python -m bench.class_bias --models models/ferplus-5class.pt,runs/a/cal.pt+runs/b/cal.pt

Each model (a "+" joins files into an ensemble, combined as `training.evaluate` combines a
comma list) runs once over FER+ valid (majority), FER2013 PublicTest and webfaces-dev whole
photos as the server runs it (on the CPU its int8 derivative when one was made from that
very file; its own τ and test-time views). Then, for each --biases value b, b is added to the
log of the served probability of --target and each face's answer is the arg-max: one point per
b, with every figure of `bench.candidate`'s SHIPPING_BARS that these three sets give (end to
end and speed are not measured here). Writes `class_bias_<tag>` under --results/<machine>/
and a figure (FER+ valid accuracy across, the class's web recall up, one curve per model).

It shows what a bias could buy and what it costs; it chooses nothing. webfaces-dev stays
evaluation only: no value read off this figure may be shipped (`training.perclass` chooses a
bias on FER+ train's selection split).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.candidate import SHIPPING_BARS, Bar, judge, model_alone_figures
from streamfer import results
from streamfer.cli import opt, parse
from streamfer.model import Predictor
from streamfer.paths import DEFAULT_DATASETS, DEFAULT_MODEL
from training.cli import need_path
from training.evaluate import Ensemble, load_set, scores
from training.perclass import biased, probabilities
from training.tradeoff import draw_tradeoff, model_specs

log = logging.getLogger("bench.class_bias")
PROGRAM = "bench.class_bias"

# The sets each point is scored on, as `training.evaluate` names them.
SETS = ("ferplus", "fer2013", "webfaces")
# The shipping bars these sets measure (end to end and speed need the server and a clock).
MODEL_ALONE = tuple(b for b in SHIPPING_BARS if b.figure.startswith(("webfaces ", "FER")))


@dataclass(frozen=True)
class ClassBiasConfig:
    models: str = opt(str(DEFAULT_MODEL), "comma list of served model files, one curve each; "
                      "a+b: their ensemble")
    names: str = opt("", "comma list of legend names (default: each file's folder and name)")
    target: str = opt("sadness", "the class whose logit is biased")
    biases: tuple[float, ...] = opt((0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1, 1.2, 1.5),
                                    "bias values added to the class's log probability",
                                    comma=True)
    datasets: str = opt(str(DEFAULT_DATASETS), "folder holding ferplus/, fer2013/, "
                        "webfaces-dev/")
    threads: int = opt(1, "onnx / torch threads")
    results: Path = opt(results.ROOT, "results root: writes <root>/<machine>/<name>.json")
    figures: Path = opt(Path("docs/figures"), "the figure goes here")
    tag: str = opt("", "name after class_bias_ (default: the class)")


def served(spec: list[str], threads: int) -> Predictor | Ensemble:
    members = [Predictor(p, device="cpu", threads=threads) for p in spec]
    return members[0] if len(members) == 1 else Ensemble(members)


def figures_of(sets: dict[str, Any], answers: dict[str, np.ndarray], cls: str) -> dict:
    """The shipping bars' model-alone figures from each set's answers, plus the scores."""
    s = {name: scores(sets[name].labels, answers[name], sets[name].classes) for name in SETS}
    return {
        "figures": model_alone_figures(s["ferplus"], s["fer2013"], s["webfaces"]),
        "webfaces_class_recall": s["webfaces"]["recall"][cls],
        "recall": {name: s[name]["recall"] for name in SETS},
    }


def curve(probs: dict[str, np.ndarray], sets: dict[str, Any], cls: str,
          biases: list[float]) -> list[dict]:
    """One point per bias: each set's answers with `bias` added to `cls`'s log probability,
    judged by the bars these sets measure."""
    k = sets["webfaces"].classes.index(cls)
    points = []
    for b in biases:
        bias = np.zeros(len(sets["webfaces"].classes))
        bias[k] = b
        point = {"bias": b, **figures_of(sets, {n: biased(probs[n], bias) for n in SETS}, cls)}
        point["bars"] = judge(point["figures"], MODEL_ALONE)
        point["model_alone_bars_met"] = all(x["met"] for x in point["bars"])
        points.append(point)
    return points


def summary(points: list[dict], cls: str) -> dict:
    """The smallest bias that lifts the class's web recall to its bar (if any) and what FER+
    valid reads there; and the biases, if any, that meet every model-alone bar."""
    bar = class_bar(cls)
    reach = [p for p in points if p["webfaces_class_recall"] >= bar.threshold]
    first = min(reach, key=lambda p: p["bias"]) if reach else None
    return {"class_bar": bar.threshold,
            "bias_reaching_class_bar": first and first["bias"],
            "ferplus_accuracy_there": first and first["figures"]["FER+ valid accuracy"],
            "webfaces_balanced_there": first and first["figures"]["webfaces balanced accuracy"],
            "biases_meeting_every_model_alone_bar": [p["bias"] for p in points
                                                     if p["model_alone_bars_met"]]}


def class_bar(cls: str) -> Bar:
    """The bar the class's web recall is held to: its own where it has one, else the
    lowest-class bar."""
    own = [b for b in SHIPPING_BARS if b.figure == f"webfaces {cls} recall"]
    return own[0] if own else next(b for b in SHIPPING_BARS
                                   if b.figure == "webfaces lowest class recall")


def plot(curves: dict[str, list[dict]], cls: str, path: Path) -> None:
    fer_bar = next(b for b in SHIPPING_BARS if b.figure == "FER+ valid accuracy").threshold
    points = {name: [(100 * p["figures"]["FER+ valid accuracy"], p["webfaces_class_recall"],
                      f"{p['bias']:g}", p["model_alone_bars_met"]) for p in ps]
              for name, ps in curves.items()}
    draw_tradeoff(points, bars=(100 * fer_bar, class_bar(cls).threshold), top=(100, 1),
                  pad=(1, 0.05), xlabel="FER+ valid, 5 classes, majority: accuracy (%)",
                  ylabel=f"webfaces-dev, whole photos: {cls} recall",
                  title=f"A bias on {cls}'s logit, as served: each point one bias (labels)",
                  met_label=f"FER+ valid and web {cls} bars met",
                  hollow_label="hollow: some model-alone bar missed", path=path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse(ClassBiasConfig, argv, prog=f"python -m {PROGRAM}",
                description=__doc__.split("\n")[0])
    specs = [[str(p) for p in spec] for spec in model_specs(cfg.models)]
    if not specs:
        raise SystemExit(f"{PROGRAM}: --models: at least one served model file is needed")
    for spec in specs:
        for p in spec:
            need_path(PROGRAM, p, "--models", "model file")
    names = [n.strip() for n in cfg.names.split(",")] if cfg.names else [
        "+".join(f"{Path(p).parent.name}/{Path(p).stem}" for p in spec) for spec in specs]
    if len(names) != len(specs):
        raise SystemExit(f"{PROGRAM}: --names: {len(names)} names for {len(specs)} models")
    biases = list(cfg.biases)
    root = Path(cfg.datasets)
    for folder in ("ferplus", "fer2013", "webfaces-dev"):
        need_path(PROGRAM, root / folder, "--datasets", f"its {folder}/")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    curves: dict[str, list[dict]] = {}
    models: dict[str, dict] = {}
    loaded: dict[tuple, dict] = {}
    for name, spec in zip(names, specs, strict=True):
        model = served(spec, cfg.threads)
        if cfg.target not in model.classes:
            raise SystemExit(f"{PROGRAM}: --target {cfg.target!r}: {'+'.join(spec)} predicts "
                             f"{list(model.classes)}")
        classes, key = tuple(model.classes), (tuple(model.classes), model.input_size)
        if key not in loaded:  # the sets, once per class list and input size
            loaded[key] = {s: load_set(s, root, classes, model.input_size)[0] for s in SETS}
        sets = loaded[key]
        probs = {s: probabilities(model, sets[s]) for s in SETS}
        curves[name] = curve(probs, sets, cfg.target, biases)
        models[name] = {"files": spec, "runtime": model.runtime, "tta": model.tta,
                        **summary(curves[name], cfg.target)}
        log.info("%s: %s", name, models[name])
    tag = cfg.tag or re.sub(r"[^a-z0-9_.-]+", "-", cfg.target.lower())
    figure = Path(cfg.figures) / f"class_bias_{tag}.png"
    plot(curves, cfg.target, figure)
    figures = {"class": cfg.target, "biases": biases, "models": models}
    details = {"protocol": "each model as the server runs it (Predictor: int8 derivative on "
                           "the CPU where made from that file, its τ and test-time views); "
                           "the bias added to the log of the served probability of the "
                           "class, arg-max; FER+ valid majority, FER2013 PublicTest original "
                           "labels, webfaces-dev whole photos as client crops (evaluation "
                           "only); bars: bench.candidate SHIPPING_BARS measured by these sets",
               "figure": str(figure), "curves": curves}
    out = results.write(Path(cfg.results), results.make(f"class_bias_{tag}", figures, details))
    for name, m in models.items():
        reach = m["bias_reaching_class_bar"]
        there = ("never within the biases" if reach is None else
                 f"at bias {reach:g}, FER+ valid {100 * m['ferplus_accuracy_there']:.1f}%")
        print(f"{name}: web {cfg.target} recall reaches {m['class_bar']:g} {there}; every "
              f"model-alone bar met at {m['biases_meeting_every_model_alone_bar'] or 'none'}")
    print(f"saved {out} and {figure}")
    return {"figures": figures, "details": details}


if __name__ == "__main__":
    main()
