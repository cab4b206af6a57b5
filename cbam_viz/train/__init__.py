"""`train`: train a ResNet (18/34/50/101) or its CBAM version on stamp scenes or a photo folder (ImageFolder,
ImageNet), from scratch or from a checkpoint, resumably.

One recipe for both architectures (`train-pair` runs the pair's phases with it; the defaults of one run:)

* SGD, Nesterov momentum 0.9, peak lr 0.1 x batch/32 (linear scaling), linear warmup over the first 5 % of steps,
  then cosine to 0; weight decay 5e-5 on conv/linear weights only (none on BN parameters or biases);
  label smoothing 0.1; `zero_init_residual=True` (`--no-zero-init-residual` starts each residual branch's last BN
  weight at 1, as the official CBAM code does); ImageNet mean/std.
* Data: every training scene is a fresh composite drawn deterministically from (seed, "train", index): that is the
  whole augmentation. Photo folders: item `index` is a random-resized crop and flip (plus `--augment`) of one
  training image, in a per-epoch order, all drawn from (seed, index) alone (`cbam_viz.data.imagefolder`).
  Step `s` consumes the global indices [s*B, (s+1)*B) of the stream, B the global batch; with W processes rank r
  takes the r-th contiguous B/W slice of them, so the image stream does not depend on W.
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

import sys

from cbam_viz.cli import standalone
from cbam_viz.data.source import DataSource, open_data, scenes_to_tensors
from cbam_viz.train.config import BEST, FINAL, LAST, METRIC_COLUMNS, Config, TrainError, add_arguments, resolve_config
from cbam_viz.train.data import StepBatches, rank_indices
from cbam_viz.train.evaluation import evaluate
from cbam_viz.train.loop import Trainer, TrainResult, run, train

__all__ = [
    "BEST", "FINAL", "LAST", "METRIC_COLUMNS", "Config", "DataSource", "StepBatches", "TrainError", "TrainResult",
    "Trainer", "add_arguments", "evaluate", "main", "open_data", "rank_indices", "resolve_config", "run",
    "scenes_to_tensors", "train",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`python -m cbam_viz.train ...` (also what torchrun runs): like `python -m cbam_viz train ...`."""
    return standalone(sys.modules[__name__], argv, "python -m cbam_viz.train", __doc__.split("\n\n")[0])
