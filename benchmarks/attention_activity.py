"""How image-specific each CBAM block's attention is, for one or more CBAM checkpoints on a stamp-scenes split:
per image, the range (max - min) of the block's spatial map and the standard deviation of its channel weights;
medians over the split per block and per stage, and the shipping rule's check on layer4 (every layer4 block's
median spatial range >= 0.3 and median channel std >= 0.1; weights/RECIPE.md).

    python benchmarks/attention_activity.py --data data/stamps32v2 --split test \
        weights/resnet50_cbam.safetensors runs/pair/resnet50-cbam/2-224px/final.safetensors \
        --names bundled new --out weights/figures/attention_activity

Writes OUT.json (every median and the rule's verdict) and OUT.png (per-stage distributions, one colour per model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbam_viz.cam.engine import preprocess  # noqa: E402
from cbam_viz.data.splits import MaterializedSplit  # noqa: E402
from cbam_viz.io.checkpoints import load_checkpoint  # noqa: E402
from cbam_viz.nn.attention import capture_attention  # noqa: E402
from cbam_viz.nn.resnet import STAGES  # noqa: E402

RULE = {"spatial_range": 0.3, "channel_std": 0.1}  # layer4, every block: median over the split at least this


def measure(
    path: Path, split: MaterializedSplit, batch_size: int, limit: int | None
) -> tuple[dict[str, dict[str, list]], dict[str, float]]:
    """Per block and figure, the per-image values over the split (at the checkpoint's input size); and per block
    with a spatial gate, the standard deviation across images of Ms at each position, averaged over positions: a
    map with a large range that is the same on every image (a fixed pattern) scores near 0 here."""
    loaded = load_checkpoint(path, arch="resnet50-cbam")
    values: dict[str, dict[str, list]] = {}
    sums: dict[str, list[torch.Tensor]] = {}  # block -> [sum of Ms, sum of Ms^2] over images
    count = min(len(split), limit or len(split))
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            images = [split[i].image for i in range(start, min(start + batch_size, count))]
            with capture_attention() as maps:
                loaded.model(preprocess(images, loaded.meta))
            for block, figures in maps.activity().items():
                for figure, per_image in figures.items():
                    values.setdefault(block, {}).setdefault(figure, []).extend(per_image.tolist())
            for block, ms in maps.spatial.items():
                ms = ms.double()
                acc = sums.setdefault(block, [torch.zeros_like(ms[0]), torch.zeros_like(ms[0])])
                acc[0] += ms.sum(0)
                acc[1] += (ms * ms).sum(0)
    across = {
        block: float(((sq / count - (s / count) ** 2).clamp(min=0) * count / max(count - 1, 1)).sqrt().mean())
        for block, (s, sq) in sums.items()
    }
    return values, across


def summarise(values: dict[str, dict[str, list]], across: dict[str, float]) -> dict:
    """Medians per block and per stage (all the stage's blocks' images pooled), the across-image variation per
    block, and the layer4 rule."""
    blocks = {b: {f: float(np.median(v)) for f, v in figs.items()} for b, figs in values.items()}
    for block, value in across.items():
        blocks[block]["spatial_across_images"] = value
    stages = {}
    for stage in STAGES:
        pooled: dict[str, list] = {}
        for block, figs in values.items():
            if block.startswith(f"{stage}."):
                for figure, v in figs.items():
                    pooled.setdefault(figure, []).extend(v)
        stages[stage] = {f: float(np.median(v)) for f, v in pooled.items()}
    layer4 = [figs for block, figs in blocks.items() if block.startswith("layer4.")]
    passed = bool(layer4) and all(figs.get(f, 0.0) >= bound for figs in layer4 for f, bound in RULE.items())
    return {"blocks": blocks, "stages": stages, "layer4_rule": {"bounds": RULE, "met": passed}}


def plot(values: dict[str, dict[str, dict[str, list]]], out: Path) -> None:
    """Box plots per stage of both figures, one box per model, side by side."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    for ax, figure in zip(fig.subplots(1, 2), ("spatial_range", "channel_std")):
        names = list(values)
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            data = [
                [x for b, figs in values[name].items() if b.startswith(f"{s}.") for x in figs.get(figure, [])]
                for s in STAGES
            ]
            positions = [i + (k - (len(names) - 1) / 2) * width for i in range(len(STAGES))]
            box = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
            for patch in box["boxes"]:
                patch.set_facecolor(f"C{k}")
            ax.plot([], [], color=f"C{k}", linewidth=6, label=name)
        if figure in RULE:
            ax.axhline(RULE[figure], color="k", linestyle=":", linewidth=1, label=f"layer4 rule ({RULE[figure]})")
        ax.set_xticks(range(len(STAGES)), STAGES)
        labels = {"spatial_range": "spatial map: max - min per image", "channel_std": "channel weights: std"}
        ax.set_ylabel(labels[figure])
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle("How image-specific CBAM's attention is, per stage (all blocks' images pooled)")
    fig.savefig(out, format="png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="CBAM-ResNet50 checkpoints")
    parser.add_argument("--names", nargs="+", help="a short name per checkpoint (default: the file names)")
    parser.add_argument("--data", type=Path, required=True, help="folder written by `data build`")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--limit", type=int, help="only the first N scenes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.png")
    args = parser.parse_args()
    names = args.names or [p.name for p in args.checkpoints]
    if len(names) != len(args.checkpoints):
        parser.error(f"{len(names)} names for {len(args.checkpoints)} checkpoints")
    split = MaterializedSplit(args.data, args.split)
    measured = {name: measure(path, split, args.batch_size, args.limit) for name, path in zip(names, args.checkpoints)}
    values = {name: v for name, (v, _) in measured.items()}
    report = {name: summarise(v, across) for name, (v, across) in measured.items()}
    nan = float("nan")
    for name, summary in report.items():
        print(f"{name}: medians per image, spatial range / channel std (per block also: std of Ms across images); "
              f"layer4 rule met: {summary['layer4_rule']['met']}")  # fmt: skip
        for stage, figs in summary["stages"].items():
            blocks = [
                f"{b} {f.get('spatial_range', nan):.3f}/{f['channel_std']:.3f} "
                f"({f.get('spatial_across_images', nan):.3f})"
                for b, f in summary["blocks"].items()
                if b.startswith(f"{stage}.")
            ]
            print(f"  {stage}: {figs.get('spatial_range', nan):.3f} / {figs['channel_std']:.3f}   "
                  + "  ".join(blocks))  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"split": args.split, "scenes": min(len(split), args.limit or len(split)),
                "checkpoints": dict(zip(names, map(str, args.checkpoints)))}  # fmt: skip
        args.out.with_suffix(".json").write_text(json.dumps({**meta, "models": report}, indent=1) + "\n")
        plot(values, args.out.with_suffix(".png"))
        print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
