"""Rendering: heatmap overlays (grad-cam's `show_cam_on_image` with any matplotlib colormap)."""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
from PIL import Image
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image

COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma", "plasma", "coolwarm")


@functools.lru_cache(maxsize=None)
def _lut_bgr(colormap: str) -> np.ndarray:
    """A matplotlib colormap as the 256×1×3 BGR lookup table OpenCV's applyColorMap takes."""
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; try one of {', '.join(COLORMAPS)}") from None
    rgb = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[:, ::-1].reshape(256, 1, 3))


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend a [0, 1] heatmap (resized to the image if needed) over an RGB image; opacity is the heatmap's weight."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if heatmap.shape != rgb.shape[:2]:
        heatmap = scale_cam_image(heatmap[None], (rgb.shape[1], rgb.shape[0]))[0]
    blended = show_cam_on_image(
        rgb, np.clip(heatmap, 0, 1), use_rgb=True, colormap=_lut_bgr(colormap), image_weight=1.0 - opacity
    )
    return Image.fromarray(blended)
