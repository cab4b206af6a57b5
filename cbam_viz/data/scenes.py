"""Composing stamp scenes from an asset pack, deterministically, and `SceneDataset` for training.

Scenes (`compose_scene`, `SCENE_VERSION`): a random-resized crop (25-100% of the short side) of a background of
the split with brightness / contrast / saturation jitter and a random mirror; 0-2 distractors; one target
object scaled so its longest side is 20-70% of the image side, mirrored (unless its `.dat` says `nomirror`),
rotated +-15 degrees, with brightness / contrast / saturation jitter, placed at most 10% outside each border.
A distractor may be drawn in front of the target only if at least 70% of the target stays visible; otherwise it
goes behind. Everything comes from `numpy.random.default_rng([seed, split_id, index])`, so the same
(split, index, seed) gives the same pixels in any process. Train labels are drawn uniformly per index; val and
test use `index % n_classes` (balanced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cbam_viz.data.pack import SPLIT_IDS, AssetPack, check_split
from cbam_viz.errors import CbamVizError
from cbam_viz.lru import LRU, nbytes

SCENE_VERSION = 2  # bumped whenever compose_scene draws different pixels for the same (pack, split, index, seed)

TARGET_SCALE = (0.20, 0.70)
DISTRACTOR_SCALE = (0.15, 0.45)
MAX_ROTATION = 15.0
JITTER = (0.75, 1.25)
TARGET_OVERFLOW = 0.10
DISTRACTOR_OVERFLOW = 0.30
MIN_TARGET_VISIBLE = 0.70
BG_CROP_SCALE = (0.25, 1.0)
BG_JITTER = (0.7, 1.3)
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # luma weights of the saturation jitter
SCALED_CACHE_BYTES = 96 * 2**20  # per process: object stamps resized to one size recur across scenes


@dataclass
class Scene:
    """A composed scene: RGB image, the visible-target mask, its label and the distractors' visible masks."""

    image: Image.Image
    mask: np.ndarray
    label: int
    distractor_masks: list[np.ndarray] = field(default_factory=list)
    bbox: tuple[int, int, int, int] | None = None  # target mask bounding box (x0, y0, x1, y1), end-exclusive
    info: dict[str, Any] = field(default_factory=dict)


def _channel_mean(pixels: np.ndarray) -> np.ndarray:
    """Per-channel mean of an (N, 3) float32 array, summed in row order as `pixels.mean(0)` sums it (the same
    bits), in one pass over memory instead of three strided ones."""
    return np.true_divide(np.add.accumulate(pixels, axis=0)[-1], len(pixels))


def _jitter(image: Image.Image, b: float, c: float, s: float) -> Image.Image:
    """Brightness, contrast (about the mean of the opaque pixels) and saturation jitter of an RGBA or RGB image.
    Works in place on one float32 copy; every float operation is the one of the scene version's definition."""
    arr = np.asarray(image)
    rgb = np.multiply(arr[..., :3], b, dtype=np.float32)
    pixels = rgb.reshape(-1, 3)
    if image.mode == "RGBA":
        opaque = arr[..., 3] > 127
        if opaque.any():
            pixels = pixels[opaque.reshape(-1)]
    mean = _channel_mean(pixels).mean()
    rgb -= mean
    rgb *= c
    rgb += mean
    gray = np.repeat((rgb @ _GRAY)[..., None], 3, axis=-1)
    rgb -= gray
    rgb *= s
    rgb += gray
    rgb += 0.5
    np.clip(rgb, 0, 255, out=rgb)
    if image.mode != "RGBA":
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    out = arr.copy()
    out[..., :3] = rgb
    return Image.fromarray(out, "RGBA")


def _resized(src: Image.Image, size: tuple[int, int], gap: float | None) -> Image.Image:
    """`src` resized (bilinear) to `size`, from the least-recently-used copies: the same source, size and reducing gap
    always give the same pixels, and scenes draw each stamp at a few dozen sizes only."""
    key = (id(src), size, gap)
    entry = _SCALED.get(key)
    if entry is not None and entry[0] is src:  # not another image that the id of a freed one came back on
        return entry[1]
    im = src.resize(size, Image.Resampling.BILINEAR, reducing_gap=gap)
    _SCALED.put(key, (src, im))
    return im


_SCALED = LRU(weigh=lambda entry: nbytes(entry[1]), budget=SCALED_CACHE_BYTES)  # (source, resized) per key


def _transform_object(
    src: Image.Image, longest: float, rng: np.random.Generator, mirror_ok: bool
) -> tuple[Image.Image, dict[str, Any]]:
    """Scale (longest side), jitter, mirror and rotate an RGBA object; always draws the same random numbers."""
    flip = rng.random() < 0.5
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    b, c, s = (float(v) for v in rng.uniform(JITTER[0], JITTER[1], size=3))
    scale = longest / max(src.size)
    size = (max(1, round(src.width * scale)), max(1, round(src.height * scale)))
    im = _resized(src, size, 2.0 if scale < 0.5 else None)
    im = _jitter(im, b, c, s)
    flip = flip and mirror_ok
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    return im, {"longest": size[0] if size[0] >= size[1] else size[1], "flip": flip, "angle": round(angle, 3),
                "jitter": [round(b, 3), round(c, 3), round(s, 3)]}


def _placed_mask(alpha: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """A size x size bool mask with `alpha > 127` pasted at (x, y), clipped to the canvas."""
    out = np.zeros((size, size), bool)
    h, w = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = alpha[y0 - y:y1 - y, x0 - x:x1 - x] > 127
    return out


def _background_crop(bg: Image.Image, size: int, rng: np.random.Generator) -> tuple[Image.Image, list[float]]:
    """Random-resized crop (25-100% of the short side, aspect 3:4..4:3) of `bg`, resized to size x size, mirrored
    at random, with brightness / contrast / saturation jitter."""
    W, H = bg.size
    side = min(W, H) * rng.uniform(*BG_CROP_SCALE)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(W, side * math.sqrt(ratio))
    h = min(H, side / math.sqrt(ratio))
    x = rng.uniform(0, W - w)
    y = rng.uniform(0, H - h)
    flip = rng.random() < 0.5
    b, c, s = (float(v) for v in rng.uniform(BG_JITTER[0], BG_JITTER[1], size=3))
    box = (x, y, x + w, y + h)
    im = bg.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0 if w > 3 * size else None)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _jitter(im, b, c, s), [round(v, 2) for v in box]


def scene_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator behind scene (split, index, seed): independent of any global state."""
    check_split(split)
    if index < 0:
        raise IndexError(f"scene index must be >= 0, got {index}")
    return np.random.default_rng([int(seed) % (1 << 64), SPLIT_IDS[split], int(index)])


def _place_object(
    variants: list[Image.Image],
    scale: tuple[float, float],
    overflow: float,
    mirror_ok: bool,
    size: int,
    rng: np.random.Generator,
) -> tuple[int, Image.Image, dict[str, Any], tuple[int, int], np.ndarray]:
    """Pick a variant, transform it to `scale` x size (longest side) and place it, up to `overflow` of it off the
    canvas; returns (variant, image, transform info, (x, y), mask). Draws its random numbers in a fixed order."""
    variant = int(rng.integers(len(variants)))
    longest = rng.uniform(*scale) * size
    image, info = _transform_object(variants[variant], longest, rng, mirror_ok)
    w, h = image.size
    x = int(round(rng.uniform(-overflow * w, size - (1 - overflow) * w)))
    y = int(round(rng.uniform(-overflow * h, size - (1 - overflow) * h)))
    return variant, image, info, (x, y), _placed_mask(np.asarray(image.getchannel("A")), x, y, size)


def compose_scene(
    pack: AssetPack,
    split: str,
    index: int,
    size: int,
    seed: int = 0,
    target_scale: tuple[float, float] = TARGET_SCALE,
) -> Scene:
    """Compose scene `index` of `split` at size x size pixels; identical for the same (split, index, seed).
    `target_scale` (the target's longest side as a fraction of `size`) lets training draw other object sizes."""
    if size < 16:
        raise CbamVizError(f"scene size must be at least 16 px, got {size}")
    rng = scene_rng(split, index, seed)
    n_classes = pack.n_classes
    label = int(rng.integers(n_classes))
    if split != "train":
        label = int(index % n_classes)
    backgrounds = pack.backgrounds[split]
    bg_i = int(rng.integers(len(backgrounds)))
    canvas, crop_box = _background_crop(pack.background_image(split, bg_i), size, rng)

    mirror_ok = bool(pack.manifest["classes"][label].get("mirror", True))
    variant, target, t_info, (tx, ty), t_mask = _place_object(
        pack.object_images(label), target_scale, TARGET_OVERFLOW, mirror_ok, size, rng
    )

    # distractors
    n_dist = int(rng.integers(0, 3))
    dists = []
    for _ in range(n_dist):
        d_i = int(rng.integers(len(pack.distractor_names)))
        d_mirror = bool(pack.manifest["distractors"][d_i].get("mirror", True))
        _, d_img, _, d_xy, d_mask = _place_object(
            pack.distractor_images(d_i), DISTRACTOR_SCALE, DISTRACTOR_OVERFLOW, d_mirror, size, rng
        )
        front = bool(rng.random() < 0.5)
        dists.append({"id": d_i, "img": d_img, "xy": d_xy, "front": front, "mask": d_mask})

    # a front distractor must leave >= 70% of the target visible, else it goes behind
    full = int(t_mask.sum())
    visible = t_mask.copy()
    for d in dists:
        if d["front"]:
            after = visible & ~d["mask"]
            if full and after.sum() < MIN_TARGET_VISIBLE * full:
                d["front"] = False
            else:
                visible = after
    layers = [(k + 2, d) for k, d in enumerate(dists) if not d["front"]]
    layers.append((1, {"img": target, "xy": (tx, ty), "mask": t_mask}))
    layers += [(k + 2, d) for k, d in enumerate(dists) if d["front"]]
    labels = np.zeros((size, size), np.uint8)
    for code, layer in layers:
        canvas.paste(layer["img"], layer["xy"], layer["img"])
        labels[layer["mask"]] = code
    mask = labels == 1
    ys, xs = np.nonzero(mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else None
    info = {
        "split": split, "index": int(index), "seed": int(seed), "background": backgrounds[bg_i], "crop": crop_box,
        "target": {**t_info, "variant": variant, "xy": [tx, ty], "visible_px": int(mask.sum()), "full_px": full},
        "distractors": [{"id": d["id"], "name": pack.distractor_names[d["id"]], "front": d["front"]} for d in dists],
    }
    return Scene(canvas, mask, label, [labels == k + 2 for k in range(len(dists))], bbox, info)


UNKNOWN_STREAM = 7  # keeps the random numbers of unknown-subject scenes apart from those of the split's scenes


def compose_unknown_scene(pack: AssetPack, split: str, index: int, size: int, seed: int = 0) -> Image.Image:
    """A scene composed like `split`'s but showing none of the classes: a held-out (distractor) subject where the
    target would stand, at the target's size, and 0-2 more distractors; identical for the same arguments."""
    check_split(split)
    rng = np.random.default_rng([int(seed) % (1 << 64), SPLIT_IDS[split], int(index), UNKNOWN_STREAM])
    backgrounds = pack.backgrounds[split]
    canvas, _ = _background_crop(pack.background_image(split, int(rng.integers(len(backgrounds)))), size, rng)
    for j in range(1 + int(rng.integers(0, 3))):
        d_i = int(rng.integers(len(pack.distractor_names)))
        mirror_ok = bool(pack.manifest["distractors"][d_i].get("mirror", True))
        scale, overflow = (TARGET_SCALE, TARGET_OVERFLOW) if j == 0 else (DISTRACTOR_SCALE, DISTRACTOR_OVERFLOW)
        _, image, _, xy, _ = _place_object(pack.distractor_images(d_i), scale, overflow, mirror_ok, size, rng)
        canvas.paste(image, xy, image)
    return canvas


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 CHW tensor."""
    arr = np.asarray(image.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class SceneDataset(Dataset):
    """`length` scenes of `split` composed on the fly; item i is (transform(image) or uint8 CHW tensor, label).

    Pickles cheaply: the pack's decoded-image cache is dropped, so each DataLoader worker decodes what it uses once.
    """

    def __init__(
        self,
        pack: AssetPack | str | Path,
        split: str,
        size: int,
        length: int,
        seed: int = 0,
        transform=None,
        target_scale: tuple[float, float] = TARGET_SCALE,
    ):
        check_split(split)
        self.pack = pack if isinstance(pack, AssetPack) else AssetPack.load(pack)
        self.split = split
        self.size = int(size)
        self.length = int(length)
        self.seed = int(seed)
        self.transform = transform
        self.target_scale = (float(target_scale[0]), float(target_scale[1]))

    @property
    def class_names(self) -> list[str]:
        return self.pack.class_names

    @property
    def pack_hash(self) -> str:
        return self.pack.pack_hash

    def __len__(self) -> int:
        return self.length

    def scene(self, i: int) -> Scene:
        return compose_scene(self.pack, self.split, i, self.size, self.seed, self.target_scale)

    def __getitem__(self, i: int):
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"scene {i} out of range for {self.length} scenes")
        scene = self.scene(i)
        image = self.transform(scene.image) if self.transform is not None else image_to_tensor(scene.image)
        return image, scene.label
