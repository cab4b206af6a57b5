"""CBAM Grad-CAM Studio: see where ResNet50 and CBAM-ResNet50 look, and how attention changes it.

    from cbam_viz import compare, load_pair
    result = compare("photo.jpg", load_pair())

The public API is imported on first use, so `import cbam_viz` (and the command line's --help) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "cbam_viz.nn.resnet",
    "CBAMConfig": "cbam_viz.nn.cbam",
    "load_checkpoint": "cbam_viz.io.checkpoints",
    "load_pair": "cbam_viz.io.checkpoints",
    "compare": "cbam_viz.cam.engine",
    "attention_effects": "cbam_viz.nn.knockout",
}
__all__ = ["CBAMConfig", "__version__", "attention_effects", "build_model", "compare", "load_checkpoint", "load_pair"]

if TYPE_CHECKING:
    from cbam_viz.cam.engine import compare
    from cbam_viz.io.checkpoints import load_checkpoint, load_pair
    from cbam_viz.nn.cbam import CBAMConfig
    from cbam_viz.nn.knockout import attention_effects
    from cbam_viz.nn.resnet import build_model


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cbam_viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
