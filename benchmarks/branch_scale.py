"""How much each residual branch contributes: |bn3 weight| per block, for CBAM blocks that times the mean
channel gate Mc and the mean spatial gate Ms on validation scenes (the branch's effective output scale), and for
every block the norm of the branch's output over the norm of its shortcut on those scenes.

    python benchmarks/branch_scale.py --data data/stamps32v2 weights/resnet50_baseline.safetensors \
        weights/resnet50_cbam.safetensors

Why: with `zero_init_residual` every branch starts at zero and, in CBAM blocks, its gradient passes through both
gates (about 0.5 each), so CBAM's branches may grow more slowly than the baseline's; this measures whether they did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.models.resnet import Bottleneck

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbam_viz.cam.engine import preprocess  # noqa: E402
from cbam_viz.data.splits import MaterializedSplit  # noqa: E402
from cbam_viz.io.checkpoints import load_checkpoint  # noqa: E402
from cbam_viz.nn.attention import capture_attention  # noqa: E402


def watch_branches(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Hook every bottleneck so a forward pass records the L2 norms of its branch output (after CBAM, where present,
    before the add) and of its shortcut (the block's input, or the downsample projection's output), by block name.
    The norms are taken inside the hooks: torchvision's block adds the shortcut onto bn3's output in place."""
    seen: dict[str, dict[str, float]] = {}

    def keep(block: str, part: str, from_input: bool = False):
        def hook(module, inputs, output):
            seen.setdefault(block, {})[part] = (inputs[0] if from_input else output).float().norm().item()
        return hook

    for name, module in model.named_modules():
        if isinstance(module, Bottleneck):  # CBAMBottleneck too
            module.register_forward_hook(keep(name, "input", from_input=True))
            getattr(module, "cbam", module.bn3).register_forward_hook(keep(name, "branch"))
            if module.downsample is not None:
                module.downsample.register_forward_hook(keep(name, "shortcut"))
    return seen


def branch_scales(path: Path, val: MaterializedSplit, scenes: int) -> dict[str, dict[str, float]]:
    """Per block: `bn3` = mean |bn3.weight|, `ratio` = |branch output| / |shortcut| (L2 norms over the scenes); for
    CBAM blocks also the mean gates and their product with `bn3`."""
    loaded = load_checkpoint(path)
    model = loaded.model.float().eval()
    seen = watch_branches(model)
    x = preprocess([val[i].image.convert("RGB") for i in range(min(scenes, len(val)))], loaded.meta)
    with torch.inference_mode(), capture_attention() as maps:
        model(x)
    rows = {}
    for key, weight in model.state_dict().items():
        if key.endswith(".bn3.weight"):
            block = key.removesuffix(".bn3.weight")
            parts = seen[block]
            shortcut = parts.get("shortcut", parts["input"])
            row = {"bn3": weight.abs().mean().item(), "ratio": parts["branch"] / shortcut}
            if block in maps.spatial:
                row["mc"] = maps.channel[block].mean().item()
                row["ms"] = maps.spatial[block].mean().item()
                row["effective"] = row["bn3"] * row["mc"] * row["ms"]
            rows[block] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/stamps"), help="folder written by `data build`")
    parser.add_argument("--scenes", type=int, default=64, help="validation scenes for the gate means")
    args = parser.parse_args()
    val = MaterializedSplit(args.data, "val")
    for path in args.checkpoints:
        print(path)
        print(f"  {'block':10s} {'|bn3|':>7s} {'|branch|/|shortcut|':>20s} {'mean Mc':>8s} {'mean Ms':>8s} "
              f"{'|bn3|*Mc*Ms':>12s}")
        for block, row in branch_scales(path, val, args.scenes).items():
            gates = f"{row['mc']:8.2f} {row['ms']:8.2f} {row['effective']:12.4f}" if "mc" in row else ""
            print(f"  {block:10s} {row['bn3']:7.3f} {row['ratio']:20.3f} {gates}".rstrip())


if __name__ == "__main__":
    main()
