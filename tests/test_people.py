"""training.people: webfaces-dev figures by person, with a bootstrap over people."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamfer import results
from streamfer.paths import DEFAULT_MODEL
from training import bootstrap as B
from training import evaluate, people
from training.evaluate import scores


def test_a_photo_names_its_person():
    assert B.person_of("sad/Colin_Powell_0001.jpg") == "Colin_Powell"
    assert B.person_of(Path("happy/Dileep_101.jpg")) == "Dileep"
    assert B.person_of("x/Madonna.jpg") == "Madonna"


def test_balanced_accuracy_from_the_per_person_sums_is_the_usual_one():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, true, rng.integers(0, 4, 300))
    person = rng.integers(0, 40, 300)
    photos, right = B.counts_by_person(true, pred == true, person, 4)
    got = B.balanced_from(np.ones(photos.shape[0]), photos, right)
    assert got == pytest.approx(scores(true, pred, ("a", "b", "c", "d"))["balanced_accuracy"])


def test_one_person_with_many_photos_counts_once_over_people():
    # class 0: A's ten photos all misread, B and C read right; class 1: all right
    names = np.array(["A"] * 10 + ["B", "C"] + ["D", "E"])
    true = np.array([0] * 12 + [1, 1])
    hit = np.array([False] * 10 + [True, True, True, True])
    side = np.array([80] * 10 + [350] * 4)
    pc = people.per_class(true, hit, names, side, ("sad", "happy"), [128, 300], top=2)
    assert pc["sad"]["recall_by_photo"] == pytest.approx(2 / 12, abs=1e-4)
    assert pc["sad"]["recall_mean_over_people"] == pytest.approx(2 / 3, abs=1e-4)
    assert pc["sad"]["largest"][0] == {"person": "A", "photos": 10, "recall": 0.0}
    assert pc["sad"]["largest_share"] == pytest.approx(11 / 12, abs=1e-4)
    assert pc["sad"]["by_short_side"]["0-127 px"] == {"photos": 10, "recall": 0.0}
    assert pc["sad"]["by_short_side"][">= 300 px"] == {"photos": 2, "recall": 1.0}
    assert pc["sad"]["by_short_side"]["128-299 px"] == {"photos": 0, "recall": None}


def test_photos_of_one_person_widen_the_interval():
    """The same photos and hits: resampling people (few, large) must give a wider interval
    than when every photo is its own person, and the same draws for two identical models
    must give a difference of exactly zero."""
    rng = np.random.default_rng(2)
    true = np.repeat(np.arange(3), 200)
    alone = np.arange(600)
    grouped = np.arange(600) // 50  # twelve people of fifty photos each
    # some people mostly read right, others mostly wrong
    hit = np.where(grouped % 2 == 0, rng.random(600) < 0.9, rng.random(600) < 0.5)
    wide = B.bootstrap(true, [hit, hit], grouped, 3, 500, 0)
    narrow = B.bootstrap(true, [hit], alone, 3, 500, 0)
    assert np.ptp(B.interval(wide[:, 0])) > 2 * np.ptp(B.interval(narrow[:, 0]))
    assert np.all(wide[:, 1] == wide[:, 0])
    lo, hi = B.interval(narrow[:, 0])
    photos, right = B.counts_by_person(true, hit, alone, 3)
    assert lo < B.balanced_from(np.ones(600), photos, right) < hi


def test_the_interval_of_one_model_resamples_its_groups_by_name():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.8, true, 1 - true)
    names = np.array([f"P{i % 17}" for i in range(200)])
    _, index = np.unique(names, return_inverse=True)
    got = B.group_interval(true, pred, names, 2, resamples=400, seed=5)
    assert got == B.interval(B.bootstrap(true, [pred == true], index, 2, 400, 5)[:, 0])
    assert got[0] < got[1]


def test_recorded_rows_say_which_photos_a_path_read_right(tmp_path: Path):
    rows = [{"photo": "sad/A_0001.jpg", "label": "sadness", "top": "sadness"},
            {"photo": "sad/A_0002.jpg", "label": "sadness", "top": "neutral"},
            {"photo": "happy/B_0001.jpg", "label": "happiness", "top": None}]  # no face
    page = results.write(tmp_path / "p", results.make("page_accuracy", {}, {"rows": rows}))
    e2e = results.write(tmp_path / "e", results.make("webfaces_e2e", {}, {"detectors": {
        "haar": {"rows": rows[:1]}, "blazeface": {"rows": rows}}}))
    old = results.write(tmp_path / "o", results.make("webfaces_e2e", {}, {"detectors": {
        "haar": {"photos": 3}}}))
    assert list(people.recorded_paths(page)) == ["page path"]
    assert list(people.recorded_paths(e2e)) == ["server path (haar)", "server path (blazeface)"]
    with pytest.raises(ValueError, match="no per-photo rows"):
        people.recorded_paths(old)
    photos = ["/d/sad/A_0001.jpg", "/d/sad/A_0002.jpg", "/d/happy/B_0001.jpg",
              "/d/happy/C_0001.jpg"]  # C: no row
    got = people.row_hits(rows, photos, np.array([1, 1, 0, 0]), ("happiness", "sadness"))
    assert got.tolist() == [True, False, False, False]


def test_model_labels_are_short_and_unique():
    assert people.model_labels(["models/a.pt", "runs/x/cal.pt", "runs/y/cal.pt"]) == \
        ["a", "x/cal", "y/cal"]
    assert people.model_labels(["m1/a.pt", "m2/a.pt"]) == ["m1/a.pt", "m2/a.pt"]


def test_the_same_model_twice_is_refused(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as e:
        people.main(["--models", f"{DEFAULT_MODEL},{DEFAULT_MODEL}"])
    assert e.value.code == 2
    assert "different model files" in capsys.readouterr().err


@pytest.mark.slow
def test_webfaces_by_person_through_the_served_model(datasets: Path, tmp_path: Path):
    second = DEFAULT_MODEL.with_name("fer2013-5class.pt")
    page = next(results.ROOT.glob("*/page_accuracy.json"))  # a committed page-path result
    rows = people.main(["--models", f"{DEFAULT_MODEL},{second}",
                        "--paths", str(page),
                        "--datasets", str(datasets), "--results", str(tmp_path / "r"),
                        "--figures", str(tmp_path / "f")])
    first, other = rows["ferplus-5class"], rows["fer2013-5class"]
    plain = evaluate.main(["webfaces", "--model", str(DEFAULT_MODEL),
                           "--datasets", str(datasets)])
    assert first["balanced_by_photo"] == pytest.approx(plain["balanced_accuracy"], abs=1e-4)
    # the evaluation's own interval draws the same people with the same seed
    assert first["balanced_interval_95"] == plain["balanced_interval_95"]
    assert rows["page path"]["balanced_by_photo"] == pytest.approx(
        results.read(page)["figures"]["balanced_accuracy"], abs=1e-3)
    for row in (first, other, rows["page path"]):
        lo, hi = row["balanced_interval_95"]
        assert lo < row["balanced_by_photo"] < hi
        assert sum(c["photos"] for c in row["classes"].values()) == plain["images"]
    diff = other["minus_first"]
    assert diff["balanced"] == pytest.approx(
        other["balanced_by_photo"] - first["balanced_by_photo"], abs=1e-4)
    assert diff["interval_95"][0] < diff["interval_95"][1]
    written = results.read(next((tmp_path / "r").glob("*/people_ferplus5.json")))
    assert written["details"]["people"] < written["details"]["photos"]
    assert (tmp_path / "f" / "people_ferplus5.png").stat().st_size > 10_000
