"""Paired comparison of the two models scored on the same scenes: is CBAM's difference from the baseline noise?

Every metric's difference (CBAM minus baseline, mean over scenes) gets a percentile interval from a paired bootstrap
over scenes; 0/1 metrics (top-1, pointing, ...) also get McNemar's exact test, which looks only at the scenes where
exactly one of the two models scores. Scenes are resampled, classes are not: the interval is about new scenes of the
same classes on the same kind of backgrounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

RESAMPLES = 10_000
BLOCK = 500  # resamples per matrix product


@dataclass(frozen=True)
class PairedDifference:
    """One metric's mean difference (CBAM minus baseline) with its bootstrap interval; for 0/1 metrics, the scenes
    where only one model scores and McNemar's p."""

    difference: float
    low: float
    high: float
    only_baseline: int | None = None
    only_cbam: int | None = None
    p_value: float | None = None


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under no difference, each discordant scene is a fair coin."""
    discordant = only_a + only_b
    return 1.0 if discordant == 0 else float(binomtest(only_b, discordant, 0.5).pvalue)


def paired_differences(
    scenes: list[dict],
    metrics: list[str],
    binary: frozenset[str] = frozenset(),
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    pair: tuple[str, str] = ("baseline", "cbam"),
) -> dict[str, PairedDifference]:
    """Compare CBAM with the baseline on per-scene records ({"baseline": {metric: value}, "cbam": {...}}), one
    entry per metric; the metrics named in `binary` score 0 or 1 per scene and also get McNemar's test. `pair`
    names other records to compare the same way (the second minus the first)."""
    if not scenes:
        raise ValueError("no scenes to compare")
    base = np.array([[s[pair[0]][m] for m in metrics] for s in scenes], dtype=np.float64)
    cbam = np.array([[s[pair[1]][m] for m in metrics] for s in scenes], dtype=np.float64)
    diffs = cbam - base
    count = len(scenes)
    # A bootstrap resample is a multinomial count per scene, so a block of resamples' means is one matrix product;
    # blocks keep the count matrix small on large splits.
    rng = np.random.default_rng(seed)
    means = np.concatenate([
        rng.multinomial(count, np.full(count, 1.0 / count), size=min(BLOCK, resamples - done)) @ diffs / count
        for done in range(0, resamples, BLOCK)
    ])
    tail = 100 * (1 - level) / 2
    lows, highs = np.percentile(means, [tail, 100 - tail], axis=0)
    result = {}
    for k, metric in enumerate(metrics):
        tests = {}
        if metric in binary:
            only_baseline = int(((base[:, k] == 1) & (cbam[:, k] == 0)).sum())
            only_cbam = int(((base[:, k] == 0) & (cbam[:, k] == 1)).sum())
            tests = {"only_baseline": only_baseline, "only_cbam": only_cbam,
                     "p_value": mcnemar_exact(only_baseline, only_cbam)}
        result[metric] = PairedDifference(float(diffs[:, k].mean()), float(lows[k]), float(highs[k]), **tests)
    return result
