"""Where the models run: one reading of --device for the app, the batch export, the benchmark and training."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from cbam_viz.errors import CbamVizError, echo


def resolve_device(name: str, environ: Mapping[str, str] | None = None) -> torch.device:
    """cpu, cuda, cuda:N or auto (CUDA when PyTorch sees a GPU, else cpu); under torchrun plain `cuda` means this
    rank's LOCAL_RANK GPU. CbamVizError says what to pass instead."""
    environ = os.environ if environ is None else environ
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CbamVizError(f"unknown device {echo(name)}; use cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CbamVizError(
                f"--device {name}: no CUDA device is available (this PyTorch build has no usable CUDA GPU); "
                "use --device cpu"
            )
        if device.index is None:
            device = torch.device("cuda", int(environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise CbamVizError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise CbamVizError(f"unsupported device {echo(name)}; use cpu or cuda")
    return device
