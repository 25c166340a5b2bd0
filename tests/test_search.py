"""training.search: a real (tiny) Optuna study on a FER+-style tree, resumed, refused when
its budget changes, and plotted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from tests.test_fit import write_ferplus_tree
from training import search


def test_adjusted_probabilities_are_the_logit_shift() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3))
    prior = np.array([0.5, 0.3, 0.2])

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    np.testing.assert_allclose(search.adjusted(softmax(logits), prior, 0.7),
                               softmax(logits - 0.7 * np.log(prior)), rtol=1e-6)
    np.testing.assert_allclose(search.adjusted(softmax(logits), prior, 0), softmax(logits))


def test_best_so_far_ignores_pruned_trials() -> None:
    rows = [{"state": "PRUNED", "value": None}, {"state": "COMPLETE", "value": 0.4},
            {"state": "COMPLETE", "value": 0.3}, {"state": "FAIL", "value": None},
            {"state": "COMPLETE", "value": 0.6}]
    assert search.best_so_far(rows) == [None, 0.4, 0.4, 0.4, 0.6]


def test_a_study_runs_resumes_refuses_another_budget_and_plots(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ferplus_tree(tmp_path / "ferplus", per_class=20)
    common = ["--data-root", str(tmp_path / "ferplus"), "--storage", str(tmp_path / "s.db"),
              "--study", "tiny", "--net", "paper", "--epochs", "1", "--limit", "0"]
    first = search.main([*common, "--sampler", "random", "--trials", "2"])
    assert 0 <= first["best"] <= 1 and set(first["params"]) >= {"lr", "tau", "class_weight"}
    more = search.main([*common, "--sampler", "random", "--trials", "3"])
    study = optuna.load_study(study_name="tiny-random", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert len(study.trials) == 3 and more["best"] >= first["best"]
    with pytest.raises(SystemExit):
        search.main([*common[:-2], "--limit", "10", "--sampler", "random", "--trials", "4"])
    assert "was run with" in capsys.readouterr().err
    search.main([*common, "--sampler", "tpe", "--trials", "1"])
    figure = tmp_path / "best.png"
    rec = search.main([*common, "--plot", "--figure", str(figure),
                       "--results", str(tmp_path / "results")])
    assert figure.stat().st_size > 0
    assert rec["figures"]["random"]["trials"] == 3 and rec["figures"]["tpe"]["trials"] == 1
    written = next((tmp_path / "results").glob("*/search_tiny.json"))
    assert json.loads(written.read_text())["details"]["epochs"] == 1
