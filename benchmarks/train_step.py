"""Training throughput, eager vs `torch.compile` (what `train --compile` changes), for both architectures.

    python benchmarks/train_step.py [--size 160] [--batch 32] [--threads 2] [--rounds 5]

One SGD step as `train` takes it (channels_last, the autocast dtype `train` picks for the CPU, label-smoothed
cross-entropy, Nesterov SGD) on random images. Compiling happens first and is timed apart; then the four variants
run round-robin, one step each per round, and the median over rounds of each img/s and of compiled / eager is
printed (the spread across rounds beside it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbam_viz.nn.resnet import DISPLAY_NAMES, build_model  # noqa: E402
from cbam_viz.train.config import DEFAULT_LABEL_SMOOTHING, DEFAULT_WEIGHT_DECAY, MOMENTUM, auto_precision  # noqa: E402
from cbam_viz.train.evaluation import autocast  # noqa: E402
from cbam_viz.train.optim import param_groups  # noqa: E402
from cbam_viz.train.pair import PAIR  # noqa: E402


def make_step(arch: str, compiled: bool, batch: int, size: int, precision: str):
    """A closure doing one training step of a fresh 32-class model on one fixed random batch."""
    torch.manual_seed(0)
    model = build_model(arch, 32, zero_init_residual=True).to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(param_groups(model, DEFAULT_WEIGHT_DECAY), lr=0.01, momentum=MOMENTUM, nesterov=True)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=DEFAULT_LABEL_SMOOTHING)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 32, (batch,))
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, precision):
            logits = net(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = auto_precision("cpu")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.size} px, batch {args.batch}, {precision}")

    steps = {}
    for arch in PAIR:
        for compiled in (False, True):
            step = make_step(arch, compiled, args.batch, args.size, precision)
            start = time.perf_counter()
            step()
            step()  # warm-up (and, compiled, the compile)
            print(f"  {DISPLAY_NAMES[arch]:<14} {'compiled' if compiled else 'eager':<8} first two steps "
                  f"{time.perf_counter() - start:6.1f} s", flush=True)  # fmt: skip
            steps[arch, compiled] = step
    rates = {key: [] for key in steps}
    keys = list(steps)
    for r in range(args.rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order each round
            start = time.perf_counter()
            steps[key]()
            rates[key].append(args.batch / (time.perf_counter() - start))
    for arch in PAIR:
        eager, compiled = rates[arch, False], rates[arch, True]
        ratios = [c / e for c, e in zip(compiled, eager)]
        print(f"{DISPLAY_NAMES[arch]:<14} eager {statistics.median(eager):5.1f} img/s, compiled "
              f"{statistics.median(compiled):5.1f} img/s: compiled / eager {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f} over {args.rounds} rounds)")  # fmt: skip


if __name__ == "__main__":
    main()
