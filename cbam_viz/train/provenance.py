"""What a trained checkpoint records about how it was made: the recipe at an evaluation, and the checkpoint a run
started from (`--init`)."""

from __future__ import annotations

import math
import platform
from pathlib import Path

import torch

from cbam_viz.io.checkpoints import CheckpointError, LoadedModel, load_checkpoint
from cbam_viz.train.config import BASE_LR, LR_REFERENCE_BATCH, MOMENTUM, Config, TrainError


def recipe(cfg: Config, info: dict, augmentation: str, device: torch.device, world: int, row: dict) -> dict:
    """The `recipe` metadata at the evaluation `row` of a run with settings `cfg`, started from `info` (the init
    summary, empty for random weights), on `world` processes."""
    return {
        "arch": cfg.arch,
        "optimizer": "SGD",
        "nesterov": True,
        "momentum": MOMENTUM,
        "lr": cfg.lr,
        "lr_rule": (
            f"{BASE_LR} x batch/{LR_REFERENCE_BATCH}"
            if math.isclose(cfg.lr, BASE_LR * cfg.batch_size / LR_REFERENCE_BATCH)
            else "set with --lr"
        ),
        "schedule": "linear warmup, then cosine to 0 (per step)",
        "warmup": cfg.warmup,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "weight_decay_on": "conv and linear weights (not BN, not biases)",
        "label_smoothing": cfg.label_smoothing,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "planned_images": cfg.total_images,
        "images_seen": row["images"],
        "images_total": info.get("images_total", 0) + row["images"],
        "step": row["step"],
        "size": cfg.size,
        "seed": cfg.seed,
        "init": info or "random (torchvision init)",
        # How the chain's random init was done (checkpoints from before the option all used zero init).
        "zero_init_residual": info.get("zero_init_residual", True) if info else cfg.zero_init_residual,
        "augmentation": augmentation,
        "augment": cfg.augment,
        "target_scale": list(cfg.target_scale),
        "precision": cfg.precision,
        "channels_last": True,
        "compiled": cfg.compile,
        "device": _device_name(device),
        "world_size": world,
        "workers": cfg.workers,
        "wall_time_s": round(row["elapsed_s"], 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def load_init(path: Path, arch: str | None) -> LoadedModel:
    """The checkpoint named by --init, as a TrainError when it cannot serve."""
    try:
        return load_checkpoint(path, "cpu", arch)
    except CheckpointError as err:
        raise TrainError(f"--init: {err}") from None


def init_summary(init: LoadedModel) -> dict:
    """What the recipe records about the checkpoint a run started from (primitives only: it goes into last.pt)."""
    recipe = init.meta.recipe
    before = int(recipe.get("images_total") or recipe.get("images_seen") or 0)
    summary = {"checkpoint": Path(init.meta.source).name, "images_total": before}
    for key in ("lr", "steps", "batch_size", "size", "wall_time_s", "zero_init_residual"):
        if key in recipe:
            summary[key] = recipe[key]
    if init.meta.dataset.get("pack_hash"):
        summary["pack_hash"] = str(init.meta.dataset["pack_hash"])
    return summary


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
