"""Photo preprocessing with torchvision.transforms.v2, on uint8 CHW tensors (the training loop normalises).

Training: RandomResizedCrop + horizontal flip, optionally TrivialAugmentWide or RandAugment. Evaluation: "center"
(resize the short side to size * 256/224, centre-crop size x size, the ImageNet convention) or "whole" (the whole
image squeezed to size x size, as the app and `export` feed images). Random transforms draw from torch's global
generator; `seeded` runs one under a seed of its own, so an item's pixels depend on (seed, index) alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

AUGMENTS = ("none", "trivialaugment", "randaugment")
PREPROCESS = ("center", "whole")
RESIZE_RATIO = 256 / 224  # "center": short side before the crop, relative to the crop

_AUGMENT_TEXT = {
    "none": "RandomResizedCrop and horizontal flip",
    "trivialaugment": "RandomResizedCrop, horizontal flip and TrivialAugmentWide",
    "randaugment": "RandomResizedCrop, horizontal flip and RandAugment",
}

Transform = Callable[[Image.Image], torch.Tensor]


def train_transform(size: int, augment: str = "none") -> Transform:
    """PIL image -> uint8 3 x size x size: a random-resized crop, a random flip, then `augment`'s policy."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, not {augment!r}")
    steps = [v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    if augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    elif augment == "randaugment":
        steps.append(v2.RandAugment())
    return v2.Compose(steps)


def eval_transform(size: int, preprocess: str = "center") -> Transform:
    """PIL image -> uint8 3 x size x size, deterministic: "center" crop or the "whole" image (see the module)."""
    if preprocess == "center":
        resize = [v2.Resize(round(size * RESIZE_RATIO), antialias=True), v2.CenterCrop(size)]
    elif preprocess == "whole":
        resize = [v2.Resize([size, size], antialias=True)]
    else:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, not {preprocess!r}")
    return v2.Compose([v2.PILToTensor(), *resize])


def augmentation_text(augment: str) -> str:
    """How the recipe describes the training-time augmentation."""
    return _AUGMENT_TEXT[augment]


ITEM_STREAM = 3  # keeps the seeds of items apart from other seeds drawn from the same run seed


def item_seed(seed: int, index: int, stream: int = ITEM_STREAM) -> int:
    """A 63-bit torch seed for item `index` (>= 0) of the run seeded `seed`, independent for each `stream`."""
    entropy = [int(seed) % (1 << 64), int(stream), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def seeded(transform: Transform, image: Image.Image, seed: int) -> torch.Tensor:
    """`transform(image)` with torch's CPU generator seeded `seed`, leaving the caller's generator untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)
