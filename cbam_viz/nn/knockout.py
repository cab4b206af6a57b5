"""Attention knock-outs: what a CBAM model predicts, and where its layer4 Grad-CAM looks, with one stage's spatial
gate, channel gate or both made neutral (`cbam_viz.nn.cbam.knock_out`).

A knock-out at stage k leaves every activation below stage k as it was, so one intact pass keeps each stage's input
and each knock-out runs the network from its stage on only, for the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from cbam_viz.cam.engine import fast_gradcam, upsample
from cbam_viz.eval.metrics import agreement, energy_in_mask, peak, pointing_hit
from cbam_viz.io.checkpoints import LoadedModel
from cbam_viz.nn.cbam import CBAM, knock_out
from cbam_viz.nn.resnet import STAGES, head, stem

KNOCKOUTS = {"spatial": ("spatial",), "channel": ("channel",), "both": ("spatial", "channel")}


@dataclass(frozen=True)
class Outcome:
    """One image's answer for its target class: softmax P, the top-1 class, and where a mask is given whether the
    layer4 Grad-CAM's peak points at the object and the share of the CAM's energy inside it."""

    p_target: float
    top1: int
    pointing: bool | None = None
    energy: float | None = None


@dataclass(frozen=True)
class KnockOut:
    """One stage's gate(s) knocked out on one image: the outcome, and the layer4 CAM (on its own grid, ReLU'd)
    with its Pearson correlation to the intact CAM and whether its maximum moved to another cell."""

    stage: int
    gate: str  # "spatial", "channel" or "both"
    outcome: Outcome
    cam_correlation: float
    peak_moved: bool
    cam: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class ImageEffects:
    """What knocking out each stage's gates does on one image, for one target class."""

    target: int
    intact: Outcome
    knockouts: tuple[KnockOut, ...]
    intact_cam: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready: the target, the intact outcome, one row per knock-out with its ΔP and top-1 change (no CAMs)."""
        rows = [
            {"stage": k.stage, "gate": k.gate, **asdict(k.outcome),
             "delta_p": k.outcome.p_target - self.intact.p_target, "top1_changed": k.outcome.top1 != self.intact.top1,
             "cam_correlation": k.cam_correlation, "peak_moved": k.peak_moved}
            for k in self.knockouts
        ]
        return {"target": self.target, "intact": asdict(self.intact), "knockouts": rows}


def attention_effects(
    model: LoadedModel | nn.Module,
    x: torch.Tensor,
    targets: Sequence[int] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    neutral: str = "mean",
) -> list[ImageEffects]:
    """Knock out each stage's spatial gate, channel gate and both (the channel gate alone where blocks have no
    spatial gate) on the preprocessed batch `x` (N, 3, S, S) of an eval-mode CBAM ResNet: one ImageEffects per image
    for its target (default: its intact top-1), with pointing and energy where a mask (H, W) is given (the CAM is
    upsampled to the mask's size). `neutral`: see `knock_out`."""
    net = model.model if isinstance(model, LoadedModel) else model
    stages = _cbam_stages(net)
    with torch.inference_mode():
        inputs = [stem(net, x)]  # each stage's input, then layer4's output
        for name in STAGES:
            inputs.append(getattr(net, name)(inputs[-1]))
        intact, intact_cams = _outcomes(net, inputs[-1], targets, masks)
        targets = [o.top1 for o in intact] if targets is None else list(targets)
        runs = []
        for stage, blocks in stages.items():
            for gate in KNOCKOUTS if all(b.spatial is not None for b in blocks) else ("channel",):
                with knock_out(blocks, KNOCKOUTS[gate], neutral):
                    features = _forward_from(net, inputs[stage - 1], stage)
                runs.append((stage, gate, *_outcomes(net, features, targets, masks)))
    return [
        ImageEffects(target, intact[i], tuple(_knockout(stage, gate, outcomes[i], cams[i], intact_cams[i])
                                              for stage, gate, outcomes, cams in runs), intact_cams[i])
        for i, target in enumerate(targets)
    ]


def _cbam_stages(model: nn.Module) -> dict[int, list[CBAM]]:
    """The CBAM blocks of each stage (1..4) that has some; ValueError for a model without any."""
    stages = {k: [m for m in getattr(model, name).modules() if isinstance(m, CBAM)] for k, name in enumerate(STAGES, 1)}
    stages = {k: blocks for k, blocks in stages.items() if blocks}
    if not stages:
        raise ValueError("the model has no CBAM blocks: attention knock-outs need a CBAM architecture")
    return stages


def _forward_from(net: nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
    """layer4's output from `x`, the input of stage `stage` (1..4)."""
    for name in STAGES[stage - 1 :]:
        x = getattr(net, name)(x)
    return x


def _knockout(stage: int, gate: str, outcome: Outcome, cam: np.ndarray, intact_cam: np.ndarray) -> KnockOut:
    """A knock-out's row; a constant CAM has no peak, which counts as moved."""
    moved = bool(cam.max() == cam.min()) or peak(cam) != peak(intact_cam)
    return KnockOut(stage, gate, outcome, agreement(cam, intact_cam), moved, cam)


def _outcomes(
    net: nn.Module, features: torch.Tensor, targets: Sequence[int] | None, masks: Sequence[np.ndarray | None] | None
) -> tuple[list[Outcome], np.ndarray]:
    """Each image's Outcome from its layer4 activations, and its layer4 Grad-CAMs (N, h, w) of the target class
    (of the top-1 where `targets` is None)."""
    probs = torch.softmax(head(net, features).float(), dim=1)
    top1 = probs.argmax(dim=1)
    index = top1 if targets is None else torch.tensor(list(targets), device=features.device)
    cams = fast_gradcam(net.fc.weight, features, index[:, None])[:, 0].cpu().numpy()
    p_target = probs.gather(1, index[:, None])[:, 0].tolist()
    outcomes = []
    for i, (p, best) in enumerate(zip(p_target, top1.tolist())):
        mask = None if masks is None else masks[i]
        local = {}
        if mask is not None:
            heatmap = upsample(cams[i : i + 1], (mask.shape[1], mask.shape[0]))[0]
            local = {"pointing": pointing_hit(heatmap, mask), "energy": energy_in_mask(heatmap, mask)}
        outcomes.append(Outcome(p, best, **local))
    return outcomes, cams
