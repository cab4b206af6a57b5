"""`train-pair`: the whole recipe for both models on a tiny pack (32 px, a thousandth of the images), exact resume
after kill -9, finished phases skipped, `--status`, a changed plan refused, and the official CBAM init at step 0."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from conftest import kill_9_once_saved, make_stamps

from cbam_viz.cli import main
from cbam_viz.errors import CbamVizError
from cbam_viz.io.checkpoints import load_checkpoint
from cbam_viz.nn.resnet import DISPLAY_NAMES
from cbam_viz.train import add_arguments as add_train_arguments
from cbam_viz.train import pair
from cbam_viz.train.distributed import setup_distributed
from cbam_viz.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
TINY = ("--size", "32", "--scale", "0.001", "--workers", "0", "--device", "cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_stamps(tmp_path_factory.mktemp("stamps"), "val", per_class=2, size=48)


def pair_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train-pair", "--data", str(data), "--out", str(out), *TINY, *extra]


def final_states(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    last = pair.RECIPE[-1].name
    return {arch: load_checkpoint(out / arch / last / "final.safetensors").model.state_dict() for arch in pair.PAIR}


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory) -> Path:
    """The reference: the whole tiny recipe in one go."""
    out = tmp_path_factory.mktemp("straight")
    assert main(pair_argv(data_dir, out)) == 0
    return out


def test_full_run_writes_every_phase_of_both_models(straight, capsys):
    for arch in pair.PAIR:
        for phase in pair.RECIPE:
            run_dir = straight / arch / phase.name
            assert (run_dir / "final.safetensors").is_file() and (run_dir / "metrics.csv").is_file()
        loaded = load_checkpoint(straight / arch / pair.RECIPE[-1].name / "final.safetensors")
        recipe = loaded.meta.recipe
        assert loaded.meta.arch == arch and recipe["init"]["checkpoint"] == "final.safetensors"
        assert recipe["seed"] == pair.RECIPE[-1].seed and recipe["lr"] == pair.RECIPE[-1].lr
        first = load_checkpoint(straight / arch / pair.RECIPE[0].name / "final.safetensors").meta.recipe
        assert first["zero_init_residual"] is False and first["init"] == "random (torchvision init)"
    # Both models saw the same scene stream, phase by phase: the same images and step counts.
    assert main(pair_argv(Path("unused"), straight, "--status")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(pair.PAIR) * len(pair.RECIPE)
    assert all(line.endswith("finished") for line in lines), lines
    assert lines[0].startswith(DISPLAY_NAMES["resnet50"]) and "144 / 144 images" in lines[0]


def test_rerun_of_a_finished_run_skips_every_phase(straight, data_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in straight.rglob("*.safetensors")}
    assert main(pair_argv(data_dir, straight)) == 0
    assert {p: p.stat().st_mtime_ns for p in straight.rglob("*.safetensors")} == before
    assert ": phase " not in capsys.readouterr().err


def test_kill_9_mid_phase_then_rerun_gives_the_same_weights(data_dir, straight, tmp_path):
    out = tmp_path / "runs"
    argv = pair_argv(data_dir, out, "--checkpoint-every", "0")
    # Killed once the CBAM model's first phase has saved a step: mid-phase, with ResNet50's phase 1 finished.
    mid = out / "resnet50-cbam" / pair.RECIPE[0].name
    kill_9_once_saved(["cbam_viz", *argv], mid / "last.pt", 300)
    status = pair.phase_status(mid, pair.plan(parse_pair(argv))[0])
    assert 0 < status["done"] < 144 and not status["finished"]
    assert main(pair_argv(data_dir, out)) == 0
    reference, resumed = final_states(straight), final_states(out)
    for arch in pair.PAIR:
        assert [k for k in reference[arch] if not torch.equal(reference[arch][k], resumed[arch][k])] == []


def parse_pair(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pair.add_arguments(parser)
    return parser.parse_args(argv[1:])


def test_a_changed_plan_is_refused(straight, data_dir, capsys):
    assert main(pair_argv(data_dir, straight, "--scale", "0.002")) == 2
    err = capsys.readouterr().err
    assert "holds another plan" in err and "1-112px 144 images at 32 px" in err


def test_status_of_a_new_folder_and_bad_arguments(tmp_path, data_dir, capsys):
    assert main(pair_argv(data_dir, tmp_path / "new", "--status")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("0 / " in line and line.endswith("not started") for line in lines)
    assert main(pair_argv(tmp_path / "missing", tmp_path / "x")) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(pair_argv(data_dir, tmp_path / "y", "--scale", "0")) == 2
    assert "--scale must be a positive number" in capsys.readouterr().err


def test_first_phase_starts_from_the_official_cbam_init(data_dir, tmp_path):
    args = parse_pair(pair_argv(data_dir, tmp_path))
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    train_args = parser.parse_args(pair.phase_argv(args, "resnet50-cbam", pair.plan(args), 0))
    model = Trainer(train_args, None, *setup_distributed("cpu")).model
    last_bns = [m.bn3.weight for m in model.modules() if hasattr(m, "bn3")]
    assert len(last_bns) == 16 and all(bool((w == 1).all()) for w in last_bns)
    gates = [m.cbam.spatial.bn.weight for m in model.modules() if hasattr(m, "cbam")]
    assert len(gates) == 16 and all(bool((w == 0).all()) for w in gates)


def test_plan_scales_images_and_overrides_size():
    args = argparse.Namespace(size=224, scale=0.5)
    phases = pair.plan(args)
    assert [p.size for p in phases] == [224] * len(pair.RECIPE)
    assert [p.images for p in phases] == [round(p.images / 2) for p in pair.RECIPE]
    with pytest.raises(CbamVizError, match="--scale"):
        pair.plan(argparse.Namespace(size=None, scale=float("nan")))
