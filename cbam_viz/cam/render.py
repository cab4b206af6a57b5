"""Rendering: heatmap overlays (grad-cam's colormap handling with any matplotlib colormap, a plain alpha blend)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import matplotlib
import numpy as np
from PIL import Image
from pytorch_grad_cam.utils.image import scale_cam_image

from cbam_viz.errors import CbamVizError, echo

COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma", "plasma", "coolwarm")


class ColormapError(CbamVizError, ValueError):
    """A colormap name matplotlib does not know, or one outside the choices offered."""


def check_colormap(colormap: str, choices: Sequence[str] | None = None) -> str:
    """`colormap` if matplotlib knows it (and it is one of `choices`, when given); ColormapError lists some."""
    if colormap not in (matplotlib.colormaps if choices is None else choices):
        raise ColormapError(f"unknown colormap {echo(colormap)}; choose one of {', '.join(choices or COLORMAPS)}")
    return colormap


@functools.lru_cache(maxsize=None)
def colormap_lut(colormap: str) -> np.ndarray:
    """A matplotlib colormap as the 256×1×3 BGR lookup table OpenCV's applyColorMap takes."""
    cmap = matplotlib.colormaps[check_colormap(colormap)]
    rgb = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[:, ::-1].reshape(256, 1, 3))


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] heatmap as an H×W×3 uint8 RGB picture, coloured as grad-cam's `show_cam_on_image` colours it."""
    bgr = cv2.applyColorMap(np.uint8(255 * np.clip(heatmap, 0, 1)), colormap_lut(colormap))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend a [0, 1] heatmap (resized to the image if needed) over an RGB image; opacity is the heatmap's weight.

    A plain alpha blend: opacity 0 gives the image exactly, 1 the colormap. (grad-cam's `show_cam_on_image`
    divides the blend by its maximum, which brightens dark photos and shifts the colours of one-colour ones.)
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be from 0 to 1, not {opacity}")
    rgb = np.asarray(image.convert("RGB"))
    if heatmap.shape != rgb.shape[:2]:
        heatmap = scale_cam_image(heatmap[None], (rgb.shape[1], rgb.shape[0]))[0]
    blended = cv2.addWeighted(colorize(heatmap, colormap), float(opacity), rgb, 1.0 - float(opacity), 0.0)
    return Image.fromarray(blended)
