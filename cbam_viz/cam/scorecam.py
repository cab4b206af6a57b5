"""ScoreCAM with grad-cam's math, run so a caller can bound it: a deadline, a cancel event, progress, and batches of
masked copies sized to a memory budget.

ScoreCAM weighs each channel of the explained layer by the target's softmax score on the input masked by that
channel (upsampled to the input, normalised to [0, 1]): one forward pass per channel. grad-cam builds every masked
copy at once and keeps the hooked layer's activations of each masked pass; here each batch builds its own copies and
the recorder forgets what the masked passes left in it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import ScoreCAM

from cbam_viz.errors import CbamVizError

# The masked copies of the image in one batch, with the model's activations for them, stay within this many bytes.
MASKED_BATCH_BYTES = 256 * 2**20
# Floats a CBAM-ResNet forward keeps alive per input pixel of one image at its widest (stem and layer1), rounded up.
FORWARD_FLOATS_PER_PIXEL = 96
# Floats per input pixel of one masked copy: the channel upsampled, normalised, and times the 3-channel input.
MASK_FLOATS_PER_PIXEL = 5


class Stopped(CbamVizError):
    """A ScoreCAM run ended before its last channel: after `done` of `total` channel passes."""

    def __init__(self, message: str, done: int, total: int) -> None:
        super().__init__(message)
        self.done = done
        self.total = total


class Cancelled(Stopped):
    """The caller's cancel event stopped a ScoreCAM run."""


class OverTime(Stopped):
    """A ScoreCAM run reached its deadline."""


@dataclass(frozen=True)
class RunControl:
    """How a caller steers a ScoreCAM run: `progress(done, total)` after each batch of channel passes, `cancel` and
    `deadline` (a time.monotonic() value) checked before each batch. A run of several parts (one per model) shares
    one count: `done_before` channel passes of earlier parts, out of `total` (None: the part's own count)."""

    progress: Callable[[int, int], None] | None = None
    cancel: threading.Event | None = None
    deadline: float | None = None
    done_before: int = 0
    total: int | None = None

    def check(self, done: int, total: int) -> None:
        """Raise Cancelled or OverTime when the run must stop after `done` of this part's `total` channel passes."""
        done, total = self.done_before + done, self.total or total
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"ScoreCAM cancelled after {done} of {total} channels", done, total)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise OverTime(f"ScoreCAM stopped at its time limit after {done} of {total} channels", done, total)

    def report(self, done: int, total: int) -> None:
        """Tell the caller that `done` of this part's `total` channel passes have run."""
        if self.progress is not None:
            self.progress(self.done_before + done, self.total or total)


def masked_batch_size(height: int, width: int, channels: int) -> int:
    """Masked copies per forward batch: as many of `channels` as MASKED_BATCH_BYTES holds at this input size."""
    per_copy = 4 * height * width * (FORWARD_FLOATS_PER_PIXEL + MASK_FLOATS_PER_PIXEL)
    return max(1, min(channels, MASKED_BATCH_BYTES // per_copy))


class BoundedScoreCAM(ScoreCAM):
    """grad-cam's ScoreCAM, same weights, run in memory-bounded batches that a RunControl can stop and follow."""

    def __init__(
        self,
        model: torch.nn.Module,
        target_layers: list[torch.nn.Module],
        reshape_transform: Callable | None = None,
        control: RunControl | None = None,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform=reshape_transform)
        self.control = control or RunControl()
        self.done = 0  # channel passes run by this object's calls so far (a call per target slot)

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: torch.nn.Module,
        targets: list[Callable],
        activations: np.ndarray,
        grads: np.ndarray,
    ) -> np.ndarray:
        """Softmax over channels of the target's score on the input masked by each channel (grad-cam's weights)."""
        images, channels = activations.shape[:2]
        total = self.done + images * channels
        batch = masked_batch_size(*input_tensor.shape[-2:], channels)
        upsample = torch.nn.UpsamplingBilinear2d(size=input_tensor.shape[-2:])
        recorded = self.activations_and_grads.activations
        kept = len(recorded)
        scores: list[float] = []
        with torch.no_grad():
            for image, target, maps in zip(input_tensor, targets, torch.as_tensor(activations)):
                for start in range(0, channels, batch):
                    self.control.check(self.done, total)
                    masked = image[None] * self._masks(upsample, maps[start : start + batch])[:, None]
                    scores.extend(target(output).cpu().item() for output in self.model(masked))
                    del recorded[kept:]  # the masked passes' activations of the hooked layer: not needed
                    self.done += len(masked)
                    self.control.report(self.done, total)
        weights = torch.nn.Softmax(dim=-1)(torch.Tensor(scores).view(images, channels))
        return weights.numpy()

    def _masks(self, upsample: torch.nn.Module, maps: torch.Tensor) -> torch.Tensor:
        """(B, h, w) activation channels -> (B, H, W) masks: upsampled to the input, each normalised to [0, 1]."""
        upsampled = upsample(maps[None].to(self.device))[0]
        flat = upsampled.view(upsampled.size(0), -1)
        maxs, mins = flat.max(dim=-1)[0][:, None, None], flat.min(dim=-1)[0][:, None, None]
        return (upsampled - mins) / (maxs - mins + 1e-8)
