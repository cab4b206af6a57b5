"""What `train --data DIR` reads: one function recognises DIR's layout and opens it as a `DataSource`.

Accepted layouts: a stamp-scenes folder written by `data build` (pack/ and val/), or a photo folder
(`cbam_viz.data.imagefolder`: train/ and val/ as ImageFolder, val/ also as ImageNet's flat validation folder).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cbam_viz.data import imagefolder as photos
from cbam_viz.data.pack import AssetPack
from cbam_viz.data.scenes import SceneDataset
from cbam_viz.data.splits import MaterializedSplit
from cbam_viz.data.transforms import AUGMENTS, augmentation_text
from cbam_viz.errors import CbamVizError

SCENE_AUGMENTATION = "none besides the scene generator (every training scene is a fresh composite)"


class DataError(CbamVizError):
    """A --data folder that cannot be trained on: unknown layout, mismatched splits, no readable images."""


@dataclass
class DataSource:
    """What training needs from a data folder (tests may pass their own)."""

    class_names: list[str]
    info: dict  # recorded as the checkpoints' `dataset` metadata (pack hash or file-list hash, counts...)
    # (size, length, seed, target_scale) -> items (uint8 CHW tensor, label[, note]); item i is the stream's i-th
    # image; a note names an unreadable file the item replaced ("" for none)
    train_dataset: Callable[[int, int, int, tuple[float, float]], Dataset]
    # (size, rank, world) -> this rank's share of the validation items (uint8 CHW tensor, label, note); an
    # unreadable image has label imagefolder.UNREADABLE and a note naming it
    val_split: Callable[[int, int, int], Dataset]
    augmentation: str = SCENE_AUGMENTATION  # what the recipe says about training-time augmentation


def open_data(root: str | Path, augment: str = "none") -> DataSource:
    """The training stream and fixed validation split of `root`, whichever accepted layout it has."""
    root = Path(root)
    if augment not in AUGMENTS:
        raise DataError(f"--augment {augment!r}: use one of {', '.join(AUGMENTS)}")
    if (root / "pack").is_dir() and (root / "val").is_dir():
        if augment != "none":
            raise DataError(f"--augment {augment} is for photo folders; {root} holds stamp scenes")
        return open_scenes(root)
    if photos.is_photo_root(root):
        return open_photos(root, augment)
    raise DataError(f"{root} is not a data folder this tool reads. {describe_folder(root)} Accepted layouts:\n"
                    + LAYOUTS)


LAYOUTS = (
    "  * stamp scenes: the folder `python -m cbam_viz data build --out DIR` writes (DIR/pack/ and DIR/val/);\n"
    "  * ImageFolder: DIR/train/ and DIR/val/, each with one sub-folder of images per class (the same class "
    "folders in both);\n"
    "  * ImageNet: DIR/train/ as ImageFolder and DIR/val/ holding the validation images themselves, labelled by "
    f"{photos.SOLUTION_CSV} in DIR/val/ or DIR.\n"
    f"  Optional: {' or '.join(photos.MAPPING_FILES)} in DIR gives readable class names."
)


def describe_folder(root: Path, limit: int = 8) -> str:
    """What `root` holds, in one sentence, for error messages."""
    if not root.exists():
        return "It does not exist."
    if not root.is_dir():
        return "It is a file, not a folder."
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    if not entries:
        return "It is empty."
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:limit])
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"It holds {shown}{more}."


def open_scenes(root: Path) -> DataSource:
    """The asset pack (training scenes) and fixed validation split of a folder written by `data build --out`."""
    pack_dir = root / "pack"
    pack = AssetPack.load(pack_dir)
    val = MaterializedSplit(root, "val")
    if val.pack_hash != pack.pack_hash or list(val.class_names) != list(pack.class_names):
        raise DataError(f"{root / 'val'} was built from another asset pack than {pack_dir}: rebuild the splits")
    if len(val) == 0:
        raise DataError(f"{root / 'val'} holds no scenes")

    def train_dataset(size: int, length: int, seed: int, target_scale: tuple[float, float]) -> Dataset:
        return SceneDataset(pack, "train", size=size, length=length, seed=seed, target_scale=target_scale)

    def val_split(size: int, rank: int, world: int) -> Dataset:
        return SceneItems(val, size, range(rank, len(val), world))

    info = {
        "name": "stamp scenes",
        "pack_hash": pack.pack_hash,
        "version": pack.version,
        "root": str(root),
        "val_images": len(val),
    }
    return DataSource(list(pack.class_names), info, train_dataset, val_split)


def scene_tensor(scene, size: int) -> torch.Tensor:
    """A scene's image (`.image` PIL) resized to size x size -> uint8 3 x size x size."""
    image = scene.image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def scenes_to_tensors(scenes: Iterable, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes (`.image` PIL, `.label`) resized to size x size -> (uint8 N x 3 x size x size, int64 labels)."""
    images, labels = [], []
    for scene in scenes:
        images.append(scene_tensor(scene, size))
        labels.append(int(scene.label))
    if not images:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class SceneItems(Dataset):
    """Validation items (uint8 3 x size x size, label, "") of the scenes `indices` of a materialised split."""

    def __init__(self, split: MaterializedSplit, size: int, indices: Iterable[int]) -> None:
        self.split, self.size, self.indices = split, int(size), list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        scene = self.split[self.indices[i]]
        return scene_tensor(scene, self.size), int(scene.label), ""


def open_photos(root: Path, augment: str = "none") -> DataSource:
    """A photo folder's train/ split (random-resized crops, flips, optional `augment`) and val/ split (centre
    crops); every class must have a readable training image."""
    train = photos.open_split(root, "train")
    val = photos.open_split(root, "val", train.classes)
    photos.check_classes(train)

    def train_dataset(size: int, length: int, seed: int, target_scale: tuple[float, float]) -> Dataset:
        return photos.PhotoTrainStream(train, size, length, seed, augment)

    def val_split(size: int, rank: int, world: int) -> Dataset:
        return photos.PhotoDataset(val, size, "center", range(rank, len(val), world))

    info = {
        "name": "ImageNet-1k" if photos.is_imagenet(train.classes) else "image folder",
        "root": str(root),
        "layout": {"train": train.layout, "val": val.layout},
        "classes": len(train.classes),
        "train_images": len(train),
        "val_images": len(val),
        "val_preprocess": "center",
        "files_hash": files_hash(train, val),
    }
    if train.class_names != train.classes:  # readable names: keep the ids (synsets) that label files
        info["class_ids"] = list(train.classes)
    return DataSource(list(train.class_names), info, train_dataset, val_split, augmentation_text(augment))


def files_hash(*splits: photos.PhotoSplit) -> str:
    """sha256 of the splits' class ids and (relative path, label) lists: a resumed run must see the same files."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(json.dumps([split.name, split.classes], ensure_ascii=False).encode())
        for sample in split.samples:
            digest.update(f"\n{sample.rel}\t{sample.label}".encode())
    return digest.hexdigest()
