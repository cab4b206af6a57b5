"""Is data loading the bottleneck of training? The training loop's img/s on real data over the same step on tensors.

    python benchmarks/train_data.py --data DIR [--data DIR2 ...] [--arch resnet50] [--size 160] [--batch-size 32]
        [--workers N] [--threads N] [--rounds 5] [--steps 4]

For each `--data` folder (anything `train --data` accepts), a `Trainer` is set up exactly as `train` would (its
DataLoader with the default or given workers, its step), in a temporary run folder. Each round runs `--steps` steps
fed by the loader, then `--steps` steps on one random uint8 batch of the same shape already in memory (the bare
forward+backward), alternating; the median over rounds of loader img/s over bare img/s is printed (goal ≥ 0.90).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbam_viz.train import add_arguments  # noqa: E402
from cbam_viz.train.distributed import Dist  # noqa: E402
from cbam_viz.train.loop import Trainer  # noqa: E402

GOAL = 0.90


def make_trainer(data: str, options: argparse.Namespace, out: Path) -> Trainer:
    """A Trainer on `data` configured as `train --arch ... --data data --out out` with the benchmark's options."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--arch", options.arch, "--data", data, "--out", str(out), "--size", str(options.size),
            "--batch-size", str(options.batch_size), "--steps", str(10**6), "--no-resume"]  # fmt: skip
    if options.workers is not None:
        argv += ["--workers", str(options.workers)]
    return Trainer(parser.parse_args(argv), None, Dist(), torch.device("cpu"))


def timed_steps(trainer: Trainer, batches, steps: int) -> float:
    """img/s of `steps` training steps fed by `batches` (an iterator of (images, labels[, notes]))."""
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        trainer.train_step(batch[0], batch[1])
    trainer.flush()
    return steps * trainer.cfg.batch_size / (time.perf_counter() - start)


def measure(data: str, options: argparse.Namespace) -> list[float]:
    """Per round: loader img/s over bare img/s, on one data source."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(data, options, Path(tmp) / "run")
        cfg = trainer.cfg
        loader = iter(trainer.loader(completed=False))
        images, labels = next(loader)[:2]
        fixed = (torch.randint(0, 256, images.shape, dtype=torch.uint8), labels.clone())

        def bare():
            while True:
                yield fixed

        timed_steps(trainer, loader, 1)  # warm-up: first batches, allocator, oneDNN kernels
        timed_steps(trainer, bare(), 1)
        ratios = []
        for r in range(options.rounds):
            real = timed_steps(trainer, loader, options.steps)
            tensors = timed_steps(trainer, bare(), options.steps)
            ratios.append(real / tensors)
            print(f"  {data} round {r + 1}: loader {real:5.1f} img/s, tensors {tensors:5.1f} img/s, "
                  f"ratio {real / tensors:.3f}", flush=True)  # fmt: skip
        print(f"{data}: {cfg.workers} workers, {cfg.size} px, batch {cfg.batch_size}, {cfg.precision}")
        del loader
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="a data folder; repeat for several")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: train's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {options.arch}")
    results = {data: measure(data, options) for data in options.data}
    for data, ratios in results.items():
        median = statistics.median(ratios)
        verdict = "PASS" if median >= GOAL else "MISS"
        print(f"{data}: loader / tensors {median:.3f} ({min(ratios):.3f}-{max(ratios):.3f} over "
              f"{len(ratios)} rounds) {verdict} (goal >= {GOAL})")  # fmt: skip


if __name__ == "__main__":
    main()
