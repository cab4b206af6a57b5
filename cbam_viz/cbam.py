"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018): channel then spatial attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cbam_viz.attention import record


def _needs_grad(x: torch.Tensor) -> bool:
    """Whether a backward pass will run through `x`: max pooling then keeps indices, because amax's backward builds
    an equality mask over the whole tensor (13% of a CBAM-ResNet50 CPU training step), while amax's forward is the
    faster one (max with indices is up to 5x slower over channels in channels_last), so inference keeps amax."""
    return torch.is_grad_enabled() and x.requires_grad


class ChannelAttention(nn.Module):
    """Mc(F) = sigmoid(MLP(avgpool(F)) + MLP(maxpool(F))) with one shared MLP C -> C/r -> C."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return Mc of shape (N, C, 1, 1)."""
        n, c = x.shape[:2]
        # One MLP call on both descriptors (stacked along the batch) instead of two.
        peak = F.adaptive_max_pool2d(x, 1).flatten(1) if _needs_grad(x) else x.amax(dim=(2, 3))
        pooled = torch.cat([x.mean(dim=(2, 3)), peak], dim=0)
        avg_out, max_out = self.mlp(pooled).split(n, dim=0)
        return torch.sigmoid(avg_out + max_out).view(n, c, 1, 1)


class SpatialAttention(nn.Module):
    """Ms(F) = sigmoid(BN(conv7x7([mean_c(F), max_c(F)]))); the conv's input channels are (mean, max)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return Ms of shape (N, 1, H, W)."""
        peak = x.max(dim=1, keepdim=True).values if _needs_grad(x) else x.amax(dim=1, keepdim=True)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), peak], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """F' = F * Mc(F); output = F' * Ms(F'). `name` identifies the block in attention captures."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, name: str = "") -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = self.channel(x)
        x = x * mc
        ms = self.spatial(x)
        record(self.name, mc, ms)
        return x * ms
