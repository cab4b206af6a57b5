"""Where held-out accuracy is lost: top-1 of checkpoints on fresh scenes over training vs held-out backgrounds.

    python benchmarks/background_gap.py --data data/stamps32 runs/A/best.safetensors runs/B/best.safetensors

Scenes are composed on the fly at each checkpoint's input size (train backgrounds with `--unseen-seed`, which no
training used, and seed 0, whose first scenes the bundled chain trained on; val and test backgrounds) and compared
with the materialized val split, the model in eval mode, plus the training backgrounds with batch-statistics BN.
Separates a background gap (train-background scenes high, held-out low) from memorised scenes (seed 0 >> unseen
seed), BN statistics or the 224 px -> input resize.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbam_viz.data.pack import AssetPack  # noqa: E402
from cbam_viz.data.scenes import compose_scene  # noqa: E402
from cbam_viz.data.source import scenes_to_tensors  # noqa: E402
from cbam_viz.data.splits import MaterializedSplit  # noqa: E402
from cbam_viz.io.checkpoints import IMAGENET_MEAN, IMAGENET_STD, load_checkpoint  # noqa: E402


def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_stats: bool = False) -> float:
    """Top-1 accuracy (%) of uint8 NCHW images; `batch_stats` runs BN in training mode on a copy of the model
    (training-mode BN updates its running statistics even under inference_mode)."""
    if batch_stats:
        model = copy.deepcopy(model)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.train(batch_stats)
    hits = 0
    with torch.inference_mode():
        for i in range(0, len(images), 32):
            x = images[i : i + 32].float().div(255).sub(mean).div(std).contiguous(memory_format=torch.channels_last)
            hits += int((model(x).argmax(1) == labels[i : i + 32]).sum())
    model.eval()
    return 100 * hits / max(len(images), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/stamps"), help="folder written by `data build`")
    parser.add_argument("--scenes", type=int, default=320, help="composed scenes per case")
    parser.add_argument(
        "--unseen-seed",
        type=int,
        default=1000,
        help="scene seed no training used (the bundled chain used seeds 0-2, 4, 5 and 7)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pack = AssetPack.load(args.data / "pack")
    val = MaterializedSplit(args.data, "val")
    for path in args.checkpoints:
        loaded = load_checkpoint(path)
        model, size = loaded.model.float(), loaded.meta.input_size

        def composed(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
            return scenes_to_tensors((compose_scene(pack, split, i, size, seed) for i in range(args.scenes)), size)

        train_unseen = composed("train", args.unseen_seed)
        rows = {
            f"train backgrounds, unseen scenes (seed {args.unseen_seed})": top1(model, *train_unseen),
            "train backgrounds, trained-on scenes (seed 0)": top1(model, *composed("train", 0)),
            "train backgrounds, unseen, batch-statistics BN": top1(model, *train_unseen, batch_stats=True),
            "val backgrounds, composed": top1(model, *composed("val", 0)),
            "test backgrounds, composed": top1(model, *composed("test", 0)),
            f"materialized val ({val.size} px resized)": top1(
                model, *scenes_to_tensors((val[i] for i in range(len(val))), size)
            ),
        }
        print(f"{path} ({loaded.meta.display_name}, {size} px)")
        for name, value in rows.items():
            print(f"  {name:48s} {value:5.1f}%")


if __name__ == "__main__":
    main()
