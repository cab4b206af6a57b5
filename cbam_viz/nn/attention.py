"""Per-call capture of every CBAM block's channel and spatial attention from one forward pass.

A `contextvars.ContextVar` holds the recorder, so each thread (and each asyncio task) sees only its own:
concurrent requests never share hook state, and no hooks are registered on the shared model.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

_RECORDER: contextvars.ContextVar[AttentionMaps | None] = contextvars.ContextVar("cbam_recorder", default=None)


@dataclass
class AttentionMaps:
    """Attention of each CBAM block, keyed by block name ("layer1.0" ... "layer4.2"), in forward order.

    channel[name]: (N, C) channel weights Mc in [0, 1]; spatial[name]: (N, H, W) spatial map Ms in [0, 1], for the
    blocks that have a spatial gate (a channel-only variant has none).
    """

    channel: dict[str, torch.Tensor] = field(default_factory=dict)
    spatial: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def blocks(self) -> list[str]:
        """Block names in forward order."""
        return list(self.channel)

    def stage(self, stage: int) -> list[str]:
        """Block names of one stage (1..4)."""
        return [name for name in self.channel if name.startswith(f"layer{stage}.")]

    def activity(self) -> dict[str, dict[str, torch.Tensor]]:
        """How image-specific each block's attention is, per image (N,): "spatial_range" (max - min of Ms; absent
        without a spatial gate) and "channel_std" (standard deviation of Mc over channels). A block whose figures
        are near 0 on every image applies the same weights to all of them."""
        out = {}
        for name, channel in self.channel.items():
            out[name] = {"channel_std": channel.std(dim=1)}
            if name in self.spatial:
                ms = self.spatial[name].flatten(1)
                out[name]["spatial_range"] = ms.amax(dim=1) - ms.amin(dim=1)
        return out

    def select(self, index: int) -> AttentionMaps:
        """The maps of one image of the batch (keeps the batch dimension out)."""
        return AttentionMaps(
            channel={k: v[index] for k, v in self.channel.items()},
            spatial={k: v[index] for k, v in self.spatial.items()},
        )


@contextmanager
def capture_attention() -> Iterator[AttentionMaps]:
    """Record, into the yielded AttentionMaps, the attention of every CBAM block run inside the block."""
    maps = AttentionMaps()
    token = _RECORDER.set(maps)
    try:
        yield maps
    finally:
        _RECORDER.reset(token)


def record(name: str, channel: torch.Tensor, spatial: torch.Tensor | None) -> None:
    """Called by each CBAM block: store its maps if a capture is active in this context (cheap no-op otherwise)."""
    maps = _RECORDER.get()
    if maps is not None:
        maps.channel[name] = channel.detach().float().flatten(1)
        if spatial is not None:
            maps.spatial[name] = spatial.detach().float()[:, 0]
