"""The optimiser side of the recipe: the learning-rate schedule and which parameters are decayed."""

from __future__ import annotations

import math

from torch import nn


def lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1 over `warmup_steps`, then cosine from 1 to 0 at `steps` (factor used *at* `step`)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay conv/linear weights only; BN parameters and biases (all 1-D tensors) are not decayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
