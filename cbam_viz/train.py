"""`train`: train a ResNet (18/34/50/101) or its CBAM version on stamp scenes, from scratch or from a checkpoint,
resumably.

One recipe for both architectures (the defaults are the published recipe):

* SGD, Nesterov momentum 0.9, peak lr 0.1 x batch/32 (linear scaling), linear warmup over the first 5 % of steps,
  then cosine to 0; weight decay 5e-5 on conv/linear weights only (none on BN parameters or biases);
  label smoothing 0.1; `zero_init_residual=True` (`--no-zero-init-residual` starts each residual branch's last BN
  weight at 1, as the official CBAM code does); ImageNet mean/std.
* Data: every training scene is a fresh composite drawn deterministically from (seed, "train", index): that is the
  whole augmentation. Step `s` consumes the global indices [s*B, (s+1)*B) of the stream, B the global batch;
  with W processes rank r takes the r-th contiguous B/W slice of them, so the image stream does not depend on W.
* channels_last and bf16 autocast where the hardware has bf16 (CUDA; CPUs with AVX512-BF16/AMX), else fp16 +
  GradScaler (older GPUs) or fp32 (AVX2-only CPUs, where bf16 convolutions are many times slower than fp32).

Single process: `python -m cbam_viz train --arch resnet50 --data data/stamps --out runs/r50`.
Several processes / GPUs / nodes: `torchrun --nproc_per_node=N -m cbam_viz.train ...` (gloo on CPU, nccl on CUDA);
`--batch-size` stays the global batch. Only rank 0 writes. For multi-node runs RUN_DIR must be a shared folder.

RUN_DIR/last.pt (model, optimizer, scheduler, scaler, step, RNG state, metrics history; tensors and primitive
containers only, read back with `torch.load(weights_only=True)`) is written atomically every `--checkpoint-every`
seconds, after each evaluation, on SIGINT/SIGTERM and at the end; a rerun with the same RUN_DIR continues from it
exactly (same data order, same LR schedule). Options left out on a rerun take the values saved in last.pt.

`--init CHECKPOINT` starts a new run from a checkpoint's weights (same classes) instead of random ones: how
training continues when an earlier run folder is gone (a new warmup + cosine cycle, a warm
restart; give it a --seed the chain has not used, or the scene stream repeats the earlier cycle's scenes); the
recipe records where it started and `images_total` counts the images of the whole chain.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cbam_viz import dataset as ds
from cbam_viz.cbam import ARRANGEMENTS, CHANNEL_POOLS, KERNEL_SIZES, SPATIAL_POOLS, CBAMConfig
from cbam_viz.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointError,
    LoadedModel,
    ModelMeta,
    load_checkpoint,
    preview_names,
    save_checkpoint,
)
from cbam_viz.cli import standalone
from cbam_viz.errors import CbamVizError
from cbam_viz.fileio import atomic_path, atomic_write_bytes
from cbam_viz.models import ARCHS, DISPLAY_NAMES, build_model, parse_arch

# The published recipe.
DEFAULT_IMAGES = 120_000
DEFAULT_BATCH = 32
BASE_LR = 0.1  # peak learning rate per LR_REFERENCE_BATCH images, scaled linearly with the global batch
LR_REFERENCE_BATCH = 32
DEFAULT_WARMUP = 0.05
DEFAULT_WEIGHT_DECAY = 5e-5
MOMENTUM = 0.9
DEFAULT_LABEL_SMOOTHING = 0.1
DEFAULT_SIZE = {"cpu": 160, "cuda": 224}
DEFAULT_EVAL_EVERY = 10_000
DEFAULT_CHECKPOINT_EVERY = 180.0
MIN_SIZE = 32

CHECKPOINT_FORMAT = "cbam_viz.train"
CHECKPOINT_VERSION = 1
LAST = "last.pt"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
BEST = "best.safetensors"
FINAL = "final.safetensors"
METRIC_COLUMNS = (
    "images", "step", "lr", "train_loss", "train_acc", "val_top1", "val_top5", "img_per_s", "data_frac", "elapsed_s",
)  # fmt: skip
# Settings that define the trained model: a resumed run must keep them.
RECIPE_KEYS = (
    "arch", "steps", "batch_size", "lr", "warmup", "weight_decay", "label_smoothing", "size", "seed", "init",
    "zero_init_residual", "target_scale",
)  # fmt: skip


class TrainError(CbamVizError):
    """Bad training arguments, data or run folder."""


# --------------------------------------------------------------------------------------------- arguments / config


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _images(text: str) -> int:
    """An image count: 120000, 120k or 1.5M."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an image count like 120000 or 120k, got {text}") from None
    if value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive whole image count, got {text}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m cbam_viz train`. Options left out take the values of the run being resumed."""
    parser.description = (parser.description or "") + (
        " Reruns with the same --out continue the run from RUN_DIR/last.pt; options left out then keep the run's "
        "values."
    )
    parser.add_argument("--arch", choices=ARCHS, help="architecture (required for a new run)")
    cbam = parser.add_argument_group(
        "CBAM options (-cbam architectures; the defaults are the paper's final design, the others its ablations)"
    )
    cbam.add_argument("--reduction", type=_positive_int, help="channel MLP reduction ratio r (default: 16)")
    cbam.add_argument(
        "--channel-pool", choices=tuple(CHANNEL_POOLS), help="descriptors of the channel gate (default: avg+max)"
    )
    cbam.add_argument(
        "--spatial-pool", choices=SPATIAL_POOLS,
        help="spatial descriptor: mean and max over channels, or a learned 1x1 convolution (default: avg+max)",
    )  # fmt: skip
    cbam.add_argument(
        "--spatial-kernel", dest="kernel_size", type=int, choices=KERNEL_SIZES,
        help="the spatial gate's convolution size (default: 7)",
    )  # fmt: skip
    cbam.add_argument(
        "--arrangement", choices=ARRANGEMENTS,
        help="channel then spatial gate, spatial then channel, both in parallel, or the channel gate only "
        "(default: channel-spatial)",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, help="folder written by `data build --out` (default: data/stamps)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (metrics, curves, checkpoints)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, help="total optimizer steps")
    length.add_argument(
        "--images", type=_images,
        help=f"total training images, e.g. 40k, rounded up to whole batches (default: {DEFAULT_IMAGES:,})",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, help=f"global batch over all processes (default: {DEFAULT_BATCH})")
    parser.add_argument("--lr", type=float, help=f"peak lr (default: {BASE_LR} x batch/{LR_REFERENCE_BATCH})")
    parser.add_argument("--warmup", type=float, help=f"fraction of the steps warming up (default: {DEFAULT_WARMUP})")
    parser.add_argument(
        "--weight-decay", type=float, help=f"on conv/linear weights only (default: {DEFAULT_WEIGHT_DECAY})"
    )
    parser.add_argument("--label-smoothing", type=float, help=f"(default: {DEFAULT_LABEL_SMOOTHING})")
    parser.add_argument("--size", type=int, help="train/val image side in px (default: 160 on CPU, 224 on CUDA)")
    parser.add_argument("--seed", type=int, help="seed of the initial weights and of the scene stream (default: 0)")
    parser.add_argument(
        "--target-scale", type=float, nargs=2, metavar=("MIN", "MAX"),
        help="training scenes only: the target's longest side as a fraction of the image side, drawn uniformly "
        f"(default: {ds.TARGET_SCALE[0]} {ds.TARGET_SCALE[1]}, as in the val and test splits)",
    )  # fmt: skip
    parser.add_argument(
        "--init", type=Path, metavar="CHECKPOINT",
        help="start from this checkpoint's weights instead of random ones (same classes; its arch and CBAM "
        "options are the defaults): continues an earlier run's training, e.g. a new cosine cycle from the bundled "
        "weights; give it a new --seed, or its scene stream starts with the scenes the checkpoint was trained on",
    )  # fmt: skip
    parser.add_argument(
        "--zero-init-residual", action=argparse.BooleanOptionalAction,
        help="random init only: zero each residual branch's last BN weight (default: on); --no-zero-init-residual "
        "starts them at 1, as the official CBAM code does",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, help="data-loading processes per training process (default: 1 on CPU, 6 on CUDA)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    parser.add_argument(
        "--threads", type=_positive_int,
        help="CPU threads per training process (default: torch's, i.e. OMP_NUM_THREADS or all cores); use 1 "
        "for each of several runs sharing a CPU",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False,
        help="torch.compile the training forward/backward: fuses CBAM's elementwise work (benchmarks/train_step.py, "
        "2-core AMX CPU, bf16, 160 px: CBAM-ResNet50 1.5x, ResNet50 1.05x) after minutes of compiling (default: off)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
        help="autocast dtype; auto: bf16 on GPUs (fp16 + loss scaling without bf16) and on CPUs with bf16 "
        "instructions (AVX512-BF16/AMX), fp32 on other CPUs (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--eval-every", type=_images, help=f"validate every this many images (default: {DEFAULT_EVAL_EVERY:,})"
    )
    parser.add_argument(
        "--checkpoint-every", type=float, default=DEFAULT_CHECKPOINT_EVERY, metavar="SECONDS",
        help="save RUN_DIR/last.pt at least this often; 0: after every step (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True,
        help="continue from RUN_DIR/last.pt if present; --no-resume starts over, replacing the run (default: on)",
    )  # fmt: skip


@dataclass
class Config:
    """Fully resolved settings of one run."""

    arch: str
    data: str
    out: str
    steps: int
    batch_size: int
    lr: float
    warmup: float
    weight_decay: float
    label_smoothing: float
    size: int
    seed: int
    init: str  # checkpoint the weights start from ("" = random init)
    zero_init_residual: bool  # random init: each residual branch's last BN weight starts at 0 (else 1)
    target_scale: tuple[float, float]  # training scenes' target size range (fractions of the side)
    cbam: CBAMConfig | None  # the CBAM blocks' options (None for a plain ResNet)
    workers: int
    device: str  # "cpu" or "cuda"
    precision: str  # "bf16", "fp16" or "fp32"
    compile: bool
    eval_every: int
    checkpoint_every: float
    resume: bool

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup * self.steps)) if self.warmup > 0 else 0

    @property
    def total_images(self) -> int:
        return self.steps * self.batch_size


def resolve_config(
    args: argparse.Namespace,
    saved: dict | None,
    device: str,
    world_size: int,
    init_cbam: CBAMConfig | None = None,
) -> Config:
    """Explicit options > the resumed run's saved settings (or the --init checkpoint's CBAM options, `init_cbam`) >
    defaults; explicit recipe changes on resume are errors."""
    saved = saved or {}
    cbam_given = {f.name: getattr(args, f.name) for f in fields(CBAMConfig) if getattr(args, f.name, None) is not None}
    explicit = {
        "arch": args.arch,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
        "size": args.size,
        "seed": args.seed,
        "init": str(args.init) if getattr(args, "init", None) else None,
        "zero_init_residual": getattr(args, "zero_init_residual", None),
        "target_scale": tuple(args.target_scale) if getattr(args, "target_scale", None) else None,
    }
    batch = explicit["batch_size"]
    if batch is None:
        batch = saved["batch_size"] if saved else DEFAULT_BATCH
    if args.steps is not None:
        explicit["steps"] = args.steps
    elif args.images is not None:
        explicit["steps"] = math.ceil(args.images / batch) if batch > 0 else 0

    if saved:
        # Runs saved before --init / --zero-init-residual / --target-scale / the CBAM options existed started from
        # random zero-init-residual weights, drew their targets at the default sizes and had the paper's CBAM design.
        default_cbam = CBAMConfig().to_dict() if parse_arch(saved["arch"])[1] else None
        saved = {"init": "", "zero_init_residual": True, "target_scale": ds.TARGET_SCALE, "cbam": default_cbam, **saved}
        changed = [
            f"--{key.replace('_', '-')} {explicit[key]} (the run has {saved[key] if saved[key] != '' else 'none'})"
            for key in RECIPE_KEYS
            if explicit.get(key) is not None and explicit[key] != saved[key]
        ]
        changed += _cbam_changes(cbam_given, saved["cbam"], "the run")
        if changed:
            raise TrainError(
                f"{Path(args.out) / LAST} was trained with other settings: {'; '.join(changed)}. Leave these options "
                "out to continue it, or start a new run (another --out, or --no-resume to replace this one)"
            )
        values = {key: saved[key] for key in RECIPE_KEYS}
        values["cbam"] = CBAMConfig.from_dict(saved["cbam"]) if saved["cbam"] is not None else None
    else:
        if explicit["arch"] is None:
            raise TrainError(f"--arch (or --init) is required for a new run ({', '.join(ARCHS)})")
        values = {
            "arch": explicit["arch"],
            "batch_size": batch,
            "steps": explicit.get("steps") or (math.ceil(DEFAULT_IMAGES / batch) if batch > 0 else 0),
            "lr": explicit["lr"] if explicit["lr"] is not None else BASE_LR * batch / LR_REFERENCE_BATCH,
            "warmup": explicit["warmup"] if explicit["warmup"] is not None else DEFAULT_WARMUP,
            "weight_decay": explicit["weight_decay"] if explicit["weight_decay"] is not None else DEFAULT_WEIGHT_DECAY,
            "label_smoothing": (
                explicit["label_smoothing"] if explicit["label_smoothing"] is not None else DEFAULT_LABEL_SMOOTHING
            ),
            "size": explicit["size"] if explicit["size"] is not None else DEFAULT_SIZE[device],
            "seed": explicit["seed"] if explicit["seed"] is not None else 0,
            "init": explicit["init"] or "",
            "zero_init_residual": explicit["zero_init_residual"] is not False,
            "target_scale": explicit["target_scale"] or ds.TARGET_SCALE,
            "cbam": _new_cbam(explicit["arch"], cbam_given, init_cbam),
        }
        if explicit["init"] and explicit["zero_init_residual"] is not None:
            raise TrainError(
                "--zero-init-residual / --no-zero-init-residual choose the random init; --init starts from a "
                "checkpoint's weights: give one or the other"
            )
    data = args.data or (Path(saved["data"]) if saved.get("data") else Path("data/stamps"))
    eval_every = args.eval_every or saved.get("eval_every") or DEFAULT_EVAL_EVERY
    workers = args.workers if args.workers is not None else (1 if device == "cpu" else 6)
    precision = args.precision if args.precision != "auto" else auto_precision(device)
    cfg = Config(
        **values,
        data=str(data),
        out=str(args.out),
        workers=workers,
        device=device,
        precision=precision,
        compile=bool(getattr(args, "compile", False)),
        eval_every=eval_every,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
    )
    _validate(cfg, world_size)
    return cfg


def _cbam_changes(given: dict, have: dict | None, owner: str) -> list[str]:
    """The given CBAM options that differ from `have` (a CBAMConfig as a dict, None without CBAM), as messages."""
    flags = {"kernel_size": "spatial-kernel"}
    return [
        f"--{flags.get(key, key.replace('_', '-'))} {value} ({owner} has {have[key] if have else 'no CBAM blocks'})"
        for key, value in given.items()
        if have is None or value != have[key]
    ]


def _new_cbam(arch: str, given: dict, init_cbam: CBAMConfig | None) -> CBAMConfig | None:
    """A new run's CBAM options: the given ones over the --init checkpoint's (which they must not change) or the
    paper's; None for a plain ResNet, which refuses CBAM options."""
    if not parse_arch(arch)[1]:
        if given:
            raise TrainError(f"{_cbam_changes(given, None, arch)[0]}: CBAM options need a -cbam --arch")
        return None
    if init_cbam is not None:
        changed = _cbam_changes(given, init_cbam.to_dict(), "the --init checkpoint")
        if changed:
            raise TrainError(f"--init: {'; '.join(changed)}; leave these options out to keep its design")
        return init_cbam
    try:
        return replace(CBAMConfig(), **given)
    except ValueError as err:
        raise TrainError(str(err)) from None


def auto_precision(device: str) -> str:
    """bf16 where the hardware has it: CUDA GPUs with bf16 (else fp16 + loss scaling), and CPUs whose oneDNN has
    bf16 kernels (AVX512-BF16 / AMX). Elsewhere, e.g. AVX2-only CPUs, bf16 convolutions fall back to reference
    kernels many times slower than fp32, so CPUs without bf16 train in fp32."""
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):  # private probe gone in some future torch: be safe
        return "fp32"


def _validate(cfg: Config, world_size: int) -> None:
    problems = []
    if cfg.batch_size <= 0:
        problems.append(f"--batch-size must be positive (got {cfg.batch_size})")
    elif cfg.batch_size % world_size:
        problems.append(
            f"--batch-size {cfg.batch_size} (the global batch) must be a multiple of the {world_size} processes"
        )
    if cfg.steps <= 0:
        problems.append("--steps/--images must be positive")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        problems.append(f"--lr must be a positive number (got {cfg.lr})")
    if not 0 <= cfg.warmup < 1:
        problems.append(f"--warmup is a fraction of the steps in [0, 1) (got {cfg.warmup})")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        problems.append(f"--weight-decay must be >= 0 (got {cfg.weight_decay})")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append(f"--label-smoothing must be in [0, 1) (got {cfg.label_smoothing})")
    if not 0 < cfg.target_scale[0] <= cfg.target_scale[1] <= 1:
        problems.append(f"--target-scale needs 0 < MIN <= MAX <= 1 (got {cfg.target_scale[0]} {cfg.target_scale[1]})")
    if cfg.size < MIN_SIZE:
        problems.append(f"--size must be at least {MIN_SIZE} pixels (got {cfg.size})")
    if cfg.workers < 0:
        problems.append(f"--workers must be >= 0 (got {cfg.workers})")
    if cfg.checkpoint_every < 0 or not math.isfinite(cfg.checkpoint_every):
        problems.append(f"--checkpoint-every must be >= 0 seconds (got {cfg.checkpoint_every})")
    if cfg.precision == "fp16" and cfg.device != "cuda":
        problems.append("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    if problems:
        raise TrainError("; ".join(problems))


# --------------------------------------------------------------------------------------------- data


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


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    # Ctrl-C / SIGTERM go to the trainer, which stops at a step boundary and then shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# --------------------------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # whether we created the process group (and so destroy it)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_choice: str) -> tuple[Dist, torch.device]:
    """Join the process group of torchrun (env://), or use one the caller initialised; pick this rank's device."""
    from cbam_viz.devices import resolve_device

    device = resolve_device(device_choice)
    cuda = device.type == "cuda"
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = Dist(local_rank=local_rank)
    if dist.is_available() and dist.is_initialized():
        info.rank, info.world = dist.get_rank(), dist.get_world_size()
    elif world_env > 1:
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        info.rank, info.world, info.owned = dist.get_rank(), dist.get_world_size(), True
    if cuda:
        torch.cuda.set_device(device)
    return info, device


def _all_reduce(values: list[float], device: torch.device, op=None) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor.tolist()


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    return bool(_all_reduce([float(flag)], device, dist.ReduceOp.MAX if dist.is_available() else None)[0])


# --------------------------------------------------------------------------------------------- model / optimisation


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


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _prepare(images: torch.Tensor, device: torch.device, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> normalised float32, channels_last, on `device`."""
    x = images.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: Config,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch: int = 64,
) -> tuple[float, float, int]:
    """Top-1 and top-5 accuracy (%) of the validation scenes, summed over all ranks' shards."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    for i in range(0, len(images), batch):
        x = _prepare(images[i : i + batch], device, mean, std)
        y = labels[i : i + batch].to(device)
        with _autocast(device, cfg.precision):
            logits = model(x)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
    model.train(was_training)
    c1, c5, n = _all_reduce([correct1, correct5, len(images)], device)
    n = int(n)
    return (100.0 * c1 / n if n else float("nan"), 100.0 * c5 / n if n else float("nan"), n)


# --------------------------------------------------------------------------------------------- run files


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """Rewrite RUN_DIR/metrics.csv from the metrics history (atomically)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_curves(path: Path, history: list[dict], title: str) -> None:
    """Loss and accuracy vs training images, as a PNG (matplotlib without pyplot: no global state)."""
    from matplotlib.figure import Figure

    images = [row["images"] for row in history]
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(images, [row["train_loss"] for row in history], marker=".", label="train loss (label-smoothed)")
    ax_loss.set_xlabel("training images")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.plot(images, [row["train_acc"] for row in history], marker=".", label="train-batch top-1")
    ax_acc.plot(images, [row["val_top1"] for row in history], marker=".", label="val top-1")
    ax_acc.plot(images, [row["val_top5"] for row in history], marker=".", label="val top-5")
    ax_acc.set_xlabel("training images")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def load_last(path: Path) -> dict:
    """Read RUN_DIR/last.pt with weights_only=True (no pickled code runs) and check its format."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged or foreign file
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise TrainError(f"{path} cannot be read ({reason}): delete it or use --no-resume") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a training checkpoint of this tool: delete it or use --no-resume")
    if state.get("version") != CHECKPOINT_VERSION:
        raise TrainError(f"{path} has checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state


# --------------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What `train` leaves behind (the model is the trained module itself, without a DDP wrapper)."""

    model: nn.Module
    config: Config
    step: int
    completed: bool
    history: list[dict] = field(default_factory=list)


class _StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks at step boundaries; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    """CLI entry point: train, returning 0 when the run is complete and 130 when it was stopped by a signal."""
    result = train(args)
    return 0 if result.completed else 130


def train(args: argparse.Namespace, data: DataSource | None = None, stop_after: int | None = None) -> TrainResult:
    """Train (or continue) the run in `args.out`. `data` replaces the folder in `args.data` (tests);
    `stop_after` stops once this many steps were done in this call, as if stopped by a signal (tests)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    ctx, device = setup_distributed(args.device)
    try:
        return _train(args, data, stop_after, ctx, device)
    finally:
        if ctx.owned and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    args: argparse.Namespace, data: DataSource | None, stop_after: int | None, ctx: Dist, device: torch.device
) -> TrainResult:
    out = Path(args.out)
    last_path = out / LAST
    saved = load_last(last_path) if args.resume and last_path.is_file() else None
    init = None
    if saved is None and getattr(args, "init", None):
        init = _load_init(Path(args.init), args.arch)
        args = argparse.Namespace(**{**vars(args), "arch": args.arch or init.meta.arch})
    cfg = resolve_config(
        args, saved["config"] if saved else None, device.type, ctx.world, init.meta.cbam if init is not None else None
    )
    if data is None:
        data = open_data(cfg.data)
    if init is not None and init.meta.class_names != list(data.class_names):
        raise TrainError(
            f"--init {Path(cfg.init).name} was trained on {init.meta.num_classes} classes "
            f"({preview_names(init.meta.class_names)}), but {cfg.data} has {len(data.class_names)} "
            f"({preview_names(data.class_names)}): --init needs the same classes in the same order"
        )
    if saved and saved.get("dataset", {}).get("pack_hash") != data.info.get("pack_hash"):
        raise TrainError(
            f"{last_path} was trained on pack {saved.get('dataset', {}).get('pack_hash')}, but {cfg.data} holds pack "
            f"{data.info.get('pack_hash')}: point --data at the original data or start a new run"
        )
    if ctx.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrainError(f"cannot create the run folder {out}: {err}") from None
        if not saved:  # a fresh run replaces any earlier one in this folder
            for name in (LAST, METRICS_CSV, CURVES_PNG, BEST, FINAL):
                (out / name).unlink(missing_ok=True)

    # Model, optimiser, schedule.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, len(data.class_names), zero_init_residual=cfg.zero_init_residual, cbam=cfg.cbam)
    init_info = saved.get("init", {}) if saved else {}
    if init is not None:
        model.load_state_dict(init.model.state_dict())
        init_info = _init_summary(init)
        del init
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=MOMENTUM, nesterov=True
    )
    steps, warmup_steps = cfg.steps, cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup_steps))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    step, elapsed, history = 0, 0.0, []
    acc = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "steps": 0.0, "data_s": 0.0, "train_s": 0.0}
    best = {"val_top1": -1.0}
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        if device.type == "cuda" and saved["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"][: torch.cuda.device_count()])
        step, elapsed, history = saved["step"], saved["elapsed"], list(saved["history"])
        acc.update(saved["interval"])
        best.update(saved["best"])
        del saved
    net = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # validation and checkpoints use `model` itself (eager)
        net = torch.compile(net)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    val_images, val_labels = data.val_split(cfg.size, ctx.rank, ctx.world)

    def snapshot() -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": asdict(cfg),
            "dataset": dict(data.info),
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            },
            "history": history,
            "init": init_info,
            "interval": dict(acc),
            "best": dict(best),
            "elapsed": elapsed + (time.monotonic() - session_start),
        }

    running = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct (flushed into `acc`)

    def flush() -> None:
        """Move the on-device loss/accuracy sums into `acc` (one sync) and stop on a non-finite loss."""
        loss_sum, correct = running.tolist()
        running.zero_()
        if not math.isfinite(loss_sum):
            raise TrainError(f"the loss became {loss_sum} by step {step}: lower --lr or use --precision fp32")
        acc["loss"] += loss_sum
        acc["correct"] += correct

    def save_last() -> None:
        flush()
        if ctx.main:
            with atomic_path(last_path) as tmp:
                torch.save(snapshot(), tmp)

    def meta(row: dict) -> ModelMeta:
        recipe = {
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
            "warmup_steps": warmup_steps,
            "weight_decay": cfg.weight_decay,
            "weight_decay_on": "conv and linear weights (not BN, not biases)",
            "label_smoothing": cfg.label_smoothing,
            "batch_size": cfg.batch_size,
            "steps": cfg.steps,
            "planned_images": cfg.total_images,
            "images_seen": row["images"],
            "images_total": init_info.get("images_total", 0) + row["images"],
            "step": row["step"],
            "size": cfg.size,
            "seed": cfg.seed,
            "init": init_info or "random (torchvision init)",
            # How the chain's random init was done (checkpoints from before the option all used zero init).
            "zero_init_residual": init_info.get("zero_init_residual", True) if init_info else cfg.zero_init_residual,
            "augmentation": "none besides the scene generator (every training scene is a fresh composite)",
            "target_scale": list(cfg.target_scale),
            "precision": cfg.precision,
            "channels_last": True,
            "compiled": cfg.compile,
            "device": _device_name(device),
            "world_size": ctx.world,
            "workers": cfg.workers,
            "wall_time_s": round(row["elapsed_s"], 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        metrics = {
            "val_top1": row["val_top1"],
            "val_top5": row["val_top5"],
            "val_images": row["val_images"],
            "train_loss": row["train_loss"],
            "train_acc": row["train_acc"],
        }
        return ModelMeta(
            arch=cfg.arch,
            class_names=list(data.class_names),
            input_size=cfg.size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            recipe=recipe,
            metrics=metrics,
            dataset=dict(data.info),
            cbam=cfg.cbam,
        )

    def eval_and_log(lr: float) -> dict:
        flush()
        if ctx.enabled:  # each rank updated its BN running stats on its own batch last: use rank 0's everywhere
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        top1, top5, n_val = evaluate(model, val_images, val_labels, cfg, device, mean, std)
        loss_sum, correct, seen, n_steps = _all_reduce([acc["loss"], acc["correct"], acc["seen"], acc["steps"]], device)
        row = {
            "images": step * cfg.batch_size,
            "step": step,
            "lr": lr,
            "train_loss": loss_sum / n_steps if n_steps else float("nan"),
            "train_acc": 100.0 * correct / seen if seen else float("nan"),
            "val_top1": top1,
            "val_top5": top5,
            "val_images": n_val,
            "img_per_s": acc["steps"] * cfg.batch_size / acc["train_s"] if acc["train_s"] else float("nan"),
            "data_frac": acc["data_s"] / acc["train_s"] if acc["train_s"] else float("nan"),
            "elapsed_s": elapsed + (time.monotonic() - session_start),
        }
        history.append(row)
        acc.update(loss=0.0, correct=0.0, seen=0.0, steps=0.0, data_s=0.0, train_s=0.0)
        if ctx.main:
            if top1 > best["val_top1"]:
                best.update(val_top1=top1, images=row["images"])
                save_checkpoint(out / BEST, model, meta(row), dtype=torch.float16)
            write_metrics_csv(out / METRICS_CSV, history)
            write_curves(out / CURVES_PNG, history, f"{DISPLAY_NAMES[cfg.arch]} on stamp scenes, {cfg.size} px")
            bar.write(
                f"[{row['images']:,} images] loss {row['train_loss']:.3f}  train-batch {row['train_acc']:.1f}%  "
                f"val top-1 {top1:.1f}%  top-5 {top5:.1f}%  {row['img_per_s']:.1f} img/s  "
                f"data {100 * row['data_frac']:.0f}%"
            )
        return row

    # Training loop.
    completed = step >= cfg.steps
    loader = DataLoader(
        data.train_dataset(cfg.size, cfg.total_images, cfg.seed, cfg.target_scale),
        batch_sampler=StepBatches(step, cfg.steps, cfg.batch_size, ctx.rank, ctx.world),
        num_workers=0 if completed else cfg.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if cfg.workers and not completed else None,
        prefetch_factor=4 if cfg.workers and not completed else None,
        persistent_workers=False,
    )
    from tqdm import tqdm

    bar = tqdm(
        total=cfg.total_images,
        initial=step * cfg.batch_size,
        unit="img",
        unit_scale=True,
        dynamic_ncols=True,
        disable=not ctx.main,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        desc=DISPLAY_NAMES[cfg.arch],
    )
    if ctx.main and step:
        bar.write(f"resuming {last_path} at step {step:,} of {cfg.steps:,} ({step * cfg.batch_size:,} images)")
    session_start = time.monotonic()
    last_save = session_start
    done_here = 0
    lr = optimizer.param_groups[0]["lr"]
    flush_every = 1 if device.type == "cpu" else 10  # host syncs (loss check, stop agreement) on GPUs are rarer
    stop = _StopRequest()
    with stop:
        net.train()
        batches = iter(loader)
        while step < cfg.steps:
            t0 = time.perf_counter()
            images, labels = next(batches)
            t_data = time.perf_counter()
            x = _prepare(images, device, mean, std)
            y = labels.to(device, non_blocking=True)
            with _autocast(device, cfg.precision):
                logits = net(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            step += 1
            done_here += 1
            running[0] += loss.detach()
            running[1] += (logits.detach().argmax(1) == y).sum()
            acc["seen"] += len(y)
            acc["steps"] += 1
            if done_here % flush_every == 0:
                last_loss = float(loss.detach())
                flush()
                if ctx.main:
                    bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.4f}", refresh=False)
            acc["data_s"] += t_data - t0
            acc["train_s"] += time.perf_counter() - t0
            bar.update(cfg.batch_size)

            finished = step >= cfg.steps
            if (step * cfg.batch_size) // cfg.eval_every > ((step - 1) * cfg.batch_size) // cfg.eval_every or finished:
                eval_and_log(lr)
                save_last()
                last_save = time.monotonic()
            elif ctx.main and time.monotonic() - last_save >= cfg.checkpoint_every:
                save_last()
                last_save = time.monotonic()
            if finished:
                completed = True
                break
            halt = stop_after is not None and done_here >= stop_after
            if ctx.enabled:
                if done_here % flush_every == 0:
                    halt = halt or _broadcast_flag(stop.requested, device)
            else:
                halt = halt or stop.requested
            if halt:
                save_last()
                if ctx.main:
                    speed = ""
                    if acc["train_s"]:
                        speed = (
                            f" ({acc['steps'] * cfg.batch_size / acc['train_s']:.1f} img/s, data loading "
                            f"{100 * acc['data_s'] / acc['train_s']:.0f}% of the step time since the last evaluation)"
                        )
                    bar.write(
                        f"stopped at step {step:,}{speed}; rerun the same command to continue from {last_path}"
                    )
                break
        del batches
    bar.close()

    if completed:
        if not history or history[-1]["step"] != step:
            eval_and_log(lr)
            save_last()
        if ctx.main:  # (a rerun of a finished run only restores missing files)
            row = history[-1]
            if done_here or not (out / FINAL).is_file():
                save_checkpoint(out / FINAL, model, meta(row), dtype=torch.float16)
            if not (out / BEST).is_file():
                save_checkpoint(out / BEST, model, meta(row), dtype=torch.float16)
            if not (out / METRICS_CSV).is_file():
                write_metrics_csv(out / METRICS_CSV, history)
            if not (out / CURVES_PNG).is_file():
                write_curves(out / CURVES_PNG, history, f"{DISPLAY_NAMES[cfg.arch]} on stamp scenes, {cfg.size} px")
            print(
                f"done: {row['images']:,} images, val top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% "
                f"(best top-1 {best['val_top1']:.2f}%); wrote {out / FINAL} and {out / BEST}",
                file=sys.stderr,
            )
    if ctx.enabled:
        dist.barrier()
    return TrainResult(model=model, config=cfg, step=step, completed=completed, history=history)


def _load_init(path: Path, arch: str | None) -> LoadedModel:
    """The checkpoint named by --init, as a TrainError when it cannot serve."""
    try:
        return load_checkpoint(path, "cpu", arch)
    except CheckpointError as err:
        raise TrainError(f"--init: {err}") from None


def _init_summary(init: LoadedModel) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    """`python -m cbam_viz.train ...` (also what torchrun runs): like `python -m cbam_viz train ...`."""
    return standalone(sys.modules[__name__], argv, "python -m cbam_viz.train", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
