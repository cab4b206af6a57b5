"""PyTorch Hub entry points: `torch.hub.load(REPO_DIR, "resnet50_cbam", source="local")` gives the bundled
CBAM-ResNet50 (`model.class_names` holds its classes); any depth with `pretrained=False` gives random weights,
initialised as the official CBAM code (`num_classes`, `cbam=CBAMConfig(...)` and `zero_init_residual` pass through).
"""

from __future__ import annotations

# Only the entry points are public callables here: torch.hub.list shows every one.
import typing as _typing

import cbam_viz.errors as _errors
import cbam_viz.io.checkpoints as _checkpoints
import cbam_viz.nn.resnet as _models

dependencies = ["torch", "torchvision", "safetensors"]

_BUNDLED = {"resnet50": "baseline", "resnet50-cbam": "cbam"}


def _entry(arch: str):
    def load(pretrained: bool = True, **kwargs: _typing.Any):
        if not pretrained:
            return _models.build_model(arch, **kwargs)
        if arch not in _BUNDLED:
            raise _errors.CbamVizError(f"{arch} has no bundled weights (only the ResNet50 pair): use pretrained=False")
        if kwargs:
            raise _errors.CbamVizError(f"the bundled {arch} is fixed: {', '.join(kwargs)} need pretrained=False")
        loaded = _checkpoints.load_pair()[_BUNDLED[arch]]
        loaded.model.class_names = list(loaded.meta.class_names)
        return loaded.model

    load.__name__ = arch.replace("-", "_")
    load.__doc__ = f"{arch}: the bundled weights (pretrained=True, 50 only) or random ones (pretrained=False)."
    return load


for _depth in _models.DEPTHS:
    for _arch in (f"resnet{_depth}", f"resnet{_depth}-cbam"):
        globals()[_arch.replace("-", "_")] = _entry(_arch)
