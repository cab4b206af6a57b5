"""Localization metrics for heatmaps: pointing game, energy in mask, box localization, attention/CAM agreement.

Pointing game (Zhang et al., ECCV 2016): a hit when the heatmap's maximum lies less than `tolerance` pixels from
the object (strictly, as TorchRay counts it); the usual 15 px at 224 px input is scaled to the map's size by
`pointing_tolerance`. Its accuracy is the mean over images, or TorchRay's mean of per-class accuracies
(`class_mean`). Localization (Grad-CAM, Selvaraju et al., Sec. 4.1): the box around the largest region above 15% of
the map's maximum must overlap a ground-truth box with IoU >= 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

LOCALIZATION_THRESHOLD = 0.15  # share of the CAM's maximum kept for its predicted box


def pointing_tolerance(side: int, at_224: float = 15.0) -> float:
    """The 15 px tolerance of the 224 px protocol, scaled to an image whose shorter side is `side`."""
    return at_224 * side / 224.0


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, col) of the heatmap's maximum (first one on ties)."""
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> bool:
    """Whether the heatmap's maximum lies less than `tolerance` px from a mask pixel (default: scaled 15 px); a peak
    exactly at the tolerance misses, as in TorchRay, and a constant (e.g. all-zero) heatmap has no peak: a miss."""
    heat, mask = np.asarray(heatmap), np.asarray(mask, dtype=bool)
    if mask.shape != heat.shape:
        raise ValueError(f"heatmap {heat.shape} and mask {mask.shape} differ in shape")
    if not mask.any() or heat.max() == heat.min():
        return False
    tolerance = pointing_tolerance(min(mask.shape)) if tolerance is None else tolerance
    distance_to_mask = ndimage.distance_transform_edt(~mask)
    return bool(distance_to_mask[peak(heat)] < tolerance)


def class_mean(values: Sequence[float], labels: Sequence) -> float:
    """Mean over the classes in `labels` of each class's mean of `values` (e.g. per-image pointing hits): TorchRay's
    pointing-game accuracy, which weighs every class alike however many images it has."""
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    if values.shape != labels.shape or values.ndim != 1 or not len(values):
        raise ValueError(f"need as many labels as values, at least one (got {labels.shape} and {values.shape})")
    _, index = np.unique(labels, return_inverse=True)
    return float(np.mean(np.bincount(index, weights=values) / np.bincount(index)))


def energy_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) heatmap's mass that lies inside the mask, in [0, 1]."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    total = heat.sum()
    return float(heat[np.asarray(mask, dtype=bool)].sum() / total) if total > 0 else 0.0


def box_mask(box: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:
    """A boolean (H, W) mask of the box (x0, y0, x1, y1) in pixel coordinates, clipped to the image."""
    h, w = shape
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    mask = np.zeros(shape, dtype=bool)
    mask[max(0, int(round(y0))) : min(h, int(round(y1))), max(0, int(round(x0))) : min(w, int(round(x1)))] = True
    return mask


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shape maps (e.g. CBAM's last spatial attention and its Grad-CAM)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError("maps must have the same shape")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def cam_box(heatmap: np.ndarray, threshold: float = LOCALIZATION_THRESHOLD) -> tuple[int, int, int, int] | None:
    """The Grad-CAM paper's predicted box: threshold the map at `threshold` × its maximum and take the bounding box
    (x0, y0, x1, y1, pixel edges) of the largest connected region; None for an all-zero map."""
    heat = np.asarray(heatmap, dtype=np.float64)
    top = heat.max()
    if top <= 0:
        return None
    labels, count = ndimage.label(heat >= threshold * top)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return cols.start, rows.start, cols.stop, rows.stop


def localized(heatmap: np.ndarray, boxes: list[tuple[float, float, float, float]], min_iou: float = 0.5) -> bool:
    """Weakly-supervised localization: the CAM's box overlaps some ground-truth box with IoU >= `min_iou`."""
    predicted = cam_box(heatmap)
    return predicted is not None and any(box_iou(predicted, box) >= min_iou for box in boxes)


def mask_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The bounding boxes (x0, y0, x1, y1) of a mask's connected regions: ground-truth boxes from a mask."""
    labels, _ = ndimage.label(np.asarray(mask, dtype=bool))
    return [(cols.start, rows.start, cols.stop, rows.stop) for rows, cols in ndimage.find_objects(labels)]
