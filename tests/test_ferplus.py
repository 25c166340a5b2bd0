"""FER+ crowd votes: label.csv parsing, the majority and soft-label protocols, and (where
../shared/datasets is present) the real FER+ folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from training import data as D

# neutral happiness surprise sadness anger disgust fear contempt unknown NF
VOTES = {
    "fer0000000.png": [6, 0, 0, 3, 1, 0, 0, 0, 0, 0],  # neutral majority
    "fer0000001.png": [0, 1, 0, 0, 0, 0, 6, 0, 3, 0],  # fear majority: not in the paper's 5
    "fer0000002.png": [4, 4, 0, 0, 0, 0, 0, 0, 2, 0],  # no majority; 8 of 10 in the 5
    "fer0000003.png": [0, 0, 0, 0, 0, 0, 0, 0, 3, 7],  # not a face
    "fer0000004.png": [1, 0, 8, 0, 0, 0, 0, 0, 0, 0],  # nine annotators: surprise
}


def write_ferplus(root: Path) -> None:
    rng = np.random.default_rng(0)
    folder = root / "valid"
    folder.mkdir(parents=True)
    lines = []
    for name, votes in VOTES.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (48, 48), np.uint8))
        lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
    (folder / "label.csv").write_text("\n".join(lines) + "\n")


def test_majority_keeps_only_a_chosen_class_over_half_of_all_votes(tmp_path: Path) -> None:
    write_ferplus(tmp_path)
    faces = D.load_ferplus(tmp_path, "valid", "paper5", "majority")
    assert [Path(p).name for p in faces.paths] == ["fer0000000.png", "fer0000004.png"]
    assert [faces.classes[k] for k in faces.labels] == ["neutral", "surprise"]
    np.testing.assert_array_equal(faces.soft, np.eye(5, dtype=np.float32)[faces.labels])
    eight = D.load_ferplus(tmp_path, "valid", "fer8", "majority")
    assert [eight.classes[k] for k in eight.labels] == ["neutral", "fear", "surprise"]


def test_soft_labels_are_the_votes_over_the_chosen_classes(tmp_path: Path) -> None:
    write_ferplus(tmp_path)
    faces = D.load_ferplus(tmp_path, "valid", "paper5", "soft")
    names = [Path(p).name for p in faces.paths]
    # the fear image and the not-a-face image hold under half their votes in the five
    assert names == ["fer0000000.png", "fer0000002.png", "fer0000004.png"]
    cls = {c: i for i, c in enumerate(faces.classes)}
    np.testing.assert_allclose(faces.soft[0][[cls["neutral"], cls["sadness"], cls["anger"]]],
                               [0.6, 0.3, 0.1])
    np.testing.assert_allclose(faces.soft[1][[cls["neutral"], cls["happiness"]]], [0.5, 0.5])
    np.testing.assert_allclose(faces.soft.sum(1), 1.0, rtol=1e-6)
    assert faces.labels[2] == cls["surprise"]
    sub = faces.subset(np.array([2]))
    assert sub.soft.shape == (1, 5) and sub.labels[0] == cls["surprise"]


def test_bad_label_files_say_where(tmp_path: Path) -> None:
    (tmp_path / "label.csv").write_text('a.png,"(0, 0, 48, 48)",1,2,3\n')
    with pytest.raises(ValueError, match=r"label\.csv:1: expected"):
        D.read_ferplus_votes(tmp_path / "label.csv")
    (tmp_path / "label.csv").write_text('a.png,"(0, 0, 48, 48)",' + ",".join(["0"] * 10) + "\n")
    with pytest.raises(ValueError, match="not all 0"):
        D.read_ferplus_votes(tmp_path / "label.csv")
    with pytest.raises(ValueError, match="labels must be one of"):
        D.ferplus_targets(np.ones((1, 10), np.int64), "fer7", "probability")
    with pytest.raises(FileNotFoundError, match=r"label\.csv"):
        D.load_ferplus(tmp_path / "nowhere", "train")


def test_real_ferplus_valid(datasets: Path) -> None:
    root = datasets / "ferplus"
    majority = D.load_ferplus(root, "valid", "paper5", "majority")
    soft = D.load_ferplus(root, "valid", "paper5", "soft")
    # every majority image also passes the soft protocol, and its soft label's arg-max agrees
    assert 2000 < len(majority) < len(soft) <= 3579
    assert majority.images.shape[1:] == (48, 48) and majority.images.dtype == np.uint8
    assert set(majority.paths) <= set(soft.paths)
    index = {p: i for i, p in enumerate(soft.paths)}
    rows = [index[p] for p in majority.paths]
    assert (soft.labels[rows] == majority.labels).mean() == 1.0
    # raw pixels, not equalised like fer2013/'s (whose images all have mean ~128, std ~74)
    assert abs(float(majority.images.std(axis=(1, 2)).mean()) - 74) > 10
