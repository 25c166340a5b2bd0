"""Loaders on tiny trees and CSVs written by the test; clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfer.faces import BadImage
from training import data as D


def write_tree(root: Path, spec: dict[str, list[str]], size: int = 48) -> None:
    rng = np.random.default_rng(0)
    for folder, names in spec.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            cv2.imwrite(str(root / folder / name), rng.integers(0, 256, (size, size), np.uint8))


def test_folder_maps_names_and_selects_the_papers_five(tmp_path: Path) -> None:
    write_tree(tmp_path, {"angry": ["a.jpg"], "happy": ["h1.png", "h2.jpg"], "sad": ["s.jpg"],
                          "surprise": ["u.jpg"], "neutral": ["n.jpg"], "disgust": ["d.jpg"]})
    faces = D.load_folder(tmp_path)
    assert faces.classes == D.PAPER5
    assert faces.counts() == {"anger": 1, "happiness": 2, "sadness": 1, "surprise": 1,
                              "neutral": 1}
    assert faces.images.shape == (6, 48, 48) and faces.images.dtype == np.uint8
    only = D.load_folder(tmp_path, "happy,disgust")
    assert only.classes == ("happiness", "disgust") and len(only) == 3


def test_fer2013_layout_and_missing_class(tmp_path: Path) -> None:
    for split in ("train", "test"):
        write_tree(tmp_path / split, {c: [f"{split}_{c}.jpg"] for c in
                                      ["angry", "disgust", "fear", "happy", "neutral", "sad",
                                       "surprise"]})
    assert len(D.load_fer2013(tmp_path, "test", "fer7")) == 7
    (tmp_path / "train" / "fear" / "train_fear.jpg").unlink()
    (tmp_path / "train" / "fear").rmdir()
    with pytest.raises(FileNotFoundError, match="fear"):
        D.load_fer2013(tmp_path, "train", "fer7")


def test_ckplus_subject_groups(tmp_path: Path) -> None:
    write_tree(tmp_path, {"anger": ["S010_004_00000019.png"],
                          "happy": ["S010_006_00000015.png", "S011_001_00000016.png"],
                          "sadness": ["S014_002_00000016.png"],
                          "surprise": ["S022_001_00000030.png"]})
    faces = D.load_ckplus(tmp_path)
    assert faces.classes == ("anger", "happiness", "sadness", "surprise")
    assert sorted(set(faces.groups)) == ["S010", "S011", "S014", "S022"]


def test_odd_sized_and_unreadable_images_name_the_file(tmp_path: Path) -> None:
    write_tree(tmp_path, {c: ["ok.jpg"] for c in ["angry", "happy", "sad", "surprise"]})
    write_tree(tmp_path, {"neutral": ["big.jpg"]}, size=64)
    with pytest.raises(BadImage, match=r"big\.jpg.*48x48"):
        D.load_folder(tmp_path)
    (tmp_path / "neutral" / "big.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(BadImage, match=r"big\.jpg"):
        D.load_folder(tmp_path)


def test_kaggle_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = ["emotion,pixels,Usage"]
    for emotion, usage in [(0, "Training"), (3, "Training"), (1, "Training"), (6, "PublicTest"),
                           (4, "PrivateTest")]:
        rows.append(f"{emotion},{' '.join(map(str, rng.integers(0, 256, 2304)))},{usage}")
    path = tmp_path / "fer2013.csv"
    path.write_text("\n".join(rows) + "\n")
    train = D.load_fer2013_csv(path, "Training")  # disgust (1) is not among the paper's five
    assert train.labels.tolist() == [0, 1] and train.images.shape == (2, 48, 48)
    assert D.load_fer2013_csv(path, "Training", "fer7").labels.tolist() == [0, 3, 1]
    assert D.load_fer2013_csv(path, "PublicTest").labels.tolist() == [4]
    path.write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")
    with pytest.raises(BadImage, match=r"fer2013\.csv:2"):
        D.load_fer2013_csv(path)


def test_class_specs() -> None:
    assert D.resolve_classes("angry,happy") == ("anger", "happiness")
    with pytest.raises(ValueError, match="unknown expression class"):
        D.resolve_classes("joy")
