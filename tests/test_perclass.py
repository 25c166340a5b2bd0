"""The per-class logit bias search finds a shift that a skewed model needs."""

from __future__ import annotations

import numpy as np

from training.perclass import balanced, biased, search_bias


def test_bias_search_undoes_a_skew_towards_one_class():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), true] += 2.0
    logits[:, 2] += 1.5  # the model leans towards class 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    before = balanced(true, biased(probs, np.zeros(3)), 3)
    bias, after = search_bias(probs, true, fixed=2, step=0.1, span=3.0, passes=2)
    assert bias[2] == 0
    assert bias[0] > 0.5 and bias[1] > 0.5
    assert after > before + 0.05
    assert after == balanced(true, biased(probs, bias), 3)
