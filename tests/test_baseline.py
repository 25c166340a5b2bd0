"""The LBP+SVM baseline: feature shape, the CNN's folds, and an end-to-end CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from training import baseline as B
from training import data as D
from training.fit import FitConfig, folds_of


def _texture(kind: str, rng: np.random.Generator) -> np.ndarray:
    """48x48 faces-sized images of two clearly different textures, with noise and shifts."""
    y, x = np.mgrid[0:48, 0:48]
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":  # horizontal bands: mostly flat/edge LBP codes
        base = 128 + 90 * np.sin(y * 2 * np.pi / rng.uniform(5, 8) + phase)
    else:  # fine checks: many corner-like codes
        period = rng.uniform(3, 4)
        base = 128 + 90 * np.sign(np.sin(x * 2 * np.pi / period + phase)
                                  * np.sin(y * 2 * np.pi / period))
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def texture_tree(tmp_path: Path) -> Path:
    """root/happy, root/sad with S###_ subject prefixes: 12 subjects, 4 images each per class."""
    rng = np.random.default_rng(0)
    for folder, kind in (("happy", "stripes"), ("sad", "checks")):
        (tmp_path / folder).mkdir()
        for s in range(12):
            for i in range(4):
                cv2.imwrite(str(tmp_path / folder / f"S{s:03d}_{i:03d}_01.png"),
                            _texture(kind, rng))
    return tmp_path


def test_feature_length_is_cells_times_bins_times_radii() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    for cells, radii in ((6, (1.0,)), (7, (1.0, 2.0))):
        x = B.lbp_features(images, 8, radii, cells, "l1", progress=False)
        assert x.shape == (3, cells * cells * 10 * len(radii))
        assert x.shape[1] == B.feature_length(8, radii, cells)
        # every cell's 10-bin uniform-LBP histogram is L1-normalised
        np.testing.assert_allclose(x.reshape(3, -1, 10).sum(-1), 1.0, rtol=1e-5)


def test_folds_are_the_cnns_and_grouped_folds_keep_subjects_apart(texture_tree: Path) -> None:
    faces = D.load_ckplus(texture_tree, ("happiness", "sadness"))
    cfg = B.BaselineConfig(folds=4, fold_mode="grouped", seed=3)
    ours, protocol = folds_of(cfg, faces)  # the baseline passes its own config
    theirs, _ = folds_of(FitConfig(folds=4, fold_mode="grouped", seed=3), faces)
    assert "grouped by subject" in protocol
    for (tr, te), (tr2, te2) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(te, te2)
        assert not set(faces.groups[tr]) & set(faces.groups[te])
    assert sorted(np.concatenate([te for _, te in ours]).tolist()) == list(range(len(faces)))


def test_cli_runs_cross_validation_end_to_end(texture_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = B.main(["--data", "ckplus", "--data-root", str(texture_tree),
                      "--classes", "happiness,sadness", "--folds", "4", "--fold-mode", "grouped",
                      "--radii", "1", "--cells", "4", "--c-grid", "0.1,10", "--out", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])
    assert saved["accuracy"] > 0.85  # chance is 0.5
    assert len(saved["fold_accuracy"]) == 4
    assert all(c in (0.1, 10.0) for c in saved["chosen_C"])
    assert saved["images"] == 96
    assert "grouped by subject" in saved["protocol"]
    assert (out / "confusion.png").stat().st_size > 1000


def test_cli_train_then_test_split(texture_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = B.main(["--data", "folder", "--data-root", str(texture_tree),
                      "--val-root", str(texture_tree), "--classes", "happiness,sadness",
                      "--kernel", "rbf", "--limit", "60", "--out", str(out)])
    assert metrics["test_images"] == 96
    assert metrics["accuracy"] > 0.85
    assert metrics["chosen_C"] in B.BaselineConfig().c_values()


def test_classic_uniform_lbp_has_59_bins_per_cell() -> None:
    images = np.random.default_rng(1).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    x = B.lbp_features(images, 8, (1.0,), 6, "l1", progress=False, method="nri_uniform")
    assert B.lbp_bins(8, "nri_uniform") == 59
    assert x.shape == (2, 6 * 6 * 59) == (2, B.feature_length(8, (1.0,), 6, "nri_uniform"))
    np.testing.assert_allclose(x.reshape(2, -1, 59).sum(-1), 1.0, rtol=1e-5)
    # random pixels are mostly non-uniform patterns: the last bin holds the most
    assert x.reshape(2, -1, 59).mean((0, 1)).argmax() == 58
