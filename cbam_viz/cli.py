"""Command-line dispatcher: each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

from cbam_viz.errors import CbamVizError

# subcommand -> (module, one-line help). Modules are imported lazily so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "app": ("cbam_viz.app.launch", "serve the page that compares the two models, its HTTP API and MCP tools"),
    "export": ("cbam_viz.export.cli", "export Grad-CAM heatmaps of both models for files, folders or globs"),
    "merge": ("cbam_viz.export.merge", "join the manifests of sharded export runs into one"),
    "bench": ("cbam_viz.bench", "measure compare/CAM/export speed against bare forward passes"),
    "data": ("cbam_viz.data.build", "build the stamp-scenes asset pack and its splits, or write them as an ImageFolder"),
    "train": ("cbam_viz.train", "train a ResNet or CBAM-ResNet on stamp scenes or photos (ImageFolder, ImageNet)"),
    "train-pair": ("cbam_viz.train.pair", "train ResNet50 and CBAM-ResNet50 by the published recipe, resumably"),
    "eval": ("cbam_viz.eval.cli", "accuracy and Grad-CAM localization of checkpoints on stamp scenes or photos"),
    "familiarity": ("cbam_viz.familiarity.cli", "fit a checkpoint's familiarity detector, or measure every detector"),
    "cards": ("cbam_viz.cards.cli", "measure every CAM method on the bundled models and write their saliency cards"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported to fill in its options (keeps startup fast)."""
    parser = argparse.ArgumentParser(
        prog="cbam-viz" if Path(sys.argv[0]).name == "cbam-viz" else "python -m cbam_viz",
        description="CBAM Grad-CAM Studio: serve the app, export heatmaps, benchmark, build data, train, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, and turn CbamVizError into a one-line message and exit code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return run_module(importlib.import_module(COMMANDS[args.command][0]), args)


def standalone(module: ModuleType, argv: list[str] | None, prog: str, description: str | None = None) -> int:
    """Run one command module on its own (`python -m cbam_viz.<module>`, torchrun) with the CLI's error handling."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    module.add_arguments(parser)
    return run_module(module, parser.parse_args(argv))


def run_module(module: ModuleType, args: argparse.Namespace) -> int:
    """Call `module.run(args)`; a CbamVizError becomes a one-line message and exit code 2, Ctrl-C exit code 130."""
    try:
        return int(module.run(args) or 0)
    except CbamVizError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
