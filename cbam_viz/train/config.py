"""The training recipe's defaults, the command-line options and the resolved settings of one run."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from cbam_viz.data.scenes import TARGET_SCALE
from cbam_viz.data.transforms import AUGMENTS
from cbam_viz.errors import CbamVizError
from cbam_viz.nn.cbam import ARRANGEMENTS, CHANNEL_POOLS, KERNEL_SIZES, SPATIAL_POOLS, CBAMConfig
from cbam_viz.nn.resnet import ARCHS, parse_arch

# Defaults of one `train` run. The recipe of the pair the app compares is `cbam_viz.train.pair.RECIPE`.
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

# The run folder.
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
    "zero_init_residual", "target_scale", "augment",
)  # fmt: skip



class TrainError(CbamVizError):
    """Bad training arguments, data or run folder."""



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
    _add_cbam_arguments(parser)
    parser.add_argument(
        "--data", type=Path,
        help="a folder written by `data build --out` (stamp scenes), or a photo folder: train/ and val/ as ImageFolder "
        "(one sub-folder per class), val/ also as ImageNet's flat validation folder with LOC_val_solution.csv "
        "(default: data/stamps)",
    )  # fmt: skip
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
        f"(default: {TARGET_SCALE[0]} {TARGET_SCALE[1]}, as in the val and test splits)",
    )  # fmt: skip
    parser.add_argument(
        "--augment", choices=AUGMENTS,
        help="photo folders only: a policy applied after the random-resized crop and flip (default: none)",
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
    _add_runtime_arguments(parser)


def _add_cbam_arguments(parser: argparse.ArgumentParser) -> None:
    """The CBAM design options (a new run of a -cbam architecture; the paper's design by default)."""
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


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """How a run is executed (not part of the trained model's recipe)."""
    parser.add_argument(
        "--workers", type=int,
        help="data-loading processes per training process (default: 1 on CPU, 6 on CUDA; on the CPU they run in "
        "the idle scheduling class, in the time the training threads leave)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    parser.add_argument(
        "--threads", type=_positive_int,
        help="CPU threads per training process (default: torch's, i.e. OMP_NUM_THREADS or all cores); use 1 "
        "for each of several runs sharing a CPU",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False,
        help="torch.compile the training forward/backward: fuses CBAM's elementwise work, after minutes of compiling "
        "(benchmarks/train_step.py measures the gain; default: off)",
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
    augment: str  # photo folders: the augmentation policy after crop and flip ("none", "trivialaugment"...)
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
        "augment": getattr(args, "augment", None),
    }
    batch = explicit["batch_size"]
    if batch is None:
        batch = saved["batch_size"] if saved else DEFAULT_BATCH
    if args.steps is not None:
        explicit["steps"] = args.steps
    elif args.images is not None:
        explicit["steps"] = math.ceil(args.images / batch) if batch > 0 else 0

    if saved:
        values = _resumed_values(args, explicit, cbam_given, saved)
    else:
        values = _new_values(explicit, cbam_given, batch, device, init_cbam)
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


def _resumed_values(args: argparse.Namespace, explicit: dict, cbam_given: dict, saved: dict) -> dict:
    """The recipe of a run being resumed: its saved settings, which explicit options must not change."""
    # Runs saved before --init / --zero-init-residual / --target-scale / the CBAM options / --augment existed
    # started from random zero-init-residual weights, drew their targets at the default sizes, had the paper's
    # CBAM design and trained on stamp scenes (no --augment).
    default_cbam = CBAMConfig().to_dict() if parse_arch(saved["arch"])[1] else None
    saved = {"init": "", "zero_init_residual": True, "target_scale": TARGET_SCALE, "cbam": default_cbam,
             "augment": "none", **saved}  # fmt: skip
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
    return values


def _new_values(explicit: dict, cbam_given: dict, batch: int, device: str, init_cbam: CBAMConfig | None) -> dict:
    """The recipe of a new run: explicit options over the defaults."""
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
        "target_scale": explicit["target_scale"] or TARGET_SCALE,
        "augment": explicit["augment"] or "none",
        "cbam": _new_cbam(explicit["arch"], cbam_given, init_cbam),
    }
    if explicit["init"] and explicit["zero_init_residual"] is not None:
        raise TrainError(
            "--zero-init-residual / --no-zero-init-residual choose the random init; --init starts from a "
            "checkpoint's weights: give one or the other"
        )
    return values


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
