"""The FER+ selection split: chosen by file name alone, so the same faces every time."""

from __future__ import annotations

import numpy as np

from training import data as D

NAMES = [f"fer{i:07d}.png" for i in range(5000)]


def test_selection_is_deterministic_and_about_a_tenth():
    mask = D.selection_mask(NAMES)
    assert mask.tolist() == D.selection_mask(NAMES).tolist()
    assert 0.08 < mask.mean() < 0.12


def test_selection_is_stable_under_reordering_and_folders():
    order = np.random.default_rng(0).permutation(len(NAMES))
    shuffled = [NAMES[i] for i in order]
    picked = {n for n, m in zip(NAMES, D.selection_mask(NAMES), strict=True) if m}
    assert {n for n, m in zip(shuffled, D.selection_mask(shuffled), strict=True) if m} == picked
    assert all(D.in_selection(f"/some/where/train/{n}") for n in picked)


def test_split_selection_is_disjoint_and_complete():
    images = np.zeros((len(NAMES), 48, 48), np.uint8)
    faces = D.FaceSet(images, np.arange(len(NAMES)) % 5, D.PAPER5, None,
                      [f"train/{n}" for n in NAMES])
    rest, sel = D.split_selection(faces)
    assert not set(rest.paths) & set(sel.paths)
    assert sorted(rest.paths + sel.paths) == sorted(faces.paths)
    assert all(D.in_selection(p) for p in sel.paths)
