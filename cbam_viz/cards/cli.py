"""`python -m cbam_viz cards --data DIR`: measure every CAM method on each bundled model over a stamp-scenes split
and write their saliency cards (`cbam_viz.cards.card`) into --out.

The fast methods share one forward pass per map batch (`cbam_viz.cards.maps`); ScoreCAM, one forward pass per
channel, runs on --scorecam-images scenes, which its cards state. The cards' JSON keeps the methods of an earlier
run on the same data and checkpoints, so `--methods scorecam` adds ScoreCAM's cards later.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from cbam_viz.cam.engine import METHODS
from cbam_viz.cards.card import combined_verdict, write_cards
from cbam_viz.cards.maps import LAYER
from cbam_viz.cards.measure import measure, work_units
from cbam_viz.cards.randomisation import judge
from cbam_viz.cards.verdict import CARDS_JSON
from cbam_viz.errors import CbamVizError
from cbam_viz.eval.faithfulness import CAUSAL_STEPS
from cbam_viz.io.checkpoints import LoadedModel, load_pair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="stamp-scenes folder written by `data build`")
    parser.add_argument("--split", default="test", help="split to measure on (default: test)")
    parser.add_argument("--out", type=Path, default=Path("docs/cards"),
                        help="folder for the cards (default: docs/cards)")
    parser.add_argument("--images", type=int, default=200,
                        help="scenes for model dependence and localization (default: 200)")
    parser.add_argument("--faithfulness-images", type=int, default=8,
                        help="of those, the first N for ROAD, deletion and insertion (default: 8)")
    parser.add_argument("--scorecam-images", type=int, default=2,
                        help="scenes for ScoreCAM, one forward pass per channel (default: 2)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated methods to measure (default: all: {','.join(METHODS)})")
    parser.add_argument("--steps", type=int, default=CAUSAL_STEPS,
                        help=f"deletion and insertion steps (default: {CAUSAL_STEPS})")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cost-repeats", type=int, default=3, help="timed runs per fast method (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomised layers and ROAD's noise")
    parser.add_argument("--baseline", type=Path, help="baseline checkpoint (default: bundled)")
    parser.add_argument("--cbam", type=Path, help="CBAM checkpoint (default: bundled)")


def run(args: argparse.Namespace) -> int:
    from cbam_viz.data.splits import MaterializedSplit

    methods = check_arguments(args)
    split = MaterializedSplit(args.data, args.split)
    models = load_pair(args.baseline, args.cbam, "cpu")
    for key, loaded in models.items():
        if loaded.meta.class_names != split.class_names:
            raise CbamVizError(f"the {key} checkpoint's classes do not match the dataset's ({loaded.meta.source})")
    report = start_report(args, split, models)
    started = time.perf_counter()
    for group, count in method_groups(methods, args.images, args.scorecam_images):
        count = min(count, len(split))
        scenes = [split[i] for i in range(count)]
        batch = 1 if METHODS[group[0]].slow else min(args.batch_size, count)  # a slow map: a step of its own
        for key, loaded in models.items():
            with tqdm(total=work_units(count, len(group), batch), desc=f"{'+'.join(group)} on {key}",
                      unit="step") as bar:
                results = measure(loaded, scenes, group, args.faithfulness_images, args.steps, batch, args.seed,
                                  args.cost_repeats, bar.update)
            for name, measured in results.items():
                report["methods"].setdefault(name, {"models": {}})["models"][key] = measured
            refresh_verdicts(report)
            written = write_cards(report, args.out)
            print(f"{'+'.join(group)} on {key}: wrote {len(written)} files into {args.out} "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    return 0


def method_groups(methods: list[str], images: int, scorecam_images: int) -> list[tuple[list[str], int]]:
    """(methods measured together, scenes): the gradient methods share their maps' forward passes, EigenCAM needs
    no gradient, and each slow method runs alone on its reduced count."""
    groups = [[name for name in methods if METHODS[name].gradients],
              [name for name in methods if not METHODS[name].gradients and not METHODS[name].slow]]
    return [(group, images) for group in groups if group] + [
        ([name], scorecam_images) for name in methods if METHODS[name].slow]


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The methods asked for, in METHODS order; CbamVizError for unknown ones and counts below 1."""
    asked = [name.strip().lower() for name in args.methods.split(",") if name.strip()]
    unknown = sorted(set(asked) - set(METHODS))
    if unknown or not asked:
        named = ", ".join(unknown) or "(none given)"
        raise CbamVizError(f"unknown method(s) {named}; choose from {', '.join(METHODS)}")
    for option in ("images", "faithfulness_images", "scorecam_images", "steps", "batch_size", "cost_repeats"):
        if getattr(args, option) < 1:
            raise CbamVizError(f"--{option.replace('_', '-')} must be at least 1")
    return [name for name in METHODS if name in asked]


def start_report(args: argparse.Namespace, split, models: dict[str, LoadedModel]) -> dict:
    """The report to fill: the earlier cards.json in --out where it was measured on the same data, checkpoints and
    settings (its other methods are kept), else a new one."""
    side = models["baseline"].meta.input_size
    report = {
        "data": {"split": args.split, "dataset_hash": split.pack_hash, "available": len(split)},
        "settings": {"layer": LAYER, "interpolation": "bilinear (OpenCV's resize, as grad-cam)",
                     "input_size": side, "map_side": side // 32,
                     "steps": args.steps, "seed": args.seed},
        "models": {key: {"name": loaded.meta.display_name, "checkpoint": Path(loaded.meta.source).name,
                         "arch": loaded.meta.arch} for key, loaded in models.items()},
        "methods": {},
    }
    path = args.out / CARDS_JSON
    if path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if all(earlier.get(part) == report[part] for part in ("data", "settings", "models")):
            report["methods"] = earlier["methods"]
    return report


def refresh_verdicts(report: dict) -> None:
    """Put the methods in the app's order, judge each model's randomisation curve by the rule and set each method's
    verdict from its models' judgements."""
    names = {key: model["name"] for key, model in report["models"].items()}
    report["methods"] = {name: report["methods"][name] for name in METHODS if name in report["methods"]}
    for entry in report["methods"].values():
        for measured in entry["models"].values():
            measured["judgement"] = judge(measured["curve"])
        entry["verdict"] = combined_verdict({k: m["judgement"] for k, m in entry["models"].items()}, names)
