"""bench.candidate: a candidate judged bar by bar, each figure from the program that owns it,
through the real server and the served model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import candidate as C
from streamfer import results
from streamfer.paths import DEFAULT_MODEL
from tests.test_evaluate import write_sets
from training import evaluate


def test_each_bar_reads_its_figure_and_an_unmeasured_one_is_not_met():
    at = {b.figure: b.threshold for b in C.SHIPPING_BARS}
    assert all(b["met"] for b in C.judge(at))  # exactly at every threshold: met
    worse = {**at, "FER+ valid accuracy": at["FER+ valid accuracy"] - 1e-6,
             "ms per face, batch 1, one thread": at["ms per face, batch 1, one thread"] + 1e-6}
    missed = {b["figure"] for b in C.judge(worse) if not b["met"]}
    assert missed == {"FER+ valid accuracy", "ms per face, batch 1, one thread"}
    gone = {k: v for k, v in at.items() if k != "end to end balanced accuracy"}
    judged = {b["figure"]: b for b in C.judge(gone)}
    assert judged["end to end balanced accuracy"] == {
        "figure": "end to end balanced accuracy", "threshold": 0.73, "at_most": False,
        "value": None, "met": False}


def test_a_tag_names_the_run():
    assert C.tag_of("runs/e100-sel/cal.pt") == "e100-sel-cal"
    assert C.tag_of("models/ferplus-5class.pt") == "ferplus-5class"


@pytest.mark.slow
def test_a_candidate_is_judged_through_the_programs_that_own_each_figure(
        tmp_path: Path, tiny_model_path: Path) -> None:
    write_sets(tmp_path / "data")
    data = str(tmp_path / "data")
    verdict = C.main(["--model", str(tiny_model_path), "--datasets", data,
                      "--timing-faces", "20", "--timing-rounds", "2",
                      "--results", str(tmp_path / "results"), "--tag", "tiny"])
    bars = {b["figure"]: b for b in verdict["bars"]}
    assert set(bars) == {b.figure for b in C.SHIPPING_BARS}
    plain = {s: evaluate.main([s, "--model", str(tiny_model_path), "--datasets", data])
             for s in ("ferplus", "fer2013", "webfaces")}
    assert bars["FER+ valid accuracy"]["value"] == plain["ferplus"]["accuracy"]
    assert bars["FER2013 PublicTest accuracy"]["value"] == plain["fer2013"]["accuracy"]
    assert bars["webfaces balanced accuracy"]["value"] == plain["webfaces"]["balanced_accuracy"]
    assert bars["webfaces lowest class recall"]["value"] == min(
        plain["webfaces"]["recall"].values())
    assert 0 <= bars["end to end balanced accuracy"]["value"] <= 1
    assert bars["ms per face, batch 1, one thread"]["value"] > 0
    for b in verdict["bars"]:
        assert b["met"] == (b["value"] <= b["threshold"] if b["at_most"]
                            else b["value"] >= b["threshold"])
    assert verdict["ships"] is all(b["met"] for b in verdict["bars"])
    assert verdict["selection_balanced_accuracy"] is None  # no FER+ train in these sets
    shipped = evaluate.main(["webfaces", "--model", str(DEFAULT_MODEL), "--datasets", data])
    assert verdict["webfaces_paired_vs_against"]["balanced"] == pytest.approx(
        plain["webfaces"]["balanced_accuracy"] - shipped["balanced_accuracy"], abs=2e-4)
    rec = results.read(next((tmp_path / "results").glob("*/candidate_tiny.json")))
    assert rec["figures"]["bars"] == verdict["bars"]
    assert rec["details"]["end_to_end"]["photos"] == plain["webfaces"]["images"]
