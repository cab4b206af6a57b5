"""What training reads: the data source, the step-indexed batch order shared by all ranks, the loader workers."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from cbam_viz import dataset as ds
from cbam_viz.train.config import TrainError


@dataclass
class DataSource:
    """What training needs from a stamp-scenes folder (tests may pass their own)."""

    class_names: list[str]
    info: dict  # recorded as the checkpoints' `dataset` metadata (pack hash, version...)
    # (size, length, seed, target_scale) -> items (uint8 CHW tensor, label)
    train_dataset: Callable[[int, int, int, tuple[float, float]], Dataset]
    val_split: Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]  # (size, rank, world) -> uint8 NCHW, labels


def open_data(root: str | Path) -> DataSource:
    """The asset pack (training scenes) and fixed validation split of a folder written by `data build --out`."""
    root = Path(root)
    pack_dir = root / "pack"
    if not pack_dir.is_dir() or not (root / "val").is_dir():
        raise TrainError(
            f"{root} is not a stamp-scenes folder (it needs pack/ and val/): build it first with "
            f"`python -m cbam_viz data build --out {root}`"
        )
    pack = ds.AssetPack.load(pack_dir)
    val = ds.MaterializedSplit(root, "val")
    if val.pack_hash != pack.pack_hash or list(val.class_names) != list(pack.class_names):
        raise TrainError(f"{root / 'val'} was built from another asset pack than {pack_dir}: rebuild the splits")
    if len(val) == 0:
        raise TrainError(f"{root / 'val'} holds no scenes")

    def train_dataset(size: int, length: int, seed: int, target_scale: tuple[float, float]) -> Dataset:
        return ds.SceneDataset(pack, "train", size=size, length=length, seed=seed, target_scale=target_scale)

    def val_split(size: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
        return scenes_to_tensors((val[i] for i in range(rank, len(val), world)), size)

    info = {
        "name": "stamp scenes",
        "pack_hash": pack.pack_hash,
        "version": pack.version,
        "root": str(root),
        "val_images": len(val),
    }
    return DataSource(list(pack.class_names), info, train_dataset, val_split)


def scenes_to_tensors(scenes, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes (`.image` PIL, `.label`) resized to size x size -> (uint8 N x 3 x size x size, int64 labels)."""
    import numpy as np
    from PIL import Image

    images, labels = [], []
    for scene in scenes:
        image = scene.image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        labels.append(int(scene.label))
    if not images:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class StepBatches:
    """Batch sampler: for steps [start, steps), this rank's slice of the global indices [s*B, (s+1)*B)."""

    def __init__(self, start: int, steps: int, global_batch: int, rank: int, world: int) -> None:
        self.start, self.steps, self.global_batch, self.rank, self.world = start, steps, global_batch, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield rank_indices(step, self.global_batch, self.rank, self.world)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def rank_indices(step: int, global_batch: int, rank: int, world: int) -> list[int]:
    """Scene indices of `rank` at `step`: the rank-th contiguous share of [step*B, (step+1)*B)."""
    local = global_batch // world
    first = step * global_batch + rank * local
    return list(range(first, first + local))


def worker_init(_: int) -> None:
    torch.set_num_threads(1)
    # Ctrl-C / SIGTERM go to the trainer, which stops at a step boundary and then shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
