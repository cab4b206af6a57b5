"""Faithfulness of each model's own CAM: grad-cam's ROAD (Rong et al., ICML 2022), removal without retraining.

For each of the percentiles 10..90, the most relevant pixels (by the CAM) are replaced by noisy linear imputation
and the softmax P of the explained class is measured again; likewise removing the least relevant pixels first.
`ROADCombined` reports (drop when removing most relevant − drop when removing least relevant) / 2, i.e. (P after
removing least relevant − P after removing most relevant) / 2: higher means the CAM points at what the model uses.
Each image costs 2 orders × 9 percentiles × 2 forward passes (before and after imputation) and 18 sparse
imputations, so it is off by default (`eval --road`).

Deletion and insertion (Petsiuk et al., BMVC 2018, the RISE paper) remove the pixels in the CAM's order: deletion
replaces them, most relevant first, with zero (the dataset's mean colour once normalised); insertion puts them,
most relevant first, back into a blurred copy. The area under the target's softmax P over the share of pixels
changed is the score: low for deletion and high for insertion mean the CAM ranks the pixels the model uses first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torchvision.transforms.v2 import functional as TF

from cbam_viz.cam.engine import Comparison, ModelResult, preprocess, upsample
from cbam_viz.io.checkpoints import LoadedModel

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
FORWARDS_PER_IMAGE = 2 * 2 * len(PERCENTILES)
IMPUTATIONS_PER_IMAGE = 2 * len(PERCENTILES)
ROAD_METRIC = ("road", "ROAD, P (LeRF - MoRF) / 2")
CAUSAL_STEPS = 16  # deletion / insertion: pixels change in this many equal steps (RISE: one row's worth per step)
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # insertion starts from the image blurred as in RISE


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
    return road_of_heatmaps(loaded.model, x, cams, [res.targets[0] for res in results], seed)


def road_of_heatmaps(
    model: torch.nn.Module, x: torch.Tensor, heatmaps: np.ndarray, targets: Sequence[int], seed: int = 0
) -> np.ndarray:
    """ROADCombined of (N, S, S) heatmaps at the input's size for the classes `targets` on normalised inputs x:
    (N,) floats, the imputation noise seeded."""
    softmax_targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = ROADCombined(percentiles=list(PERCENTILES))(x, heatmaps, softmax_targets, model)
    return np.asarray(scores, dtype=np.float64).reshape(len(x))


@torch.no_grad()
def causal_curves(
    model: torch.nn.Module, x: torch.Tensor, heatmaps: np.ndarray, targets: Sequence[int], steps: int = CAUSAL_STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves, (N, steps + 1) each: the target's softmax P with the first k/steps of the
    pixels (by the heatmap, largest first; ties in pixel order) deleted from x, or inserted into its blurred copy."""
    n, _, height, width = x.shape
    order = np.argsort(-heatmaps.reshape(n, -1), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(height * width)[None], axis=1)
    ranks = torch.from_numpy(ranks).to(x.device).view(n, 1, 1, height, width)
    changed = ranks < (torch.arange(steps + 1, device=x.device) * -(-height * width // steps)).view(1, -1, 1, 1, 1)
    blurred = TF.gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    curves = np.empty((2, n, steps + 1))
    for i in range(n):
        deleted = torch.where(changed[i], torch.zeros_like(x[i]), x[i])
        inserted = torch.where(changed[i], x[i], blurred[i])
        probs = torch.softmax(model(torch.cat([deleted, inserted])).float(), dim=1)[:, int(targets[i])]
        curves[:, i] = probs.view(2, steps + 1).cpu().numpy()
    return curves[0], curves[1]


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve of equally spaced points over [0, 1] (trapezoids, as RISE computes it): (N,)."""
    return (curves.sum(axis=1) - (curves[:, 0] + curves[:, -1]) / 2) / (curves.shape[1] - 1)


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
