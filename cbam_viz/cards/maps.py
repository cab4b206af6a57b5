"""Every CAM method's map at layer4 from one forward pass, before grad-cam's ReLU: what the cards compare.

Layer4's output feeds only the pooled head (avgpool, fc), so the gradient of the logits w.r.t. it comes from the head
alone: one forward pass of the network and a backward through the head serve every gradient method, where grad-cam
runs a whole forward and backward per method. Each method's own `get_cam_image` turns activations and gradients into
its map, so the maps are grad-cam's; `heatmaps` finishes them as the app shows them.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision.models.resnet import ResNet

from cbam_viz.cam.engine import METHODS, upsample
from cbam_viz.nn.resnet import forward_maps, head

LAYER = "layer4"  # the layer every card's measurements use: the app's default


def layer4_cams(
    model: ResNet, x: torch.Tensor, targets: Sequence[int], methods: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each method's signed map (before the ReLU) of the class `targets[i]` on x[i] at layer4: {method: (N, h, w)}."""
    with torch.no_grad():
        features = forward_maps(model, x)[2].float()
    with torch.enable_grad():
        features.requires_grad_(True)
        logits = head(model, features)
        chosen = logits.gather(1, torch.as_tensor(list(targets), device=logits.device)[:, None]).sum()
        (grads,) = torch.autograd.grad(chosen, features)
    activations, grads = features.detach().cpu().numpy(), grads.cpu().numpy()
    callables = [ClassifierOutputTarget(int(t)) for t in targets]
    cams = {}
    for name in methods:
        with METHODS[name].cam_class(model=model, target_layers=[model.layer4]) as cam:
            cam.activations_and_grads.release()  # the maps come from the activations given, not from hooks
            cams[name] = np.asarray(
                cam.get_cam_image(x, model.layer4, callables, activations, grads, False), dtype=np.float32
            )
    return cams


def heatmaps(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) signed maps as the app shows them: ReLU, normalised to [0, 1] and resized to size = (W, H)."""
    return upsample(np.maximum(cams, 0), size)


def resized(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) signed maps resized to size = (W, H) with grad-cam's interpolation (bilinear), values kept."""
    return np.stack([cv2.resize(cam, size) for cam in cams])
