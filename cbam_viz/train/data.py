"""The step-indexed batch order shared by all ranks, and the loader workers' setup."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import torch


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


def worker_init(_: int, idle: bool = False) -> None:
    """One thread per loader worker; with `idle` (training on the CPU) the worker gets only the CPU time the
    training threads leave, instead of pre-empting one of them while the others wait for it at a barrier."""
    torch.set_num_threads(1)
    if idle and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # Ctrl-C / SIGTERM go to the trainer, which stops at a step boundary and then shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
