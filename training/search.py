"""Hyper-parameter search over the training recipe, as the paper's Discussion proposes.

    python -m training.search --sampler tpe --trials 12
    python -m training.search --sampler random --trials 12    # beside it, on the other core
    python -m training.search --plot     # best score against trials, both samplers

Optuna's TPE, a sequential model-based optimiser (Bergstra et al. 2011, the paper's [12]),
against random search (Bergstra and Bengio 2012, its [11]) at the same budget of trials.
Each trial trains a network (from scratch, or from --init) on a fixed subset of FER+ train
with the selection split held out (training/data.py: in_selection) and is scored on the
selection split alone: balanced accuracy (mean per-class recall) after post-hoc logit
adjustment at the trial's tau, as training.calibrate applies it. FER+ valid and every test
set take no part. A median pruner stops a trial whose score after an epoch falls below the
median of earlier trials at that epoch. The study is kept in SQLite: rerunning the command
continues it up to --trials, and the two samplers can run at once, in two processes, on one
file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from streamfer import results
from streamfer.paths import DEFAULT_DATASETS
from training import data as D
from training.cli import fail, need_path, opt, parse_config
from training.evaluate import scores

log = logging.getLogger("training.search")

SAMPLERS = ("tpe", "random")
STARTUP_TRIALS = 4  # TPE's random start (Optuna's default, 10, would be a whole short study)
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SearchConfig:
    sampler: str = opt("tpe", "tpe: Optuna's TPE (sequential, model-based); random: "
                       "independent draws", SAMPLERS)
    trials: int = opt(12, "finished or pruned trials the study should hold; a rerun adds "
                      "only the missing ones")
    study: str = opt("recipe", "study name prefix; the study is NAME-SAMPLER in --storage")
    storage: str = opt("runs/search/search.db", "the SQLite file that keeps the studies")
    data_root: str = opt(str(DEFAULT_DATASETS / "ferplus"), "FER+ folder")
    net: str = opt("deep", "network preset of every trial (training/network.py)")
    init: str = opt("", "start every trial from this exported model (training.fit --init; "
                    "e.g. models/fer2013-5class.pt, which saw FER+ train's images with "
                    "FER2013's labels, never the crowd's); empty: from scratch")
    epochs: int = opt(5, "epochs per trial (a short schedule: the budget is the trials)")
    limit: int = opt(6000, "training faces per trial, drawn once from FER+ train without the "
                     "selection split (0: all)")
    threads: int = opt(1, "torch intra-op threads")
    seed: int = opt(0, "seeds the sampler, the training subset and every trial's training")
    plot: bool = opt(False, "draw best score against trials for both samplers' studies, "
                     "write the result file, and stop (no training)")
    figure: str = opt(str(ROOT / "docs" / "figures" / "search-best.png"), "--plot: the PNG")
    results: str = opt(str(results.ROOT), "--plot: the result file goes under "
                       "this/<machine>/")
    command: str = field(default="", repr=False)


def parse_args(argv: list[str] | None = None) -> SearchConfig:
    def check(cfg: SearchConfig) -> str | None:
        if cfg.trials < 1 or cfg.epochs < 1:
            return "--trials and --epochs must be at least 1"
        return None

    return parse_config(SearchConfig, argv, program="training.search", doc=__doc__,
                        check=check)


def suggest(trial) -> dict:
    """The recipe's knobs as one trial draws them: training.fit's flags, and tau."""
    return {
        "lr": trial.suggest_float("lr", 0.005, 0.1, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 3e-3, log=True),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "dropout": trial.suggest_float("dropout", 0.2, 0.6),
        "camera_strength": trial.suggest_float("camera_strength", 0.5, 2.0),
        "class_weight": trial.suggest_float("class_weight", 0.0, 1.0),
        "tau": trial.suggest_float("tau", 0.0, 1.0),
    }


def adjusted(probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Probabilities after subtracting tau x log(prior) from the logits (training.calibrate's
    adjustment; exact for one test-time view)."""
    p = probs * np.clip(prior, 1e-6, None) ** -tau
    return p / p.sum(1, keepdims=True)


def sampler_for(name: str, seed: int):
    import optuna

    if name == "tpe":  # its first draws are random: few, so the model guides most trials
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    return optuna.samplers.RandomSampler(seed=seed)


def storage_for(path: str, attempts: int = 5):
    """Optuna's storage on the SQLite file. Two searches started at once both try to create
    a new file's tables, and the second fails; it waits and opens the finished file."""
    import time

    import optuna
    import sqlalchemy.exc

    url = f"sqlite:///{Path(path).resolve()}"
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.SQLAlchemyError:
            time.sleep(1 + attempt)
    return optuna.storages.RDBStorage(url)


def study_for(cfg: SearchConfig, sampler: str, create: bool = True):
    import optuna

    name = f"{cfg.study}-{sampler}"
    storage = storage_for(cfg.storage)
    if not create:
        return optuna.load_study(study_name=name, storage=storage)
    return optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=sampler_for(sampler, cfg.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))


def objective_for(cfg: SearchConfig, train: D.FaceSet, val: D.FaceSet,
                  out: Path) -> Callable:
    """One trial: training.fit's train_one on the fixed subset, scored per epoch on the
    selection split through the on_epoch hook, which also prunes."""
    import optuna
    import torch

    from training import fit

    base = fit.FitConfig(data="ferplus", data_root=cfg.data_root, labels="soft",
                         augment="camera", preprocess="equalize-hist", net=cfg.net,
                         epochs=cfg.epochs, warmup=min(1.0, cfg.epochs / 5), tta="centre",
                         val_on="selection", seed=cfg.seed, ckpt_every_s=1e9, init=cfg.init)
    prior = train.soft.mean(0)  # load_faces loads soft targets: the prior tau divides out

    def objective(trial: optuna.Trial) -> float:
        knobs = suggest(trial)
        tau = knobs.pop("tau")
        run = replace(base, **knobs)
        folder = out / f"trial{trial.number}"
        folder.mkdir(parents=True, exist_ok=True)
        score: dict = {}

        def on_epoch(epoch: int, probs: np.ndarray) -> None:
            s = scores(val.labels, adjusted(probs, prior, tau).argmax(1), train.classes)
            score.update(s)
            trial.report(s["balanced_accuracy"], epoch)
            log.info("trial %d epoch %d: balanced %.4f accuracy %.4f", trial.number, epoch,
                     s["balanced_accuracy"], s["accuracy"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: below the median")

        fit.train_one(run, train, val, folder, torch.device("cpu"), 0, 1, on_epoch=on_epoch)
        trial.set_user_attr("accuracy", score["accuracy"])
        trial.set_user_attr("recall", score["recall"])
        return score["balanced_accuracy"]

    return objective


def load_faces(cfg: SearchConfig) -> tuple[D.FaceSet, D.FaceSet]:
    """The training subset (seeded, without the selection split) and the selection split."""
    classes = D.resolve_classes("paper5")
    rest, _ = D.split_selection(D.load_ferplus(cfg.data_root, "train", classes, "soft"))
    if cfg.limit and cfg.limit < len(rest):
        keep = np.random.default_rng(cfg.seed).permutation(len(rest))[:cfg.limit]
        rest = rest.subset(np.sort(keep))
    return rest, D.load_selection(cfg.data_root, classes)


def search(cfg: SearchConfig) -> dict:
    import optuna
    import torch

    torch.set_num_threads(cfg.threads)
    Path(cfg.storage).parent.mkdir(parents=True, exist_ok=True)
    study = study_for(cfg, cfg.sampler)
    settings = {"net": cfg.net, "init": cfg.init, "epochs": cfg.epochs, "limit": cfg.limit,
                "seed": cfg.seed}
    kept = study.user_attrs.get("settings")
    if kept is None:
        study.set_user_attr("settings", settings)
    elif kept != settings:  # trials of another budget would not compare
        fail("training.search", f"study {study.study_name} in {cfg.storage} was run with "
             f"{kept}, not {settings}: give another --study or the same settings")
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                   optuna.trial.TrialState.PRUNED)]
    todo = cfg.trials - len(done)
    log.info("study %s: %d trials done, %d to run", study.study_name, len(done), max(todo, 0))
    if todo > 0:
        train, val = load_faces(cfg)
        log.info("trials train on %d faces %s, scored on %d selection faces", len(train),
                 train.counts(), len(val))
        out = Path(cfg.storage).parent / study.study_name
        study.optimize(objective_for(cfg, train, val, out), n_trials=todo,
                       catch=(RuntimeError,))
    best = study.best_trial
    log.info("best of %s: %.4f with %s", study.study_name, best.value, best.params)
    return {"study": study.study_name, "best": best.value, "params": best.params}


def history(study) -> list[dict]:
    """Each trial in order: its state, score (None when pruned or failed), knobs, epochs."""
    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "params": t.params, "epochs": len(t.intermediate_values),
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None,
                     **t.user_attrs})
    return rows


def best_so_far(rows: list[dict]) -> list[float | None]:
    """The best finished score after each trial (None until one has finished)."""
    best, out = None, []
    for r in rows:
        if r["state"] == "COMPLETE" and r["value"] is not None:
            best = r["value"] if best is None else max(best, r["value"])
        out.append(best)
    return out


def plot(cfg: SearchConfig) -> dict:
    """Both samplers' best score against trials: one PNG, one result file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies, settings = {}, {}
    for sampler in SAMPLERS:
        try:
            study = study_for(cfg, sampler, create=False)
            studies[sampler] = history(study)
            settings = study.user_attrs.get("settings", settings)
        except KeyError:
            log.warning("no study %s-%s in %s", cfg.study, sampler, cfg.storage)
    if not studies:
        fail("training.search", f"no study named {cfg.study}-* in {cfg.storage}: run a "
             "search first")
    fig, ax = plt.subplots(figsize=(6, 4))
    figures = {}
    for sampler, rows in studies.items():
        curve = best_so_far(rows)
        xs = [i + 1 for i, v in enumerate(curve) if v is not None]
        ax.step(xs, [v for v in curve if v is not None], where="post", label=sampler)
        ax.scatter([r["number"] + 1 for r in rows if r["state"] == "COMPLETE"],
                   [r["value"] for r in rows if r["state"] == "COMPLETE"], s=12, alpha=0.5)
        finished = [r for r in rows if r["state"] == "COMPLETE"]
        figures[sampler] = {
            "trials": len(rows), "finished": len(finished),
            "pruned": sum(r["state"] == "PRUNED" for r in rows),
            "best_balanced_accuracy": max((r["value"] for r in finished), default=None),
            "epochs_trained": sum(r["epochs"] for r in rows)}
    ax.set_xlabel("trial")
    ax.set_ylabel("selection split balanced accuracy (best so far)")
    start = f"from {Path(settings['init']).stem}" if settings.get("init") else "from scratch"
    ax.set_title(f"{cfg.study}: {settings.get('net')} {start}, {settings.get('epochs')} "
                 f"epochs on {settings.get('limit') or 'all'} faces per trial", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(cfg.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(cfg.figure, dpi=120)
    rec = results.make(f"search_{cfg.study}", figures, details={
        "protocol": "each trial trains (from scratch or from init) on a seeded subset of "
                    "FER+ train without the selection split; scored on the selection split "
                    "(majority protocol), "
                    "balanced accuracy after logit adjustment at the trial's tau",
        **settings, "studies": studies,
        "figure": str(cfg.figure)}, command=cfg.command)
    path = results.write(Path(cfg.results), rec)
    log.info("wrote %s and %s", cfg.figure, path)
    return rec


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        import optuna
    except ImportError:
        fail("training.search", "needs Optuna, in the train extra: pip install -e '.[train]'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.plot:
        return plot(cfg)
    need_path("training.search", cfg.data_root, "--data-root", "the FER+ data set")
    return search(cfg)


if __name__ == "__main__":
    main()
