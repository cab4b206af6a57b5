"""Localization metrics for heatmaps: pointing game, energy in mask, attention/CAM agreement.

Pointing game (Zhang et al., ECCV 2016): a hit when the heatmap's maximum lies within `tolerance` pixels of the
object; the usual 15 px at 224 px input is scaled to the map's size by `pointing_tolerance`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def pointing_tolerance(side: int, at_224: float = 15.0) -> float:
    """The 15 px tolerance of the 224 px protocol, scaled to an image whose shorter side is `side`."""
    return at_224 * side / 224.0


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, col) of the heatmap's maximum (first one on ties)."""
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance: float | None = None) -> bool:
    """Whether the heatmap's maximum falls within `tolerance` px of a mask pixel (default: scaled 15 px)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != heatmap.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ in shape")
    if not mask.any():
        return False
    tolerance = pointing_tolerance(min(mask.shape)) if tolerance is None else tolerance
    distance_to_mask = ndimage.distance_transform_edt(~mask)
    return bool(distance_to_mask[peak(heatmap)] <= tolerance)


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
