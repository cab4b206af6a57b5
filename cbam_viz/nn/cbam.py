"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018): channel then spatial attention.

`CBAMConfig` holds the paper's final design by default and its Sec. 4.1 ablations as options: channel pooling
(avg, max, both), the spatial descriptor (avg & max over channels, or a learned 1x1 convolution) and kernel size,
and the arrangement of the two gates (channel then spatial, spatial then channel, in parallel, channel only).
`knock_out` runs blocks with a gate replaced by a neutral value, to measure what the gate does.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cbam_viz.nn.attention import record

CHANNEL_POOLS = {"avg+max": ("avg", "max"), "avg": ("avg",), "max": ("max",)}
SPATIAL_POOLS = ("avg+max", "conv1x1")
KERNEL_SIZES = (3, 7)
ARRANGEMENTS = ("channel-spatial", "spatial-channel", "parallel", "channel")
_VARIANT_ARRANGEMENTS = {"spatial-channel": "spatial first", "parallel": "parallel", "channel": "channel only"}
GATES = ("spatial", "channel")
NEUTRALS = ("mean", "init")  # what a knocked-out gate becomes: its per-image mean, or its value at initialisation
INIT_GATE = 0.5  # both gates at init: the spatial BN's weight starts at 0, the channel MLP's output is near 0
# Per call (thread, asyncio task), like the attention recorder: {block: (knocked-out gates, neutral)}, so a
# knock-out never reaches a concurrent request's forward through the shared model.
_KNOCKOUTS: contextvars.ContextVar[Mapping[CBAM, tuple[frozenset[str], str]]] = contextvars.ContextVar(
    "cbam_knockouts", default=MappingProxyType({})
)
_INTACT: tuple[frozenset[str], str] = (frozenset(), "")


@dataclass(frozen=True)
class CBAMConfig:
    """Shape of every CBAM block of a model; the defaults are the paper's final design (Fig. 1, Sec. 3)."""

    reduction: int = 16  # the channel MLP's hidden layer is C / reduction wide
    channel_pool: str = "avg+max"  # descriptors fed to the shared MLP (Table 1)
    spatial_pool: str = "avg+max"  # spatial descriptor: mean and max over channels, or a 1x1 conv to 1 (Table 2)
    kernel_size: int = 7  # the spatial gate's convolution (Table 2)
    arrangement: str = "channel-spatial"  # order of the gates (Table 3); "channel": no spatial gate (Table 2)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.reduction, int) or self.reduction < 1:
            problems.append(f"reduction must be a positive integer (got {self.reduction!r})")
        if self.channel_pool not in CHANNEL_POOLS:
            problems.append(f"channel_pool {self.channel_pool!r} is not one of {', '.join(CHANNEL_POOLS)}")
        if self.spatial_pool not in SPATIAL_POOLS:
            problems.append(f"spatial_pool {self.spatial_pool!r} is not one of {', '.join(SPATIAL_POOLS)}")
        if self.kernel_size not in KERNEL_SIZES:
            problems.append(f"kernel_size {self.kernel_size!r} is not one of {', '.join(map(str, KERNEL_SIZES))}")
        if self.arrangement not in ARRANGEMENTS:
            problems.append(f"arrangement {self.arrangement!r} is not one of {', '.join(ARRANGEMENTS)}")
        elif not self.has_spatial and (self.spatial_pool, self.kernel_size) != ("avg+max", 7):
            problems.append("spatial_pool and kernel_size shape the spatial gate, which arrangement 'channel' lacks")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def has_spatial(self) -> bool:
        """Whether the blocks have a spatial gate (every arrangement but channel only)."""
        return self.arrangement != "channel"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CBAMConfig:
        """The config stored in checkpoint metadata; ValueError names unknown keys and bad values."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown CBAM option(s) {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, as stored in checkpoint metadata."""
        return asdict(self)

    def describe(self) -> str:
        """One line for people: the gates in order with their pooling, kernel and reduction."""
        channel = f"channel ({self.channel_pool} pooling, r={self.reduction})"
        spatial = f"spatial ({self.spatial_pool}, {self.kernel_size}×{self.kernel_size} conv)"
        order = {
            "channel-spatial": f"{channel} → {spatial}",
            "spatial-channel": f"{spatial} → {channel}",
            "parallel": f"{channel} ∥ {spatial}, applied together",
            "channel": f"{channel} only",
        }[self.arrangement]
        return order + ("; the paper's final design" if self == CBAMConfig() else "; a variant of the paper's design")

    def differences(self) -> str:
        """The options that differ from the paper's final design, e.g. "channel only, max pooling" ("" if none)."""
        parts = []
        if self.arrangement in _VARIANT_ARRANGEMENTS:
            parts.append(_VARIANT_ARRANGEMENTS[self.arrangement])
        if self.channel_pool != "avg+max":
            parts.append(f"{self.channel_pool} pooling")
        if self.has_spatial and self.spatial_pool != "avg+max":
            parts.append(f"{self.spatial_pool} spatial descriptor")
        if self.has_spatial and self.kernel_size != 7:
            parts.append(f"{self.kernel_size}×{self.kernel_size} spatial kernel")
        if self.reduction != 16:
            parts.append(f"r={self.reduction}")
        return ", ".join(parts)


def _needs_grad(x: torch.Tensor) -> bool:
    """Whether a backward pass will run through `x`: max pooling then keeps indices, because amax's backward builds
    an equality mask over the whole tensor, while amax's forward is the faster one (max with indices is slower over
    channels in channels_last), so inference keeps amax."""
    return torch.is_grad_enabled() and x.requires_grad


class ChannelAttention(nn.Module):
    """Mc(F) = sigmoid(sum over the pools p of MLP(p(F))) with one shared MLP C -> C/r -> C; the paper pools with
    avg and max."""

    def __init__(self, channels: int, reduction: int = 16, pool: str = "avg+max") -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.pools = CHANNEL_POOLS[pool]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return Mc of shape (N, C, 1, 1)."""
        n, c = x.shape[:2]
        # The max before the mean: autograd accumulates x's gradient in this order, which checkpoints' resumed
        # runs rely on to stay bit-exact. One MLP call on all descriptors (stacked along the batch) instead of one
        # per pool.
        pooled = {}
        if "max" in self.pools:
            pooled["max"] = F.adaptive_max_pool2d(x, 1).flatten(1) if _needs_grad(x) else x.amax(dim=(2, 3))
        if "avg" in self.pools:
            pooled["avg"] = x.mean(dim=(2, 3))
        outs = self.mlp(torch.cat([pooled[pool] for pool in self.pools], dim=0)).split(n, dim=0)
        return torch.sigmoid(sum(outs[1:], outs[0])).view(n, c, 1, 1)


class SpatialAttention(nn.Module):
    """Ms(F) = sigmoid(BN(conv_k([mean_c(F), max_c(F)]))), the conv's input channels being (mean, max); with
    pool="conv1x1" the descriptor is instead a learned 1x1 convolution of F down to one channel."""

    def __init__(self, kernel_size: int = 7, pool: str = "avg+max", channels: int = 0) -> None:
        super().__init__()
        self.compress = nn.Conv2d(channels, 1, 1, bias=False) if pool == "conv1x1" else None
        self.conv = nn.Conv2d(2 if self.compress is None else 1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return Ms of shape (N, 1, H, W)."""
        if self.compress is not None:
            pooled = self.compress(x)
        else:
            peak = x.max(dim=1, keepdim=True).values if _needs_grad(x) else x.amax(dim=1, keepdim=True)
            pooled = torch.cat([x.mean(dim=1, keepdim=True), peak], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """F' = F * Mc(F); output = F' * Ms(F') in the paper's design, the gates otherwise arranged as `config` says.
    `name` identifies the block in attention captures."""

    def __init__(self, channels: int, config: CBAMConfig | None = None, name: str = "") -> None:
        super().__init__()
        self.config = config or CBAMConfig()
        self.channel = ChannelAttention(channels, self.config.reduction, self.config.channel_pool)
        self.spatial = (
            SpatialAttention(self.config.kernel_size, self.config.spatial_pool, channels)
            if self.config.has_spatial
            else None
        )
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arrangement = self.config.arrangement
        knocked, neutral = _KNOCKOUTS.get().get(self, _INTACT)
        ms = None
        if arrangement == "channel":
            mc = self._channel(x, knocked, neutral)
            out = x * mc
        elif arrangement == "channel-spatial":
            mc = self._channel(x, knocked, neutral)
            x = x * mc
            ms = self._spatial(x, knocked, neutral)
            out = x * ms
        elif arrangement == "spatial-channel":
            ms = self._spatial(x, knocked, neutral)
            x = x * ms
            mc = self._channel(x, knocked, neutral)
            out = x * mc
        else:  # parallel: both gates see F, and their product reweights it
            mc, ms = self._channel(x, knocked, neutral), self._spatial(x, knocked, neutral)
            out = x * mc * ms
        record(self.name, mc, ms)
        return out

    def _channel(self, x: torch.Tensor, knocked: frozenset[str], neutral: str) -> torch.Tensor:
        mc = self.channel(x)
        return _neutral(mc, (1,), neutral) if "channel" in knocked else mc

    def _spatial(self, x: torch.Tensor, knocked: frozenset[str], neutral: str) -> torch.Tensor:
        ms = self.spatial(x)
        return _neutral(ms, (2, 3), neutral) if "spatial" in knocked else ms


def _neutral(gate: torch.Tensor, dims: tuple[int, ...], neutral: str) -> torch.Tensor:
    """The gate made constant over `dims`: its per-image mean there, or INIT_GATE."""
    if neutral == "mean":
        return gate.mean(dim=dims, keepdim=True).expand_as(gate)
    return torch.full_like(gate, INIT_GATE)


@contextmanager
def knock_out(blocks: Iterable[CBAM], gates: Iterable[str], neutral: str = "mean") -> Iterator[None]:
    """Run `blocks` with their `gates` ("spatial", "channel") made constant, in this thread or task only.

    The default neutral value is the gate's own per-image mean (over H, W for the spatial map, over channels for
    the channel weights): the block's output keeps the scale the gate gave it, so later layers see activations of
    the size they were trained on, and only the gate's pattern, where or which channels it favours, is removed.
    "init" uses the gate's value at initialisation instead, a constant that ignores what training made of its
    scale. ValueError for an unknown gate or neutral value, and for a spatial gate that a block lacks.
    """
    gates, blocks = frozenset(gates), list(blocks)
    if not gates or not gates <= set(GATES):
        raise ValueError(f"gates to knock out must be some of {', '.join(GATES)} (got {sorted(gates)})")
    if neutral not in NEUTRALS:
        raise ValueError(f"neutral value {neutral!r} is not one of {', '.join(NEUTRALS)}")
    lacking = [block.name or "a block" for block in blocks if "spatial" in gates and block.spatial is None]
    if lacking:
        raise ValueError(f"{lacking[0]} has no spatial gate (arrangement 'channel'): only its channel gate can be "
                         "knocked out")
    token = _KNOCKOUTS.set({**_KNOCKOUTS.get(), **{block: (gates, neutral) for block in blocks}})
    try:
        yield
    finally:
        _KNOCKOUTS.reset(token)
