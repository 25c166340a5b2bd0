"""bench.class_bias: a bias on one class's logit, applied to the served model's answers and
judged point by point by the model-alone shipping bars."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import class_bias as CB
from bench.candidate import SHIPPING_BARS
from streamfer import results
from tests.test_evaluate import write_sets
from training import evaluate


def test_the_model_alone_bars_are_the_shipping_bars_these_sets_measure() -> None:
    names = {b.figure for b in CB.MODEL_ALONE}
    assert names == {b.figure for b in SHIPPING_BARS} - {
        "end to end balanced accuracy", "ms per face, batch 1, one thread"}
    assert CB.class_bar("sadness").figure == "webfaces sadness recall"
    assert CB.class_bar("anger").figure == "webfaces lowest class recall"


def test_bias_zero_is_the_served_model_and_a_large_bias_answers_the_class(
        tmp_path: Path, tiny_model_path: Path) -> None:
    write_sets(tmp_path / "data")
    data, tiny = str(tmp_path / "data"), str(tiny_model_path)
    out = CB.main(["--models", f"{tiny},{tiny}+{tiny}", "--names", "one,two",
                   "--biases", "0,0.5,50", "--datasets", data,
                   "--results", str(tmp_path / "results"), "--figures", str(tmp_path / "fig")])
    curves = out["details"]["curves"]
    plain = {s: evaluate.main([s, "--model", tiny, "--datasets", data]) for s in CB.SETS}
    zero = curves["one"][0]
    assert zero["bias"] == 0
    assert zero["figures"]["FER+ valid accuracy"] == plain["ferplus"]["accuracy"]
    assert zero["figures"]["FER2013 PublicTest accuracy"] == plain["fer2013"]["accuracy"]
    assert zero["figures"]["webfaces balanced accuracy"] == plain["webfaces"]["balanced_accuracy"]
    assert zero["recall"]["webfaces"] == plain["webfaces"]["recall"]
    for points in curves.values():  # raising the bias never takes a face off the class
        for s in CB.SETS:
            recall = [p["recall"][s]["sadness"] for p in points]
            assert recall == sorted(recall)
        last = points[-1]  # every face answered sadness
        assert last["webfaces_class_recall"] == 1.0
        assert last["figures"]["webfaces lowest class recall"] == 0.0
        assert last["figures"]["FER+ valid accuracy"] == 0.0  # FER+ valid here has no sad face
        for p in points:
            assert [b["figure"] for b in p["bars"]] == [b.figure for b in CB.MODEL_ALONE]
            assert p["model_alone_bars_met"] is all(b["met"] for b in p["bars"])
    # the geometric mean of a model with itself is the model
    assert curves["one"] == curves["two"]
    summary = out["figures"]["models"]["one"]
    reached = [p["bias"] for p in curves["one"] if p["webfaces_class_recall"] >= 0.6]
    assert summary["bias_reaching_class_bar"] == min(reached)
    assert summary["biases_meeting_every_model_alone_bar"] == []
    rec = results.read(next((tmp_path / "results").glob("*/class_bias_sadness.json")))
    assert rec["figures"]["class"] == "sadness" and rec["figures"]["biases"] == [0, 0.5, 50]
    assert (tmp_path / "fig" / "class_bias_sadness.png").stat().st_size > 0


def test_a_class_the_model_lacks_is_named(tmp_path: Path, tiny_model_path: Path) -> None:
    write_sets(tmp_path / "data")
    with pytest.raises(SystemExit, match="--target 'contempt'"):
        CB.main(["--models", str(tiny_model_path), "--target", "contempt",
                 "--datasets", str(tmp_path / "data"), "--results", str(tmp_path / "r"),
                 "--figures", str(tmp_path / "f")])
