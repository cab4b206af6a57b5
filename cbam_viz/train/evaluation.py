"""Validation during training: the run's autocast, the input pipeline on the device and top-1/top-5 over all ranks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cbam_viz.data.imagefolder import UNREADABLE
from cbam_viz.train.distributed import all_reduce

VAL_BATCH = 64  # validation images per forward pass


def autocast(device: torch.device, precision: str):
    """The autocast context of a run's precision ("fp32" turns it off)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def prepare(images: torch.Tensor, device: torch.device, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> normalised float32, channels_last, on `device`."""
    x = images.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    precision: str,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> tuple[float, float, int, list[str]]:
    """Top-1 and top-5 accuracy (%) of the validation batches (images, labels, notes), summed over all ranks'
    shards, and this rank's notes of unreadable images (which are left out)."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    notes: list[str] = []
    for images, labels, batch_notes in batches:
        notes += [note for note in batch_notes if note]
        keep = labels != UNREADABLE
        if not keep.any():
            continue
        x = prepare(images[keep], device, mean, std)
        y = labels[keep].to(device)
        with autocast(device, precision):
            logits = model(x)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        seen += len(y)
    model.train(was_training)
    c1, c5, n = all_reduce([correct1, correct5, seen], device)
    n = int(n)
    return (100.0 * c1 / n if n else float("nan"), 100.0 * c5 / n if n else float("nan"), n, notes)
