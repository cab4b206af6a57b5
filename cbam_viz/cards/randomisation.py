"""Cascading model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

The classifier is randomised from the top down, cumulatively: fc, then layer4, layer3, layer2, layer1. Each
randomised layer takes the values a fresh model of the same architecture starts from (`own_init`: torchvision's
init, the CBAM spatial gates' BN weight at zero), so a randomised layer looks like the model before training rather
than like noise of another scale. After each step every method's map of the same scenes and classes is compared
with the trained model's map by three figures, as in the paper: the Spearman rank correlation of the signed maps
(before the ReLU), the same of their absolute values (a map whose sign flips still ranks alike), and the SSIM of the
heatmaps as the app shows them (ReLU, [0, 1]). A map that stays similar while the weights it claims to explain are
random does not explain them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import spearmanr
from torch import nn

from cbam_viz.io.checkpoints import LoadedModel
from cbam_viz.nn.resnet import build_model

CASCADE = ("fc", "layer4", "layer3", "layer2", "layer1")  # randomised in this order, each on top of the ones before
FIGURES = ("spearman", "spearman_abs", "ssim")
FIGURE_LABELS = {
    "spearman": "Spearman rank correlation of the signed maps",
    "spearman_abs": "Spearman rank correlation of the absolute maps",
    "ssim": "SSIM of the heatmaps",
}
# The pass rule: once fc and layer4 (the layers a layer4 CAM is computed from) are random, the 95% intervals of the
# means over the scenes of the signed maps' Spearman correlation and of the heatmaps' SSIM lie below PASS_BELOW,
# half-way between unrelated and identical maps; an interval wholly at or above it fails, one across it is
# inconclusive. The absolute maps' correlation is reported but left out of the rule: a CAM's sign is
# what the app shows (its positive part), so a map whose sign flips is another heatmap. A map whose absolute
# Spearman correlation stays at or above CLASS_FREE_ABOVE while only fc, the one class-specific layer, is random does
# not depend on the class it is asked to explain.
PASS_BELOW = 0.5
CLASS_FREE_ABOVE = 0.99
RULE_FIGURES = ("spearman", "ssim")
SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03  # Wang et al. (2004) as scikit-image's structural_similarity defaults


def own_init(loaded: LoadedModel, seed: int = 0) -> nn.Module:
    """A freshly initialised model of `loaded`'s architecture, classes and CBAM options: the values a randomised
    layer takes."""
    meta = loaded.meta
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(meta.arch, meta.num_classes, cbam=meta.cbam)
    return model.to(loaded.device).eval()


def cascade(model: nn.Module, initial: nn.Module, stages: Sequence[str] = CASCADE) -> Iterator[tuple[str, nn.Module]]:
    """A copy of `model` with `stages` taking `initial`'s parameters and buffers one by one, cumulatively; yields
    (stage, the copy) after each, the same copy each time."""
    randomised = copy.deepcopy(model).eval()
    fresh = initial.state_dict()
    for stage in stages:
        part = {key: value for key, value in fresh.items() if key.startswith(f"{stage}.")}
        if not part:
            raise ValueError(f"the model has no layer {stage!r}")
        randomised.load_state_dict(part, strict=False)
        yield stage, randomised


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels (ties get their mean rank); NaN when one map is constant."""
    a, b = np.ravel(a), np.ravel(b)
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    return float(spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity of two 2-D maps (Wang et al., 2004), computed as scikit-image's
    `structural_similarity` does by default: 7×7 uniform windows, sample covariances, the border of half a window
    left out of the mean."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"need two 2-D maps of one shape, each side at least {SSIM_WINDOW} (got {a.shape}, {b.shape})")
    window = SSIM_WINDOW**2
    unbiased = window / (window - 1)
    mean_a, mean_b = (ndimage.uniform_filter(m, SSIM_WINDOW) for m in (a, b))
    var_a = unbiased * (ndimage.uniform_filter(a * a, SSIM_WINDOW) - mean_a**2)
    var_b = unbiased * (ndimage.uniform_filter(b * b, SSIM_WINDOW) - mean_b**2)
    cov = unbiased * (ndimage.uniform_filter(a * b, SSIM_WINDOW) - mean_a * mean_b)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    pad = (SSIM_WINDOW - 1) // 2
    return float(index[pad:-pad, pad:-pad].mean())


def similarities(signed: np.ndarray, signed_random: np.ndarray, heat: np.ndarray, heat_random: np.ndarray) -> dict:
    """FIGURES of one scene: the trained model's map against the randomised one's, {figure: float}."""
    return {
        "spearman": spearman(signed, signed_random),
        "spearman_abs": spearman(np.abs(signed), np.abs(signed_random)),
        "ssim": ssim(heat, heat_random),
    }


def judge(curve: dict[str, dict[str, dict]]) -> str:
    """"class-independent", "passes", "fails" or "inconclusive" from the summaries (mean, low, high) of FIGURES
    after each stage of CASCADE, by the rule above."""
    if curve["fc"]["spearman_abs"]["mean"] >= CLASS_FREE_ABOVE:
        return "class-independent"
    top = [curve["layer4"][figure] for figure in RULE_FIGURES]
    if all(stat["high"] < PASS_BELOW for stat in top):
        return "passes"
    return "fails" if any(stat["low"] >= PASS_BELOW for stat in top) else "inconclusive"
