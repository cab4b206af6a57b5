"""ResNet18/34/50/101 and their CBAM versions on torchvision's ResNet, so parameter names match torchvision exactly.

CBAM sits on each block's residual branch output (after its last BN), before the residual add, in every block:
BasicBlocks too, as in the official CBAM code.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from cbam_viz.nn.cbam import CBAM, CBAMConfig

# depth -> (block, blocks per stage), as torchvision and the official CBAM code define them
DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
ARCHS = tuple(f"resnet{depth}{suffix}" for depth in DEPTHS for suffix in ("", "-cbam"))
DISPLAY_NAMES = {f"resnet{depth}": f"ResNet{depth}" for depth in DEPTHS} | {
    f"resnet{depth}-cbam": f"CBAM-ResNet{depth}" for depth in DEPTHS
}
STAGES = ("layer1", "layer2", "layer3", "layer4")


def branch_channels(block: BasicBlock | Bottleneck) -> int:
    """Channels of a block's residual branch output: what its CBAM gates reweight and a CAM of its stage weighs."""
    return (block.bn3 if isinstance(block, Bottleneck) else block.bn2).num_features


class CBAMBlock(nn.Module):
    """CBAM applied to a torchvision block's residual branch output (`branch`), before the residual add; mixed in
    before BasicBlock or Bottleneck, whose layers and parameter names it keeps."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cbam = CBAM(branch_channels(self))  # replaced by build_model with the requested config and name

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch up to its last BN."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.cbam(self.branch(x)) + identity)


class CBAMBasicBlock(CBAMBlock, BasicBlock):
    """torchvision's BasicBlock with CBAM applied to the residual branch before the add."""

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class CBAMBottleneck(CBAMBlock, Bottleneck):
    """torchvision's Bottleneck with CBAM applied to the residual branch before the add."""

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def parse_arch(arch: str) -> tuple[int, bool]:
    """`resnet34-cbam` -> (34, True); ValueError lists the architectures for anything else."""
    match = re.fullmatch(r"resnet(\d+)(-cbam)?", arch)
    if match is None or match[1] not in map(str, DEPTHS):
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return int(match[1]), match[2] is not None


def build_model(
    arch: str = "resnet50",
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    cbam: CBAMConfig | None = None,
) -> ResNet:
    """Build any of ARCHS with random weights, initialised as torchvision and the official CBAM code.

    The spatial gate's BN weight starts at zero (every spatial map starts at 0.5), as in the official CBAM code;
    `zero_init_residual` zeroes each residual branch's last BN, which helps training from scratch.
    `cbam` shapes every CBAM block (the paper's final design by default); only `-cbam` architectures take one.
    """
    depth, with_cbam = parse_arch(arch)
    if cbam is not None and not with_cbam:
        raise ValueError(f"{arch} has no CBAM blocks: CBAM options need {arch}-cbam")
    plain, layers = DEPTHS[depth]
    block = (CBAMBasicBlock if plain is BasicBlock else CBAMBottleneck) if with_cbam else plain
    model = ResNet(block, list(layers), num_classes=num_classes, zero_init_residual=zero_init_residual)
    for name, module in list(model.named_modules()):
        if isinstance(module, CBAMBlock):
            module.cbam = CBAM(branch_channels(module), cbam, name=name)
            if module.cbam.spatial is not None:
                nn.init.zeros_(module.cbam.spatial.bn.weight)
    return model


def infer_arch(state: dict[str, torch.Tensor]) -> str:
    """The architecture a torchvision-named state dict was saved from, read from its block type and stage
    lengths; ValueError when they are not one of DEPTHS."""
    bottleneck = any(re.match(r"layer\d+\.\d+\.conv3\.", key) for key in state)
    layers = tuple(len({key.split(".")[1] for key in state if key.startswith(f"{stage}.")}) for stage in STAGES)
    for depth, (block, blocks) in DEPTHS.items():
        if blocks == layers and (block is Bottleneck) == bottleneck:
            return f"resnet{depth}" + ("-cbam" if any(".cbam." in key for key in state) else "")
    kind = "Bottleneck" if bottleneck else "BasicBlock"
    raise ValueError(f"{kind} stages of {list(layers)} blocks are none of ResNet{'/'.join(map(str, DEPTHS))}")


def infer_cbam_config(state: dict[str, torch.Tensor]) -> CBAMConfig:
    """The CBAM options a state dict's shapes reveal (reduction, spatial descriptor and kernel, channel only);
    the pooling and the order of the gates leave no trace in the weights, so they take the paper's values."""
    hidden = state.get("layer1.0.cbam.channel.mlp.0.weight")
    conv = state.get("layer1.0.cbam.spatial.conv.weight")
    if hidden is None:  # not a CBAM state dict: the key check of the caller names what is missing
        return CBAMConfig()
    values = {"reduction": hidden.shape[1] // hidden.shape[0]}
    if conv is None:
        values["arrangement"] = "channel"
    else:
        values["kernel_size"] = conv.shape[-1]
        if "layer1.0.cbam.spatial.compress.weight" in state:
            values["spatial_pool"] = "conv1x1"
    return CBAMConfig(**values)


def forward_maps(model: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the network once and return (logits, layer3 activations, layer4 activations) without any hook."""
    layer3 = model.layer3(model.layer2(model.layer1(stem(model, x))))
    features = model.layer4(layer3)
    return head(model, features), layer3, features


def stem(model: ResNet, x: torch.Tensor) -> torch.Tensor:
    """The layers before layer1 (convolution, BN, ReLU, max pooling): layer1's input."""
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


def head(model: ResNet, features: torch.Tensor) -> torch.Tensor:
    """The logits of layer4 activations: global average pooling, then fc."""
    return model.fc(torch.flatten(model.avgpool(features), 1))

