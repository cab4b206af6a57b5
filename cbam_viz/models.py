"""ResNet50 and CBAM-ResNet50 on torchvision's ResNet, so parameter names match torchvision exactly.

CBAM sits on each bottleneck's conv output (after bn3), before the residual add, in every block.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from cbam_viz.cbam import CBAM

ARCHS = ("resnet50", "resnet50-cbam")
DISPLAY_NAMES = {"resnet50": "ResNet50", "resnet50-cbam": "CBAM-ResNet50"}
STAGES = ("layer1", "layer2", "layer3", "layer4")


class CBAMBottleneck(Bottleneck):
    """torchvision's Bottleneck with CBAM applied to the residual branch before the add."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cbam = CBAM(self.conv3.out_channels)  # replaced by build_model with the requested shape and name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.cbam(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


def build_model(
    arch: str = "resnet50",
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    reduction: int = 16,
    kernel_size: int = 7,
) -> ResNet:
    """Build `resnet50` or `resnet50-cbam` with random weights, initialised as torchvision and the official CBAM code.

    The spatial gate's BN weight starts at zero (every spatial map starts at 0.5), as in the official CBAM code;
    `zero_init_residual` zeroes each residual branch's last BN, which helps training from scratch.
    `reduction` and `kernel_size` shape every CBAM block (the paper's 16 and 7 by default).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    block = CBAMBottleneck if arch == "resnet50-cbam" else Bottleneck
    model = ResNet(block, [3, 4, 6, 3], num_classes=num_classes, zero_init_residual=zero_init_residual)
    for name, module in list(model.named_modules()):
        if isinstance(module, CBAMBottleneck):
            module.cbam = CBAM(module.conv3.out_channels, reduction, kernel_size, name=name)
            nn.init.zeros_(module.cbam.spatial.bn.weight)
    return model


def has_cbam(model: nn.Module) -> bool:
    """Whether the model contains CBAM blocks."""
    return any(isinstance(m, CBAM) for m in model.modules())


def forward_features(model: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network once and return (logits, layer4 activations) without any hook."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    features = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    logits = model.fc(torch.flatten(model.avgpool(features), 1))
    return logits, features
