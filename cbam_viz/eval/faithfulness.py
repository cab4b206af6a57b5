"""Faithfulness of each model's own CAM: grad-cam's ROAD (Rong et al., ICML 2022), removal without retraining.

For each of the percentiles 10..90, the most relevant pixels (by the CAM) are replaced by noisy linear imputation
and the softmax P of the explained class is measured again; likewise removing the least relevant pixels first.
`ROADCombined` reports (drop when removing most relevant − drop when removing least relevant) / 2, i.e. (P after
removing least relevant − P after removing most relevant) / 2: higher means the CAM points at what the model uses.
Each image costs 2 orders × 9 percentiles × 2 forward passes (before and after imputation) and 18 sparse
imputations, so it is off by default (`eval --road`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from cbam_viz.cam.engine import Comparison, ModelResult, preprocess, upsample
from cbam_viz.io.checkpoints import LoadedModel

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
FORWARDS_PER_IMAGE = 2 * 2 * len(PERCENTILES)
IMPUTATIONS_PER_IMAGE = 2 * len(PERCENTILES)
ROAD_METRIC = ("road", "ROAD, P (LeRF - MoRF) / 2")


def road_scores(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    results: Sequence[ModelResult],
    input_size: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """ROADCombined of each image's first CAM for the class it explains, on this model: (N,) floats.

    The CAM is taken at the layer's resolution and upsampled to the network's input, so the score does not depend
    on the size the heatmap was shown at; the imputation noise is seeded, so a rerun gives the same numbers.
    """
    x = preprocess(images, loaded.meta, input_size).to(loaded.device)
    side = x.shape[-1]
    cams = np.stack([upsample(res.cams[:1], (side, side))[0] for res in results]).astype(np.float32)
    targets = [ClassifierOutputSoftmaxTarget(res.targets[0]) for res in results]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = ROADCombined(percentiles=list(PERCENTILES))(x, cams, targets, loaded.model)
    return np.asarray(scores, dtype=np.float64).reshape(len(images))


def road_for_batch(
    models: dict[str, LoadedModel],
    images: Sequence[Image.Image],
    comparisons: Sequence[Comparison],
    input_size: int | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """ROAD of every model's own CAM on a batch (the images the comparisons were run on), and the seconds it took."""
    started = time.perf_counter()
    scores = {key: road_scores(loaded, images, [c.results[key] for c in comparisons], input_size)
              for key, loaded in models.items()}
    return scores, time.perf_counter() - started


def road_cost(images: int, models: int, seconds: float) -> str:
    """A line saying what ROAD cost: forward passes and imputations per image, seconds per image and in all."""
    per_image = seconds / max(images * models, 1)
    return (f"ROAD: {FORWARDS_PER_IMAGE} forward passes and {IMPUTATIONS_PER_IMAGE} imputations per image and model; "
            f"{per_image:.2f} s per image and model, {seconds:.1f} s in all ({images} images x {models} models)")
