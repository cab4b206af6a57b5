"""`train-pair`: the published recipe for both architectures, every phase, in one resumable command.

    python -m cbam_viz train-pair --data data/stamps32v2 --out runs/pair

Both models get the same phases (`RECIPE`), seeds, precision rule and scene stream. Phase 1 starts from the official
CBAM initialisation (torchvision's init without `zero_init_residual`, each spatial gate's BN weight at 0); each later
phase starts from the previous phase's final weights, with a new seed so that its scenes are new ones. Each phase is
one `train` run in RUNS/<arch>/<phase>/; rerunning the same command skips the finished phases and resumes the one in
progress from its last.pt. RUNS/plan.json records the plan, so a rerun cannot silently change it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cbam_viz.io.fileio import atomic_write_bytes
from cbam_viz.nn.resnet import DISPLAY_NAMES
from cbam_viz.train.config import FINAL, LAST, TrainError
from cbam_viz.train.config import add_arguments as add_train_arguments
from cbam_viz.train.run_files import load_last

PAIR = ("resnet50", "resnet50-cbam")
PLAN = "plan.json"


@dataclass(frozen=True)
class Phase:
    """One training run of the recipe, the same for both architectures."""

    name: str
    size: int  # image side in px
    images: int  # training images in this phase
    lr: float  # peak learning rate (batch 32), reached after the warmup, then cosine to 0
    warmup: float  # fraction of the phase's steps warming up
    seed: int  # seed of the scene stream (and of phase 1's initial weights)
    eval_every: int  # validate every this many images


# Most images at 112 px (a 4x4 layer4 map), then the paper's 224 px (7x7), where layer4's spatial gate learns the
# pattern the app shows. Phase 1's peak lr is half of `train`'s default, which leaned on zero-init residual branches.
RECIPE = (
    Phase("1-112px", size=112, images=144_000, lr=0.05, warmup=0.05, seed=0, eval_every=16_000),
    Phase("2-224px", size=224, images=64_000, lr=0.02, warmup=0.05, seed=1, eval_every=8_000),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m cbam_viz train-pair`."""
    parser.add_argument("--data", type=Path, required=True, help="a folder written by `data build --out`, or photos")
    parser.add_argument("--out", type=Path, required=True, help="the runs folder: OUT/<arch>/<phase>/ per run")
    parser.add_argument("--status", action="store_true", help="print the table of phases and exit, training nothing")
    parser.add_argument(
        "--size", type=int,
        help="train every phase at this side instead of the recipe's (e.g. 224 throughout on a GPU)",
    )  # fmt: skip
    parser.add_argument(
        "--scale", type=float, default=1.0,
        help="multiply every phase's image count (e.g. 0.001 for a smoke test; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--arch", choices=PAIR, action="append", help="train only this one (repeatable; default: both)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    parser.add_argument(
        "--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
        help="autocast dtype, as `train` (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, help="CPU threads of the training process (default: all cores)")
    parser.add_argument("--workers", type=int, help="data-loading processes (default: 1 on CPU, 6 on CUDA)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="as `train`")
    parser.add_argument(
        "--checkpoint-every", type=float, default=180.0, metavar="SECONDS",
        help="save the phase's last.pt at least this often (default: %(default)s)",
    )  # fmt: skip


def plan(args: argparse.Namespace) -> tuple[Phase, ...]:
    """The recipe's phases with --size and --scale applied."""
    if args.scale <= 0 or not math.isfinite(args.scale):
        raise TrainError(f"--scale must be a positive number (got {args.scale})")
    phases = []
    for phase in RECIPE:
        images = max(32, round(phase.images * args.scale))
        size = args.size or phase.size
        phases.append(
            replace(phase, size=size, images=images, eval_every=max(32, round(phase.eval_every * args.scale)))
        )
    return tuple(phases)


def check_plan(out: Path, phases: tuple[Phase, ...], data: Path) -> None:
    """Write OUT/plan.json on the first run; on a rerun, refuse a different plan or data folder."""
    wanted = {"phases": [asdict(phase) for phase in phases], "data": str(data)}
    path = out / PLAN
    if path.is_file():
        have = json.loads(path.read_text())
        if have != wanted:
            phases_had = ", ".join(f"{p['name']} {p['images']:,} images at {p['size']} px" for p in have["phases"])
            raise TrainError(
                f"{path} holds another plan (data {have['data']}; {phases_had}): rerun with the options it was "
                "started with, or give another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(wanted, indent=1) + "\n").encode())


def phase_argv(args: argparse.Namespace, arch: str, phases: tuple[Phase, ...], index: int) -> list[str]:
    """The `train` options of one arch's phase."""
    phase, out = phases[index], args.out / arch
    argv = [
        "--data", str(args.data), "--out", str(out / phase.name), "--images", str(phase.images),
        "--size", str(phase.size), "--lr", str(phase.lr), "--warmup", str(phase.warmup), "--seed", str(phase.seed),
        "--eval-every", str(phase.eval_every), "--device", args.device, "--precision", args.precision,
        "--checkpoint-every", str(args.checkpoint_every), "--compile" if args.compile else "--no-compile",
    ]  # fmt: skip
    if index == 0:
        argv += ["--arch", arch, "--no-zero-init-residual"]
    else:
        argv += ["--init", str(out / phases[index - 1].name / FINAL)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    return argv


def phase_status(run_dir: Path, phase: Phase) -> dict:
    """Where one phase stands: images done, last validation top-1 and the measured speed (None when unknown)."""
    done, top1, speed = 0, None, None
    if (run_dir / LAST).is_file():
        state = load_last(run_dir / LAST)
        done = state["step"] * state["config"]["batch_size"]
        if state["history"]:
            top1, speed = state["history"][-1]["val_top1"], state["history"][-1]["img_per_s"]
    finished = (run_dir / FINAL).is_file() and done >= phase.images
    return {"done": min(done, phase.images), "finished": finished, "top1": top1, "speed": speed}


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def status_lines(out: Path, archs: tuple[str, ...], phases: tuple[Phase, ...]) -> list[str]:
    """One line per arch and phase: images done / total, last validation top-1, time left at the current speed
    (a phase not yet started is estimated from the arch's latest speed, scaled by the pixels per image)."""
    lines = []
    for arch in archs:
        known = None  # (img/s, size) of this arch's latest measured phase
        for phase in phases:
            st = phase_status(out / arch / phase.name, phase)
            if st["speed"]:
                known = (st["speed"], phase.size)
            left = phase.images - st["done"]
            if st["finished"]:
                when = "finished"
            elif known:
                speed = known[0] * (known[1] / phase.size) ** 2
                when = f"{'' if st['speed'] else '~'}{_duration(left / speed)} left at {speed:.1f} img/s"
            else:
                when = "not started" if not st["done"] else "speed not measured yet"
            top1 = f"val top-1 {st['top1']:.1f}%" if st["top1"] is not None else "val top-1 -"
            lines.append(
                f"{DISPLAY_NAMES[arch]:<14} {phase.name:<8} {st['done']:>9,} / {phase.images:,} images  {top1}  {when}"
            )
    return lines


def run(args: argparse.Namespace) -> int:
    """Train every unfinished phase of both architectures in order; 130 when a phase was stopped by a signal."""
    from cbam_viz.train.loop import train

    phases = plan(args)
    archs = tuple(args.arch) if args.arch else PAIR
    if args.status:
        print("\n".join(status_lines(args.out, archs, phases)))
        return 0
    if not args.data.is_dir():
        raise TrainError(f"--data {args.data} is not a folder: build it with `python -m cbam_viz data build`")
    check_plan(args.out, phases, args.data)
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    for index, phase in enumerate(phases):
        for arch in archs:
            run_dir = args.out / arch / phase.name
            if phase_status(run_dir, phase)["finished"]:
                continue
            print("\n".join(status_lines(args.out, archs, phases)), file=sys.stderr)
            print(f"{DISPLAY_NAMES[arch]}: phase {phase.name} in {run_dir}", file=sys.stderr)
            if not train(parser.parse_args(phase_argv(args, arch, phases, index))).completed:
                return 130
    print("\n".join(status_lines(args.out, archs, phases)), file=sys.stderr)
    print("the pair: " + ", ".join(str(args.out / arch / phases[-1].name / FINAL) for arch in archs), file=sys.stderr)
    return 0
