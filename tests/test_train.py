"""`train`: a tiny run's files, exact resume (after a stop and after SIGKILL), 2-process gloo DDP, bad arguments.

Everything runs on a synthetic asset pack made here, at 32 px with batches of 4, on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import kill_9_once_saved, make_stamps
from test_imagefolder import photo_root  # noqa: F401 (a fixture)

from cbam_viz import train as tr
from cbam_viz.data.pack import AssetPack
from cbam_viz.data.source import scenes_to_tensors
from cbam_viz.data.splits import MaterializedSplit
from cbam_viz.errors import CbamVizError
from cbam_viz.eval.scenes import evaluate
from cbam_viz.io.checkpoints import load_checkpoint, load_pair
from cbam_viz.nn.resnet import build_model
from cbam_viz.train.distributed import Dist
from cbam_viz.train.optim import lr_factor, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32
BATCH = 4
STEPS = 4
EVAL_EVERY = 3 * BATCH  # evaluations at steps 3 and 4 (the end)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A stamp-scenes folder: a 3-class synthetic pack and a 6-scene val split at 48 px (resized to 32 when used)."""
    root = tmp_path_factory.mktemp("stamps")
    return make_stamps(root, "val", per_class=2, size=48)


def argv(data: Path, out: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return [
        "--arch", "resnet50", "--data", str(data), "--out", str(out), "--steps", str(steps),
        "--batch-size", str(BATCH), "--size", str(SIZE), "--eval-every", str(EVAL_EVERY), "--workers", "0",
        "--device", "cpu", *extra,
    ]  # fmt: skip


def parse(args: list[str]):
    parser = argparse.ArgumentParser()
    tr.add_arguments(parser)
    return parser.parse_args(args)


def params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the entries that differ (bitwise)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory) -> tr.TrainResult:
    """The reference: STEPS steps in one go."""
    return tr.train(parse(argv(data_dir, tmp_path_factory.mktemp("straight"))))


def test_tiny_run_writes_metrics_curves_and_checkpoints(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert tr.main(argv(data_dir, out, "--arch", "resnet50-cbam", "--precision", "bf16")) == 0  # (auto: fp32 on AVX2)

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["images"]) for r in rows] == [12, 16]  # every 12 images, and at the end
    assert [int(r["step"]) for r in rows] == [3, 4]
    assert set(tr.METRIC_COLUMNS) <= set(rows[0])
    for row in rows:
        assert math.isfinite(float(row["train_loss"])) and 0 <= float(row["val_top1"]) <= 100
        assert float(row["val_top1"]) <= float(row["val_top5"]) and float(row["img_per_s"]) > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    pack = AssetPack.load(data_dir / "pack")
    for name in ("final.safetensors", "best.safetensors"):
        loaded = load_checkpoint(out / name)
        meta = loaded.meta
        assert meta.arch == "resnet50-cbam" and meta.class_names == pack.class_names and meta.input_size == SIZE
        assert meta.dataset["pack_hash"] == pack.pack_hash and meta.dataset["version"] == pack.version
        assert meta.dataset["val_images"] == 6
        assert 0 <= meta.metrics["val_top1"] <= meta.metrics["val_top5"] <= 100
        recipe = meta.recipe
        assert recipe["batch_size"] == BATCH and recipe["steps"] == 4 and recipe["nesterov"] is True
        assert recipe["label_smoothing"] == 0.1 and recipe["lr"] == pytest.approx(0.1 * BATCH / 32)
        assert recipe["zero_init_residual"] is True and recipe["torch"] == torch.__version__
        assert recipe["device"].startswith("cpu") and recipe["wall_time_s"] >= 0 and recipe["precision"] == "bf16"
        assert 0 < recipe["images_seen"] <= 16
    final = load_checkpoint(out / "final.safetensors")
    assert final.meta.recipe["images_seen"] == 16
    assert final.meta.metrics["val_top1"] == pytest.approx(float(rows[-1]["val_top1"]), rel=1e-5)

    last = torch.load(out / "last.pt", weights_only=True)  # only tensors and primitive containers inside
    assert last["step"] == 4 and len(last["history"]) == 2

    # Running the finished run again changes nothing and says so quickly.
    before = (out / "metrics.csv").read_text()
    assert tr.main(["--out", str(out), "--device", "cpu"]) == 0
    assert (out / "metrics.csv").read_text() == before
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4


def test_resume_after_stop_is_exact(data_dir, tmp_path, straight):
    out = tmp_path / "run"
    first = tr.train(parse(argv(data_dir, out)), stop_after=STEPS // 2)
    assert not first.completed and first.step == STEPS // 2
    # Options left out come from last.pt; the data loader may use workers this time: same scenes, same order.
    second = tr.train(parse(["--out", str(out), "--workers", "1", "--device", "cpu"]))
    assert second.completed and second.step == STEPS
    assert params_equal(straight.model.state_dict(), second.model.state_dict()) == []
    key = ("images", "step", "lr", "train_loss", "train_acc", "val_top1", "val_top5", "val_images")
    assert [[r[k] for k in key] for r in second.history] == [[r[k] for k in key] for r in straight.history]


def test_resume_after_sigkill_is_exact(data_dir, tmp_path, straight):
    out = tmp_path / "run"
    kill_9_once_saved(["cbam_viz.train", *argv(data_dir, out, "--checkpoint-every", "0")], out / "last.pt", 120)
    killed_at = torch.load(out / "last.pt", weights_only=True, mmap=True)["step"]
    assert 1 <= killed_at < STEPS
    resumed = tr.train(parse(["--out", str(out), "--device", "cpu"]))
    assert resumed.completed
    assert params_equal(straight.model.state_dict(), resumed.model.state_dict()) == []


def _ddp_worker(rank: int, init_file: str, data: str, out: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result = tr.train(parse(argv(Path(data), Path(out), steps=3)))
        torch.save(
            {"state": result.model.state_dict(), "history": result.history, "completed": result.completed,
             "unreadable": result.unreadable},
            Path(result_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("source", ["data_dir", "photo_root"])  # stamp scenes; an ImageFolder with an unreadable file
def test_two_process_gloo_ddp_stays_in_sync(source, request, tmp_path):
    data = request.getfixturevalue(source)
    out, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    torch.multiprocessing.spawn(
        _ddp_worker, args=(str(tmp_path / "pg"), str(data), str(out), str(results)), nprocs=2, join=True
    )
    r0, r1 = (torch.load(results / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["completed"] and r1["completed"]
    assert params_equal(r0["state"], r1["state"]) == []  # parameters and BN buffers identical on both ranks
    key = ("images", "step", "lr", "train_loss", "train_acc", "val_top1", "val_top5", "val_images")
    assert [[r[k] for k in key] for r in r0["history"]] == [[r[k] for k in key] for r in r1["history"]]
    assert all(math.isfinite(row["train_loss"]) for row in r0["history"])
    assert r0["history"][-1]["images"] == 3 * BATCH and r0["history"][-1]["val_images"] == 6
    # the unreadable training file one rank met is reported from both ranks' notes, the same on each
    expected = ["ant/broken.jpg (broken.jpg is truncated or corrupt.)"] if source == "photo_root" else []
    assert r0["unreadable"] == r1["unreadable"] == {"train": expected, "val": []}
    assert not torch.equal(r0["state"]["fc.weight"], build_model("resnet50", 3).state_dict()["fc.weight"])
    assert sorted(p.name for p in out.iterdir()) == [
        "best.safetensors", "curves.png", "final.safetensors", "last.pt", "metrics.csv",
    ]  # fmt: skip
    meta = load_checkpoint(out / "final.safetensors").meta
    assert meta.recipe["world_size"] == 2 and meta.recipe["batch_size"] == BATCH


def test_ranks_read_distinct_slices_of_one_stream():
    per_rank = [[tr.rank_indices(step, 8, rank, 2) for step in range(3)] for rank in range(2)]
    assert per_rank[0][1] == [8, 9, 10, 11] and per_rank[1][1] == [12, 13, 14, 15]
    flat = sorted(i for rank in per_rank for batch in rank for i in batch)
    assert flat == list(range(24))  # every index once: the same global stream as one process with batch 8
    assert list(tr.StepBatches(1, 3, 8, 1, 2)) == per_rank[1][1:]


class SchedulerPolicy(torch.utils.data.Dataset):
    """Each item is the scheduling policy of the process that loads it."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        return os.sched_getscheduler(0)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
def test_loader_workers_of_a_cpu_run_take_only_idle_cpu_time(data_dir, tmp_path):
    parser = argparse.ArgumentParser()
    tr.add_arguments(parser)
    args = parser.parse_args(["--arch", "resnet50", "--data", str(data_dir), "--out", str(tmp_path), "--steps", "1"])
    trainer = tr.Trainer(args, None, Dist(), torch.device("cpu"))
    for device, policy in (("cpu", os.SCHED_IDLE), ("cuda", os.sched_getscheduler(0))):
        trainer.device = torch.device(device)
        options = {**trainer._loader_options(1), "pin_memory": False}
        assert next(iter(torch.utils.data.DataLoader(SchedulerPolicy(), **options))).item() == policy


def test_schedule_and_weight_decay_groups():
    steps, warmup = 100, 5
    factors = [lr_factor(s, steps, warmup) for s in range(steps)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and 0 < factors[-1] < 0.001
    model = build_model("resnet50-cbam", 3)
    decay, no_decay = param_groups(model, 5e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert {"bn1.weight", "bn1.bias", "fc.bias", "layer1.0.cbam.spatial.bn.weight"} <= {
        names[id(p)] for p in no_decay["params"]
    }
    assert decay["weight_decay"] == 5e-5 and no_decay["weight_decay"] == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--size", "16"], "--size must be at least 32"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--warmup", "1.5"], "--warmup is a fraction"),
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--precision", "fp16"], "needs a CUDA device"),
        (["--target-scale", "0.5", "0.2"], "--target-scale needs 0 < MIN <= MAX <= 1"),
        (["--target-scale", "0", "0.5"], "--target-scale needs"),
    ],
)
def test_bad_arguments_are_clear_errors(data_dir, tmp_path, extra, message):
    with pytest.raises(CbamVizError, match=message):
        tr.run(parse(argv(data_dir, tmp_path / "run", *extra)))
    assert not (tmp_path / "run").exists()


def test_bad_data_and_run_folders(data_dir, tmp_path, capsys):
    with pytest.raises(CbamVizError, match=r"--arch \(or --init\) is required"):
        tr.run(parse(["--data", str(data_dir), "--out", str(tmp_path / "a"), "--device", "cpu"]))
    with pytest.raises(CbamVizError, match="not a data folder this tool reads. It does not exist"):
        tr.run(parse(argv(tmp_path / "nowhere", tmp_path / "b")))
    if not torch.cuda.is_available():
        with pytest.raises(CbamVizError, match="no CUDA device"):
            tr.run(parse(argv(data_dir, tmp_path / "c")[:-2] + ["--device", "cuda"]))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "last.pt").write_bytes(b"not a checkpoint")
    assert tr.main(argv(data_dir, tmp_path / "d")) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_resume_refuses_other_recipe(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    tr.train(parse(argv(data_dir, out, steps=2)), stop_after=1)
    assert tr.main(argv(data_dir, out, "--lr", "0.5", steps=2)) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 (the run has 0.0125)" in err and "--no-resume" in err
    # --no-resume starts over (here: to completion) in the same folder.
    assert tr.main(argv(data_dir, out, "--lr", "0.5", "--no-resume", steps=2)) == 0
    assert load_checkpoint(out / "final.safetensors").meta.recipe["lr"] == 0.5


def test_init_starts_from_a_checkpoint_and_records_it(data_dir, tmp_path, straight):
    """--init: the weights start as the checkpoint's; arch, provenance and cumulative images go into the recipe."""
    source = Path(straight.config.out) / tr.FINAL
    start = load_checkpoint(source).model.state_dict()
    out = tmp_path / "run"
    # lr 1e-30: the one step moves a weight by at most ~1e-30, so the result shows where the weights started.
    result = tr.train(parse(argv(data_dir, out, "--init", str(source), "--lr", "1e-30", steps=1)[2:]))
    assert result.config.arch == "resnet50" and result.config.init == str(source)
    params = dict(result.model.named_parameters())
    moved = [k for k in params if not torch.allclose(params[k].detach(), start[k], rtol=0, atol=1e-20)]
    assert moved == []
    fresh = tr.train(parse(argv(data_dir, tmp_path / "fresh", "--lr", "1e-30", steps=1)))
    assert not torch.equal(fresh.model.state_dict()["fc.weight"], start["fc.weight"])  # (the check can fail)

    recipe = load_checkpoint(out / tr.FINAL).meta.recipe
    assert recipe["init"]["checkpoint"] == tr.FINAL and recipe["init"]["images_total"] == STEPS * BATCH
    assert recipe["init"]["pack_hash"] == AssetPack.load(data_dir / "pack").pack_hash
    assert recipe["images_seen"] == BATCH and recipe["images_total"] == (STEPS + 1) * BATCH
    assert load_checkpoint(source).meta.recipe["init"] == "random (torchvision init)"
    # A rerun with the same options continues the same run; naming another starting checkpoint is a recipe change.
    rerun = tr.train(parse(argv(data_dir, out, "--init", str(source), "--lr", "1e-30", steps=1)[2:]))
    assert rerun.completed and rerun.step == 1 and rerun.config.init == str(source)
    with pytest.raises(CbamVizError, match="--init"):
        tr.train(parse(argv(data_dir, out, "--init", str(out / tr.BEST), "--lr", "1e-30", steps=1)[2:]))


def test_init_refuses_other_arch_or_classes(data_dir, tmp_path, straight):
    source = str(Path(straight.config.out) / tr.FINAL)
    with pytest.raises(CbamVizError, match="holds a resnet50 checkpoint, but resnet50-cbam"):
        tr.train(parse(argv(data_dir, tmp_path / "a", "--arch", "resnet50-cbam", "--init", source)[2:]))
    other = tmp_path / "other"
    make_stamps(other, "val", per_class=1, size=48, n_classes=4)
    with pytest.raises(CbamVizError, match="trained on 3 classes .* has 4 .* needs the same classes"):
        tr.train(parse(argv(other, tmp_path / "b", "--init", source)[2:]))
    with pytest.raises(CbamVizError, match="checkpoint not found"):
        tr.train(parse(argv(data_dir, tmp_path / "c", "--init", str(tmp_path / "missing.safetensors"))))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def bn3_weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.flatten() for k, v in model.state_dict().items() if k.endswith("bn3.weight")])


def test_zero_init_residual_option(data_dir, tmp_path):
    """Random init zeroes each residual branch's last BN by default; --no-zero-init-residual starts it at 1 (the
    official CBAM code's init). The choice is in the recipe, a resume must keep it, and an --init chain inherits it."""
    zero = tr.train(parse(argv(data_dir, tmp_path / "zero", "--lr", "1e-30", steps=1)))
    ones = tr.train(parse(argv(data_dir, tmp_path / "ones", "--no-zero-init-residual", "--lr", "1e-30", steps=1)))
    assert torch.allclose(bn3_weights(zero.model), torch.tensor(0.0), rtol=0, atol=1e-20)
    assert torch.allclose(bn3_weights(ones.model), torch.tensor(1.0), rtol=0, atol=1e-20)
    assert load_checkpoint(tmp_path / "zero" / tr.FINAL).meta.recipe["zero_init_residual"] is True
    source = tmp_path / "ones" / tr.FINAL
    assert load_checkpoint(source).meta.recipe["zero_init_residual"] is False
    with pytest.raises(CbamVizError, match="--zero-init-residual True \\(the run has False\\)"):
        tr.train(parse(argv(data_dir, tmp_path / "ones", "--zero-init-residual", steps=2)))
    with pytest.raises(CbamVizError, match="give one or the other"):
        tr.train(parse(argv(data_dir, tmp_path / "x", "--init", str(source), "--no-zero-init-residual")[2:]))
    tr.train(parse(argv(data_dir, tmp_path / "chain", "--init", str(source), "--lr", "1e-30", steps=1)[2:]))
    assert load_checkpoint(tmp_path / "chain" / tr.FINAL).meta.recipe["zero_init_residual"] is False


def test_target_scale_option(data_dir, tmp_path):
    """--target-scale sizes the training scenes' targets; it is in the recipe and a resume must keep it."""
    out = tmp_path / "small"
    result = tr.train(parse(argv(data_dir, out, "--target-scale", "0.1", "0.3", "--lr", "1e-30", steps=1)))
    assert result.config.target_scale == (0.1, 0.3)
    assert load_checkpoint(out / tr.FINAL).meta.recipe["target_scale"] == [0.1, 0.3]
    scenes = tr.open_data(data_dir).train_dataset(64, 20, 0, result.config.target_scale)
    assert all(scenes.scene(i).info["target"]["longest"] <= 0.3 * 64 + 1 for i in range(20))
    with pytest.raises(CbamVizError, match=r"--target-scale \(0.2, 0.7\) \(the run has \(0.1, 0.3\)\)"):
        tr.train(parse(argv(data_dir, out, "--target-scale", "0.2", "0.7", steps=2)))
    assert tr.train(parse(argv(data_dir, out, steps=1))).config.target_scale == (0.1, 0.3)  # resumes as it was


def test_compile_wraps_only_the_training_net(data_dir, tmp_path, monkeypatch):
    """--compile hands the training module to torch.compile (a stand-in here: a real compile takes minutes)."""
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = tr.train(parse(argv(data_dir, tmp_path / "run", "--compile", steps=1)))
    assert compiled == [result.model] and result.config.compile
    assert load_checkpoint(tmp_path / "run" / tr.FINAL).meta.recipe["compiled"] is True
    tr.train(parse(argv(data_dir, tmp_path / "eager", steps=1)))
    assert len(compiled) == 1 and load_checkpoint(tmp_path / "eager" / tr.FINAL).meta.recipe["compiled"] is False


def test_background_gap_diagnostic(data_dir, straight, capsys, monkeypatch):
    """benchmarks/background_gap.py: six accuracy rows per checkpoint; the batch-statistics row leaves BN alone."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import background_gap

    model = straight.model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = scenes_to_tensors(MaterializedSplit(data_dir, "val"), SIZE)
    assert 0 <= background_gap.top1(model, images, labels, batch_stats=True) <= 100
    assert params_equal(before, model.state_dict()) == []

    checkpoint = Path(straight.config.out) / tr.BEST
    monkeypatch.setattr(sys, "argv", ["background_gap", str(checkpoint), "--data", str(data_dir), "--scenes", "4"])
    background_gap.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(rows) == 6 and all(0 <= float(r.split()[-1].rstrip("%")) <= 100 for r in rows), rows


def test_branch_scale_diagnostic(data_dir, tiny_checkpoints):
    """benchmarks/branch_scale.py: |bn3| for every block; in CBAM blocks also the mean gates and their product."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import branch_scale

    val = MaterializedSplit(data_dir, "val")
    baseline = branch_scale.branch_scales(tiny_checkpoints["baseline"], val, scenes=2)
    cbam = branch_scale.branch_scales(tiny_checkpoints["cbam"], val, scenes=2)
    assert len(baseline) == len(cbam) == 16 and list(cbam)[0] == "layer1.0" and list(cbam)[-1] == "layer4.2"
    assert all(row["bn3"] == 1.0 and row["ratio"] > 0 for row in baseline.values())  # torchvision init
    for row in cbam.values():
        assert row["bn3"] == 1.0 and 0 < row["mc"] < 1 and 0 < row["ms"] < 1 and row["ratio"] > 0
        assert math.isclose(row["effective"], row["bn3"] * row["mc"] * row["ms"])
    assert len({round(row["ms"], 4) for row in cbam.values()}) > 1  # the gates were read per block, not one value
    # the norms by hand for one block with a projection shortcut, in both models (torchvision's block adds the
    # shortcut onto bn3's output in place: the hook must read it before that)
    for key, branch_of in (("baseline", lambda block, x: x), ("cbam", lambda block, x: block.cbam(x))):
        model = load_checkpoint(tiny_checkpoints[key]).model.eval()
        seen = branch_scale.watch_branches(model)
        inputs = {}
        model.layer2[0].register_forward_hook(lambda module, args, out: inputs.update(x=args[0]))
        with torch.inference_mode():
            model(torch.randn(2, 3, SIZE, SIZE))
            block = model.layer2[0]
            inner = block.relu(block.bn1(block.conv1(inputs["x"])))
            inner = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(inner)))))
            assert math.isclose(seen["layer2.0"]["branch"], branch_of(block, inner).norm().item(), rel_tol=1e-4)
            assert math.isclose(seen["layer2.0"]["shortcut"], block.downsample(inputs["x"]).norm().item(),
                                rel_tol=1e-4)
            assert math.isclose(seen["layer2.0"]["input"], inputs["x"].norm().item(), rel_tol=1e-4)


def test_peak_location_diagnostic(data_dir, tiny_checkpoints, capsys):
    """benchmarks/peak_location.py on eval's per-scene records: real ones from tiny models, then a hand-made miss."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import peak_location

    split = MaterializedSplit(data_dir, "val")
    with torch.inference_mode():
        scenes = evaluate(split, load_pair(tiny_checkpoints["baseline"], tiny_checkpoints["cbam"]), 4)["scenes"]
    for record, index in zip(scenes, range(len(split))):
        rows, cols = np.nonzero(split[index].mask)
        side = split[index].mask.shape
        assert np.allclose(record["object_centre"], [rows.mean() / side[0], cols.mean() / side[1]])
        for key in ("baseline", "cbam"):
            assert all(0 <= v < 1 for v in record[key]["peak"])
    peak_location.summarize(scenes)
    misses = sum(not s[key]["pointing"] for s in scenes for key in ("baseline", "cbam"))
    printed = capsys.readouterr().out.splitlines()[1:3]
    assert sum(int(line.split("misses")[1].split(":")[0]) for line in printed) == misses

    # hand-made: one small object missed by both (the baseline's peak on the top edge, CBAM's one step beside it)
    centre = [0.5, 0.5]
    hit = {"pointing": 1.0, "peak": centre}
    made = [
        {"object_area": 0.01, "object_centre": centre,
         "baseline": {"pointing": 0.0, "peak": [0.05, 0.5]}, "cbam": {"pointing": 0.0, "peak": [0.5, 0.6]}},
        {"object_area": 0.5, "object_centre": centre, "baseline": hit, "cbam": hit},
        {"object_area": 0.6, "object_centre": centre, "baseline": hit, "cbam": hit},
    ]
    peak_location.summarize(made)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "all scenes (3):" and lines[3] == "smallest third (1):"
    assert "misses    1: peak on the outer ring 100.0%, median distance to object centre 0.450" in lines[1]
    assert "misses    1: peak on the outer ring   0.0%, median distance to object centre 0.100" in lines[2]
    assert lines[2].endswith("within 0.25 100.0%") and lines[1].endswith("within 0.25   0.0%")
    assert lines[4:] == lines[1:3]  # the small object is the smallest third


def test_ablation_diagnostic(data_dir, tiny_checkpoints, capsys, monkeypatch):
    """benchmarks/ablation.py: a zeroed stage passes on its shortcuts alone, a flat gate is its own mean, and
    the report pairs every variant with its trained model."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ablation

    from cbam_viz.nn.cbam import SpatialAttention

    cbam = load_checkpoint(tiny_checkpoints["cbam"]).model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    seen = {}
    block = cbam.layer4[0]
    block.register_forward_hook(lambda module, inputs, out: seen.update(x=inputs[0], out=out))
    gate = cbam.layer3[1].cbam.spatial
    watch = gate.register_forward_hook(lambda module, inputs, ms: seen.update(ms=ms))
    with torch.inference_mode():
        cbam(x)
        trained_ms = seen["ms"].clone()
        watch.remove()
        assert ablation.hook_stages(cbam, ("layer3",), SpatialAttention, "spatial", ablation.flat_gate) == 6
        gate.register_forward_hook(lambda module, inputs, ms: seen.update(ms=ms))  # after the flat one: sees its map
        cbam(x)
        flat = seen["ms"]
        assert torch.allclose(flat, trained_ms.mean(dim=(2, 3), keepdim=True).expand_as(flat))
        assert not torch.allclose(flat, trained_ms)
        assert ablation.hook_stages(cbam, ("layer4",), torch.nn.BatchNorm2d, "bn3", ablation.zero_branch) == 3
        cbam(x)
        assert torch.equal(seen["out"], torch.relu(block.downsample(seen["x"])))

    monkeypatch.setattr(sys, "argv", ["ablation", str(tiny_checkpoints["baseline"]),
                                      str(tiny_checkpoints["cbam"]), "--data", str(data_dir), "--batch-size", "3"])
    ablation.main()
    out = capsys.readouterr().out.splitlines()
    rows = [line.split()[0].rstrip(",") for line in out if line.startswith("  ")]
    assert len(rows) == 4 * 8 and rows.count("baseline") == 4 * 3 and rows.count("cbam") == 4 * 5
    assert "cbam, no layer3-4 branches: 9 modules hooked" in out and "cbam, flat Ms all: 16 modules hooked" in out
    assert sum("minus cbam:" in line for line in out) == 4 * 4
