"""The paired comparison of the two models: McNemar's exact test and the bootstrap interval on hand-made scenes."""

from __future__ import annotations

import numpy as np
import pytest

from cbam_viz.eval.stats import mcnemar_exact, paired_differences


def records(baseline: list[float], cbam: list[float], metric: str = "top1") -> list[dict]:
    return [{"baseline": {metric: b}, "cbam": {metric: c}} for b, c in zip(baseline, cbam)]


def test_identical_models_differ_by_nothing():
    scores = [1.0, 0.0, 1.0, 1.0] * 25
    diff = paired_differences(records(scores, scores), ["top1"], frozenset({"top1"}))["top1"]
    assert (diff.difference, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert (diff.only_baseline, diff.only_cbam, diff.p_value) == (0, 0, 1.0)


def test_one_sided_discordance_is_significant():
    # 100 scenes: both right on 70, both wrong on 10, only CBAM right on 20
    baseline = [1.0] * 70 + [0.0] * 10 + [0.0] * 20
    cbam = [1.0] * 70 + [0.0] * 10 + [1.0] * 20
    diff = paired_differences(records(baseline, cbam), ["top1"], frozenset({"top1"}))["top1"]
    assert diff.difference == pytest.approx(0.20)
    assert (diff.only_baseline, diff.only_cbam) == (0, 20)
    assert diff.p_value == pytest.approx(2 * 0.5**20)
    assert 0.0 < diff.low < 0.20 < diff.high


def test_balanced_discordance_is_not_significant():
    baseline = [1.0] * 60 + [1.0] * 10 + [0.0] * 10
    cbam = [1.0] * 60 + [0.0] * 10 + [1.0] * 10
    diff = paired_differences(records(baseline, cbam), ["top1"], frozenset({"top1"}))["top1"]
    assert diff.difference == 0.0 and diff.p_value == 1.0
    assert diff.low < 0.0 < diff.high


def test_mcnemar_matches_the_binomial_tail():
    # 2 vs 8 discordant: P(X <= 2) for X ~ Bin(10, 1/2) is 56/1024, doubled for two sides
    assert mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(8, 2) == mcnemar_exact(2, 8)
    assert mcnemar_exact(0, 0) == 1.0


def test_bootstrap_interval_width_matches_the_normal_theory():
    # continuous per-scene differences with sd 1 over 400 scenes: the 95% interval is about mean +- 1.96 / 20
    rng = np.random.default_rng(3)
    baseline = rng.uniform(0, 1, 400)
    cbam = baseline + rng.normal(0.3, 1.0, 400)
    diff = paired_differences(records(list(baseline), list(cbam), "energy"), ["energy"])["energy"]
    assert diff.only_baseline is None and diff.p_value is None  # no McNemar for a continuous metric
    assert diff.difference == pytest.approx(np.mean(cbam - baseline))
    half_width = 1.96 * np.std(cbam - baseline) / np.sqrt(400)
    assert diff.high - diff.low == pytest.approx(2 * half_width, rel=0.1)
    assert diff.low < diff.difference < diff.high


def test_no_scenes_is_an_error():
    with pytest.raises(ValueError, match="no scenes"):
        paired_differences([], ["top1"])
