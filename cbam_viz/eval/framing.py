"""The square frame a photo is evaluated in, and where its ground-truth boxes and masks land in it.

"whole" resizes the whole photo to side×side (x and y scale apart, as the app does); "center" resizes the shorter
side to side·256/224 and crops the central side×side (ImageNet's protocol), so boxes scale, shift and clip. The
image, its boxes and its mask all go through the one `frame_geometry`, so they stay aligned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cbam_viz.data.annotations import Box

PREPROCESSINGS = ("center", "whole")
CROP_FRACTION = 224 / 256  # the crop's share of the resized shorter side


def frame_geometry(size: tuple[int, int], mode: str, side: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) taking an image of `size` (W, H) to side×side."""
    width, height = size
    if mode == "whole":
        return side, side, 0, 0
    if mode != "center":
        raise ValueError(f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESSINGS)}")
    short = max(side, round(side / CROP_FRACTION))
    scale = short / min(width, height)
    new_w, new_h = max(side, round(width * scale)), max(side, round(height * scale))
    return new_w, new_h, (new_w - side) // 2, (new_h - side) // 2


def frame_image(image: Image.Image, mode: str, side: int) -> Image.Image:
    """The side×side RGB image the networks are shown (bilinear, antialiased resize, then the crop)."""
    new_w, new_h, left, top = frame_geometry(image.size, mode, side)
    resized = TF.resize(TF.pil_to_tensor(image), [new_h, new_w], antialias=True)
    return TF.to_pil_image(TF.crop(resized, top, left, side, side))


def frame_mask(mask: np.ndarray, mode: str, side: int) -> np.ndarray:
    """A boolean (H, W) mask of the original image carried into the side×side frame (nearest neighbour)."""
    height, width = mask.shape
    new_w, new_h, left, top = frame_geometry((width, height), mode, side)
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.uint8))[None]
    resized = TF.resize(tensor, [new_h, new_w], interpolation=TF.InterpolationMode.NEAREST)
    return TF.crop(resized, top, left, side, side)[0].numpy() > 0


def frame_boxes(boxes: Sequence[Box], size: tuple[int, int], mode: str, side: int) -> list[Box]:
    """Boxes in the original image's pixels (image `size` = (W, H)) carried into the frame: scaled, shifted by the
    crop, clipped to it; boxes left with no area (cropped away) are dropped."""
    new_w, new_h, left, top = frame_geometry(size, mode, side)
    sx, sy = new_w / size[0], new_h / size[1]
    out = []
    for name, x0, y0, x1, y1 in boxes:
        fx0, fx1 = (float(np.clip(x * sx - left, 0, side)) for x in (x0, x1))
        fy0, fy1 = (float(np.clip(y * sy - top, 0, side)) for y in (y0, y1))
        if fx1 > fx0 and fy1 > fy0:
            out.append((name, fx0, fy0, fx1, fy1))
    return out


def describe(mode: str, side: int) -> str:
    """The preprocessing in words, for eval's output."""
    if mode == "whole":
        return f"whole image resized to {side}x{side} px (aspect ratio not kept)"
    short = max(side, round(side / CROP_FRACTION))
    return f"shorter side resized to {short} px, central {side}x{side} px crop"
