"""training.evaluate: the table's rows through the served model, on trees written here."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfer.faces import equalize_faces
from training import data as D
from training import evaluate as E

FER_FOLDERS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
# FER+ votes per image (neutral happiness surprise sadness anger disgust fear contempt unk NF)
PLUS = [("happy", [0, 9, 0, 0, 0, 0, 0, 0, 1, 0]),    # agrees
        ("sad", [8, 0, 0, 2, 0, 0, 0, 0, 0, 0]),      # FER+ says neutral
        ("angry", [3, 0, 0, 3, 3, 0, 0, 0, 1, 0]),    # no majority
        ("fear", [0, 0, 1, 0, 0, 0, 9, 0, 0, 0])]     # agrees, outside the paper's five


def test_scores_balanced_accuracy_and_recall() -> None:
    s = E.scores(np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 0, 1, 1, 0]), ("a", "b"))
    assert s["accuracy"] == 4 / 6 and s["balanced_accuracy"] == (0.75 + 0.5) / 2
    assert s["recall"] == {"a": 0.75, "b": 0.5} and s["confusion"] == [[3, 1], [1, 1]]


def write_sets(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for f in FER_FOLDERS:
            (root / "fer2013" / split / f).mkdir(parents=True)
    (root / "ferplus" / "valid").mkdir(parents=True)
    lines = []
    for i, (folder, votes) in enumerate(PLUS):
        raw = (rng.random((48, 48)) * 90 + 30).astype(np.uint8)  # low contrast, like raw FER
        cv2.imwrite(str(root / "ferplus" / "valid" / f"fer{i:07d}.png"), raw)
        lines.append(f'fer{i:07d}.png,"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        cv2.imwrite(str(root / "fer2013" / "test" / folder / f"PublicTest_{i}.jpg"),
                    cv2.equalizeHist(raw), [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "ferplus" / "valid" / "label.csv").write_text("\n".join(lines) + "\n")
    for folder in ("angry", "happy", "neutral", "sad", "surprise"):
        (root / "webfaces-dev" / folder).mkdir(parents=True)
        photo = rng.integers(0, 256, (120, 100, 3), np.uint8)
        cv2.imwrite(str(root / "webfaces-dev" / folder / "Someone_1.jpg"), photo)
    for folder in ("anger", "happy", "contempt"):  # CK+48: no neutral; a class outside five
        (root / "CK+48" / folder).mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(root / "CK+48" / folder / f"S{k:03d}_001_00000010.png"),
                        rng.integers(0, 256, (48, 48), np.uint8))


def test_agreement_pairs_equalised_jpegs_with_raw_votes(tmp_path: Path) -> None:
    write_sets(tmp_path)
    r = E.main(["agreement", "--datasets", str(tmp_path)])
    assert r["matched"] == 4
    # paper's five: happy agrees, sad does not, angry has no majority -> 1 of 3
    assert r["paper5"] == {"images": 3, "with_majority": 2, "agreement": 1 / 3,
                           "agreement_where_majority": 0.5}
    assert r["fer7"]["images"] == 4 and r["fer7"]["agreement"] == 0.5


def test_each_row_runs_through_the_served_model(tmp_path: Path, tiny_model_path: Path) -> None:
    write_sets(tmp_path)
    for name, n in (("fer2013", 3), ("ferplus", 2), ("webfaces", 5), ("ckplus", 4)):
        out = tmp_path / f"{name}.json"
        r = E.main([name, "--model", str(tiny_model_path), "--datasets", str(tmp_path),
                    "--out", str(out)])
        assert r["images"] == n and out.is_file() and r["tta"] == "mirror"
        assert r["runtime"] == "torchscript"  # no int8 derivative beside the tiny model
        # CK+48 is scored on the classes it shares with the model: no neutral, no contempt
        shared = ["anger", "happiness"] if name == "ckplus" else list(D.PAPER5)
        assert r["classes"] == shared and sum(r["support"].values()) == n
        assert 0 <= r["balanced_accuracy"] <= 1 and "--set " + name in r["command"]
        # sets with several faces of one person carry an interval from resampling them
        grouped = name in ("webfaces", "ckplus")
        assert ("balanced_interval_95" in r) == grouped
        if grouped:
            lo, hi = r["balanced_interval_95"]
            assert 0 <= lo <= hi <= 1
            assert ("people" if name == "webfaces" else "subjects") in r["interval"]


def test_a_row_says_it_ran_the_int8_derivative_when_the_server_would(
        tmp_path: Path, quantized: tuple[Path, np.ndarray]) -> None:
    """A figure "as served" is the int8 model's where one was made from this very file."""
    write_sets(tmp_path)
    model, _ = quantized
    served = E.main(["ferplus", "--model", str(model), "--datasets", str(tmp_path)])
    both = E.main(["ferplus", "--model", f"{model},{model}", "--datasets", str(tmp_path)])
    assert served["runtime"] == both["runtime"] == "onnx-int8"


def test_calibrate_picks_tau_on_ferplus_valid_and_shifts_only_the_bias(
        tmp_path: Path, tiny_model_path: Path) -> None:
    import json

    import torch

    from training import calibrate

    write_sets(tmp_path)
    train = tmp_path / "ferplus" / "train"
    train.mkdir()
    (train / "label.csv").write_text(
        (tmp_path / "ferplus" / "valid" / "label.csv").read_text())
    out = tmp_path / "adjusted.pt"
    r = calibrate.main([str(tiny_model_path), "--out", str(out), "--data-root",
                        str(tmp_path / "ferplus"), "--taus", "0,1"])
    assert set(r["scan"]) == {"0", "1"} and r["tau"] in (0.0, 1.0)
    assert r["tau"] == float(calibrate.choose_tau(r["scan"])[0])
    # prior: mean soft target over the train votes that pass the soft protocol
    assert abs(sum(r["prior"].values()) - 1) < 1e-6 and r["prior"]["happiness"] > 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["logit_adjust"]["tau"] == r["tau"] and "FER+ valid" in meta["logit_adjust"][
        "chosen_on"]
    assert meta["name"] == "adjusted"  # named for its file, as the server will log it
    old, new = torch.jit.load(str(tiny_model_path)), torch.jit.load(str(out))
    delta = new.net.full.bias - old.net.full.bias
    prior = torch.tensor([max(r["prior"][c], 1e-6) for c in meta["classes"]])
    torch.testing.assert_close(delta, -r["tau"] * prior.log())
    torch.testing.assert_close(new.net.full.weight, old.net.full.weight)
    # with a floor, the choice and the reason for it land in the model's metadata
    floored = calibrate.main([str(tiny_model_path), "--out", str(out), "--data-root",
                              str(tmp_path / "ferplus"), "--taus", "0,1",
                              "--min-accuracy", "1"])
    tau, on = calibrate.choose_tau(floored["scan"], 1.0)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert floored["tau"] == float(tau) and meta["logit_adjust"]["chosen_on"] == on


def test_calibrate_min_accuracy_caps_the_adjustment_at_the_accuracy_floor() -> None:
    """Logit adjustment trades accuracy for balanced accuracy as tau grows; a floor on
    accuracy picks the best balanced tau it allows, and the most accurate when none."""
    from training.calibrate import choose_tau

    scan = {t: {"accuracy": a, "balanced_accuracy": b}
            for t, a, b in (("0", 0.913, 0.896), ("0.25", 0.904, 0.900),
                            ("0.5", 0.894, 0.9023), ("0.75", 0.884, 0.9026))}
    assert choose_tau(scan)[0] == "0.75"  # no floor: balanced accuracy alone
    tau, on = choose_tau(scan, 0.90)
    assert tau == "0.25" and ">= 0.9" in on
    assert choose_tau(scan, 0.89)[0] == "0.5"
    tau, on = choose_tau(scan, 0.95)  # out of reach: the most accurate, and it says so
    assert tau == "0" and "no tau reached 0.95" in on
    tied = {"0": {"accuracy": 0.9, "balanced_accuracy": 0.8},
            "1": {"accuracy": 0.9, "balanced_accuracy": 0.8}}
    assert choose_tau(tied, 0.9)[0] == "0"  # ties: the smaller tau


def test_a_comma_list_scores_the_ensemble_as_distillation_combines_teachers(
        tmp_path: Path, tiny_model_path: Path) -> None:
    """Two copies of one model are that model: the geometric mean of equal answers is them."""
    from streamfer.model import Predictor

    write_sets(tmp_path)
    one = E.main(["webfaces", "--model", str(tiny_model_path), "--datasets", str(tmp_path)])
    two = E.main(["webfaces", "--model", f"{tiny_model_path},{tiny_model_path}",
                  "--datasets", str(tmp_path)])
    assert two["confusion"] == one["confusion"] and two["images"] == 5
    p = Predictor(tiny_model_path, device="cpu")
    faces = np.random.default_rng(3).integers(0, 256, (4, 48, 48), np.uint8)
    np.testing.assert_allclose(E.Ensemble([p, p]).forward(faces), p.forward(faces),
                               rtol=1e-4, atol=1e-6)


def test_tradeoff_bars_each_flip_at_the_issues_threshold() -> None:
    from training import tradeoff

    def row(fp: float, web: float, low: float, fer: float) -> dict:
        return {"ferplus": {"accuracy": fp}, "fer2013": {"accuracy": fer},
                "webfaces": {"balanced_accuracy": web, "min_recall": low}}

    assert all(tradeoff.bars_met(row(0.90, 0.70, 0.45, 0.70)).values())
    below = {"ferplus_accuracy": row(0.899, 0.70, 0.45, 0.70),
             "webfaces_balanced": row(0.90, 0.699, 0.45, 0.70),
             "webfaces_min_recall": row(0.90, 0.70, 0.449, 0.70),
             "fer2013_accuracy": row(0.90, 0.70, 0.45, 0.699)}
    for bar, r in below.items():
        met = tradeoff.bars_met(r)
        assert [k for k, v in met.items() if not v] == [bar]


def test_tradeoff_scans_tau_through_the_served_model_and_draws_the_bars(
        tmp_path: Path, tiny_model_path: Path) -> None:
    """At tau 0 the scan scores what training.evaluate scores; with FER+ train holding no
    surprise vote, any tau > 0 lifts surprise by tau x 13.8 nats, so the untrained model
    then answers surprise for every face: FER+ accuracy 0, web balanced accuracy 1/5."""
    import json

    from training import tradeoff

    write_sets(tmp_path)
    (tmp_path / "ferplus" / "train").mkdir()
    (tmp_path / "ferplus" / "train" / "label.csv").write_text(
        (tmp_path / "ferplus" / "valid" / "label.csv").read_text())
    out = tmp_path / "fig" / "tradeoff.png"
    m = str(tiny_model_path)
    r = tradeoff.main(["--models", f"{m},{m}+{m}", "--names", "one,pair", "--taus", "0,1",
                       "--datasets", str(tmp_path), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(out.with_suffix(".json").read_text())["curves"] == r["curves"]
    for name in ("one", "pair"):
        at0, at1 = r["curves"][name]
        for s in ("ferplus", "webfaces", "fer2013"):
            e = E.main([s, "--model", m, "--datasets", str(tmp_path)])
            assert at0[s]["accuracy"] == e["accuracy"]
            assert at0[s]["balanced_accuracy"] == e["balanced_accuracy"]
        assert at1["ferplus"]["accuracy"] == 0.0
        assert at1["webfaces"]["balanced_accuracy"] == 0.2
        assert at1["webfaces"]["recall"]["surprise"] == 1.0
        assert at1["bars_met"]["ferplus_accuracy"] is False
        assert at1["bars_met"]["webfaces_min_recall"] is False
    with pytest.raises(SystemExit):
        tradeoff.parse_args(["--models", m, "--names", "a,b"])


def test_pairing_by_pixels_finds_twins_across_encodings_and_drops_strangers() -> None:
    rng = np.random.default_rng(1)
    b = (rng.random((6, 48, 48)) * 90 + 30).astype(np.uint8)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", cv2.equalizeHist(b[3]),
                                     [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_GRAYSCALE)
    a = np.stack([jpeg, b[0], rng.integers(0, 256, (48, 48), np.uint8)])
    for block in (1, 2048):  # blockwise or whole, the same pairs
        idx, rows, corr = D.pair_by_pixels(a, equalize_faces(b), block=block)
        assert idx.tolist() == [0, 1] and rows.tolist() == [3, 0] and (corr >= 0.95).all()


def test_fer2013_labels_join_the_crowd_votes_of_their_twins(tmp_path: Path) -> None:
    write_sets(tmp_path)
    root = tmp_path / "ferplus"
    plain = D.load_ferplus(root, "valid", "paper5", "soft")
    voted = D.load_ferplus(root, "valid", "paper5", "soft", fer2013_weight=2)
    assert [Path(p).name for p in voted.paths] == [Path(p).name for p in plain.paths]
    cls = {c: i for i, c in enumerate(voted.classes)}
    sad = [Path(p).name for p in voted.paths].index("fer0000001.png")  # FER2013: sad
    # the crowd's 8 neutral + 2 sad, and FER2013's sad as two more votes
    np.testing.assert_allclose(plain.soft[sad][[cls["neutral"], cls["sadness"]]], [0.8, 0.2])
    np.testing.assert_allclose(voted.soft[sad][[cls["neutral"], cls["sadness"]]],
                               [8 / 12, 4 / 12], rtol=1e-6)
    angry = [Path(p).name for p in voted.paths].index("fer0000002.png")  # a 3-3-3 tie
    assert voted.classes[voted.labels[angry]] == "anger"
    np.testing.assert_allclose(voted.soft[angry][cls["anger"]], 5 / 11, rtol=1e-6)
    # the majority protocol sees the same votes: neutral keeps the sad face (8 of 12)
    majority = D.load_ferplus(root, "valid", "paper5", "majority", fer2013_weight=2)
    names = [Path(p).name for p in majority.paths]
    assert majority.classes[majority.labels[names.index("fer0000001.png")]] == "neutral"


def test_fer2013_votes_on_undecided_faces_leave_the_crowds_decisions_alone(
        tmp_path: Path) -> None:
    write_sets(tmp_path)
    root = tmp_path / "ferplus"
    plain = D.load_ferplus(root, "valid", "paper5", "soft")
    voted = D.load_ferplus(root, "valid", "paper5", "soft", fer2013_weight=5,
                           fer2013_on="undecided")
    names = [Path(p).name for p in voted.paths]
    cls = {c: i for i, c in enumerate(voted.classes)}
    # the crowd's 8 neutral of 10 is a majority: FER2013's "sad" adds nothing there
    sad = names.index("fer0000001.png")
    np.testing.assert_allclose(voted.soft[sad], plain.soft[sad])
    # the 3-3-3 tie has none: FER2013's "angry" as five more votes breaks it
    angry = names.index("fer0000002.png")
    np.testing.assert_allclose(voted.soft[angry][cls["anger"]], 8 / 14, rtol=1e-6)
    assert voted.classes[voted.labels[angry]] == "anger"
    assert D.crowd_majority(np.array([row for _, row in PLUS]), "paper5").tolist() == [
        True, True, False, False]
    with pytest.raises(ValueError, match="fer2013_on"):
        D.load_ferplus(root, "valid", "paper5", "soft", 2, fer2013_on="some")


def test_by_crowd_splits_the_fer2013_row_by_what_the_crowd_says(
        tmp_path: Path, tiny_model_path: Path) -> None:
    write_sets(tmp_path)
    common = ["--model", str(tiny_model_path), "--datasets", str(tmp_path)]
    r = E.main(["by-crowd", *common])
    # paper's five by FER2013: happy (crowd agrees), sad (crowd: neutral), angry (3-3-3 tie)
    assert [r[g]["images"] for g in E.CROWD_GROUPS] == [1, 1, 1] and r["images"] == 3
    # every PublicTest image paired, so the groups add up to the fer2013 row itself
    whole = E.main(["fer2013", *common])
    assert r["accuracy"] == pytest.approx(whole["accuracy"])
    assert r["accuracy"] == pytest.approx(
        sum(r[g]["matches_fer2013"] * r[g]["share"] for g in E.CROWD_GROUPS))
    # where the two label sets disagree a model can match at most one of them
    assert r["disagree"]["matches_fer2013"] + r["disagree"]["matches_ferplus"] <= 1
