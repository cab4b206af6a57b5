"""Process groups under torchrun (gloo on CPU, nccl on CUDA) and the few collectives the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cbam_viz.devices import resolve_device


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


def all_reduce(values: list[float], device: torch.device, op=None) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    return bool(all_reduce([float(flag)], device, dist.ReduceOp.MAX if dist.is_available() else None)[0])


def gather_notes(notes: list[str]) -> list[str]:
    """Every rank's notes, rank 0's first, without repeats (all ranks must call it)."""
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, notes)
    return list(dict.fromkeys(note for rank_notes in gathered for note in rank_notes or ()))
