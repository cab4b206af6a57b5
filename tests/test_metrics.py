"""Localization metrics on hand-made cases, and the eval command end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbam_viz.cli import main
from cbam_viz.data.pack import AssetPack
from cbam_viz.data.splits import MaterializedSplit, materialize_split
from cbam_viz.data.synthetic import make_synthetic_pack
from cbam_viz.eval.metrics import (
    agreement,
    box_iou,
    box_mask,
    cam_box,
    class_mean,
    energy_in_mask,
    localized,
    mask_boxes,
    pointing_hit,
    pointing_tolerance,
)
from cbam_viz.eval.scenes import METRICS, by_object_size, format_size_table, format_table, scene_scores
from cbam_viz.eval.stats import PairedDifference
from tests.conftest import make_checkpoint


def square_mask(shape=(224, 224), box=(100, 100, 140, 140)) -> np.ndarray:
    return box_mask(box, shape)


def peaked(at: tuple[int, int], shape=(224, 224)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - at[0]) ** 2 + (xx - at[1]) ** 2) / (2 * 8.0**2))


def test_pointing_game_inside_near_and_outside():
    mask = square_mask()
    assert pointing_hit(peaked((120, 120)), mask)  # inside
    assert pointing_hit(peaked((120, 152)), mask)  # 12 px right of the box: within the 15 px tolerance
    assert not pointing_hit(peaked((120, 160)), mask)  # 20 px away
    assert not pointing_hit(peaked((20, 20)), mask)
    assert not pointing_hit(peaked((120, 120)), np.zeros((224, 224), bool))  # no object: never a hit


def test_pointing_game_peak_at_the_tolerance_misses_as_in_torchray():
    mask = square_mask()  # columns 100..139
    assert pointing_hit(peaked((120, 153)), mask)  # 14 px from column 139: inside the 15 px tolerance
    assert not pointing_hit(peaked((120, 154)), mask)  # exactly 15 px: a miss
    assert pointing_hit(peaked((120, 154)), mask, tolerance=15.01)
    assert not pointing_hit(peaked((144, 144)), mask, tolerance=5)  # (5, 5) from the corner: 7.1 px
    assert not pointing_hit(peaked((120, 95)), mask, tolerance=5)  # 5 px left of column 100
    assert pointing_hit(peaked((120, 96)), mask, tolerance=5)


def test_constant_heatmap_points_nowhere():
    mask = square_mask(box=(0, 0, 40, 40))  # holds pixel (0, 0), where argmax of a constant map lands
    assert pointing_hit(peaked((0, 0)), mask)
    assert not pointing_hit(np.zeros((224, 224)), mask)
    assert not pointing_hit(np.full((224, 224), 0.3), mask)


def test_class_mean_weighs_every_class_alike():
    hits = [1, 1, 1, 0, 0, 1]
    labels = ["cat", "cat", "cat", "cat", "dog", "dog"]
    assert np.mean(hits) == pytest.approx(4 / 6)
    assert class_mean(hits, labels) == pytest.approx((3 / 4 + 1 / 2) / 2)  # 0.625
    assert class_mean([0.0, 1.0, 1.0], [2, 0, 2]) == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(ValueError):
        class_mean([1.0, 0.0], ["cat"])
    with pytest.raises(ValueError):
        class_mean([], [])


def test_tolerance_scales_with_size():
    assert pointing_tolerance(224) == 15.0 and pointing_tolerance(112) == 7.5
    mask = square_mask((112, 112), (50, 50, 70, 70))
    assert pointing_hit(peaked((60, 76), (112, 112)), mask)  # 6 px away at 112 px (tolerance 7.5)
    assert not pointing_hit(peaked((60, 80), (112, 112)), mask)  # 10 px away


def test_energy_in_mask_values():
    mask = square_mask()
    inside = np.zeros((224, 224)); inside[110:130, 110:130] = 1
    outside = np.zeros((224, 224)); outside[0:20, 0:20] = 1
    assert energy_in_mask(inside, mask) == 1.0
    assert energy_in_mask(outside, mask) == 0.0
    assert energy_in_mask(inside + outside, mask) == pytest.approx(0.5)
    assert energy_in_mask(np.zeros((224, 224)), mask) == 0.0
    uniform = np.ones((224, 224))
    assert energy_in_mask(uniform, mask) == pytest.approx(mask.mean())


def test_agreement_is_pearson():
    a = peaked((50, 50))
    assert agreement(a, a) == pytest.approx(1.0)
    assert agreement(a, 1 - a) == pytest.approx(-1.0)
    assert abs(agreement(peaked((30, 30)), peaked((190, 190)))) < 0.1


def test_box_mask_clips_and_orders():
    mask = box_mask((30, 20, -5, 5), (10, 25))
    assert mask.shape == (10, 25) and mask[5:10, 0:25].all() and not mask[0:5].any()


def test_box_iou_by_hand():
    # 10x10 boxes overlapping in a 5x5 square: 25 / (100 + 100 - 25)
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges share no area
    assert box_iou((0, 0, 20, 10), (5, 0, 15, 10)) == pytest.approx(0.5)  # one inside the other


def test_cam_box_keeps_15_percent_of_the_maximum_and_the_largest_region():
    heat = np.zeros((100, 100))
    heat[10:14, 10:14] = 1.0  # the peak: a small region
    heat[50:90, 20:60] = 0.16  # above 15% of the maximum and the largest region: its box wins
    heat[0:100, 95:100] = 0.14  # a larger area, but below the threshold
    assert cam_box(heat) == (20, 50, 60, 90)
    heat[0:100, 95:100] = 0.15  # exactly at the threshold: kept, but its 500 px lose to the 1600 px region
    assert cam_box(heat) == (20, 50, 60, 90)
    heat[50:90, 20:60] = 0.1  # the big region drops below 15%: the strip (500 px) is now the largest
    assert cam_box(heat) == (95, 0, 100, 100)
    assert cam_box(heat, threshold=0.5) == (10, 10, 14, 14)
    assert cam_box(np.zeros((8, 8))) is None


def test_localized_needs_iou_of_one_half():
    heat = np.zeros((100, 100))
    heat[20:60, 20:60] = 1.0  # predicted box (20, 20, 60, 60), area 1600
    # ground truth (20, 20, 60, 100): intersection 1600, union 3200 -> IoU 0.5 exactly: localized
    assert box_iou(cam_box(heat), (20, 20, 60, 100)) == pytest.approx(0.5)
    assert localized(heat, [(20, 20, 60, 100)])
    # (20, 20, 60, 101): union 3240 -> IoU 0.494: not localized, unless another box matches
    assert not localized(heat, [(20, 20, 60, 101)])
    assert localized(heat, [(20, 20, 60, 101), (18, 18, 62, 62)])
    assert not localized(np.zeros((100, 100)), [(0, 0, 100, 100)])


def test_mask_boxes_one_box_per_region():
    mask = np.zeros((30, 40), bool)
    mask[2:5, 3:9] = True
    mask[20:28, 30:40] = True
    assert sorted(mask_boxes(mask)) == [(3, 2, 9, 5), (30, 20, 40, 28)]
    assert mask_boxes(np.zeros((4, 4), bool)) == []


class FakeScene:
    def __init__(self, label, mask, distractor_masks):
        self.label, self.mask, self.distractor_masks = label, mask, distractor_masks


def test_scene_scores_counts_distractor_peaks():
    mask = square_mask()
    distractor = square_mask(box=(10, 10, 40, 40))
    scene = FakeScene(2, mask, [distractor])
    probs = np.array([0.1, 0.2, 0.6, 0.1])
    on_target = scene_scores(probs, peaked((120, 120)), scene)
    on_distractor = scene_scores(probs, peaked((25, 25)), scene)
    assert on_target["top1"] == 1.0 and on_target["pointing"] == 1.0 and on_target["on_distractor"] == 0.0
    assert on_distractor["pointing"] == 0.0 and on_distractor["on_distractor"] == 1.0
    assert on_target["mean_p_true"] == pytest.approx(0.6) and on_target["top5"] == 1.0


def test_table_shows_the_paired_difference_and_mcnemar():
    names = [m for m, _ in METRICS]
    summary = {"baseline": dict.fromkeys(names, 0.8), "cbam": dict.fromkeys(names, 0.775)}
    paired = {m: PairedDifference(-0.025, -0.035, -0.015) for m in names}
    paired["pointing"] = PairedDifference(-0.025, -0.035, -0.015, only_baseline=184, only_cbam=104, p_value=2.8e-6)
    paired["top1"] = PairedDifference(-0.025, -0.035, -0.015, only_baseline=23, only_cbam=16, p_value=0.3368)
    lines = format_table(summary, {"baseline": "ResNet50", "cbam": "CBAM"}, paired, METRICS).splitlines()
    row = {line[:32].strip(): line[32:] for line in lines}
    assert row["pointing game (true class)"].split() == [
        "80.0%", "77.5%", "-2.5", "[", "-3.5,", "-1.5]", "3e-06", "(184", "/", "104)"
    ]
    assert row["top-1 accuracy"].endswith("0.337 (23 / 16)")
    assert row["energy in mask"].endswith("-1.5]")  # a continuous metric has no McNemar column


def test_object_size_groups_locate_a_gap_on_small_objects():
    # nine scenes, listed large to small; CBAM's CAM misses only the three smallest objects
    scenes = [
        {"object_area": area, "baseline": {"pointing": 1.0, "top1": 1.0},
         "cbam": {"pointing": float(area > 0.035), "top1": 1.0}}
        for area in np.linspace(0.09, 0.01, 9)
    ]
    groups = by_object_size(scenes)
    assert [g["group"] for g in groups] == ["small", "medium", "large"]
    assert [g["count"] for g in groups] == [3, 3, 3]
    assert groups[0]["area_range"] == pytest.approx([0.01, 0.03])
    assert groups[2]["area_range"] == pytest.approx([0.07, 0.09])
    assert [g["cbam_minus_baseline"]["pointing"]["difference"] for g in groups] == [-1.0, 0.0, 0.0]
    assert groups[0]["summary"]["cbam"]["pointing"] == 0.0
    assert groups[0]["cbam_minus_baseline"]["top1"]["difference"] == 0.0
    lines = format_size_table(groups, {"baseline": "ResNet50", "cbam": "CBAM"}).splitlines()
    assert lines[2].split()[:9] == ["small", "(1.0-3.0%)", "3", "100.0%", "/", "0.0%", "-100.0", "[-100.0,", "-100.0]"]


def stamp_eval(tmp_path: Path, *options: str, n_classes: int = 5) -> tuple[int, MaterializedSplit, Path]:
    """`eval` of two tiny random checkpoints on a one-scene-per-class test split: (exit code, split, out folder)."""
    pack = AssetPack.load(make_synthetic_pack(tmp_path / "data" / "pack", n_classes=n_classes))
    materialize_split(pack, tmp_path / "data", "test", per_class=1, size=64)
    split = MaterializedSplit(tmp_path / "data", "test")
    checkpoints = {
        key: make_checkpoint(tmp_path / f"{key}.safetensors", arch, seed, class_names=split.class_names)
        for key, arch, seed in (("baseline", "resnet50", 0), ("cbam", "resnet50-cbam", 1))
    }
    out = tmp_path / "eval"
    code = main(["eval", "--data", str(tmp_path / "data"), "--baseline", str(checkpoints["baseline"]),
                 "--cbam", str(checkpoints["cbam"]), "--out", str(out), *options])
    return code, split, out


def test_eval_command_end_to_end(tmp_path, capsys):
    code, split, out = stamp_eval(tmp_path, "--batch-size", "4", "--figure-rows", "3")
    assert code == 0
    assert "pointing game, mean of per-class accuracies (as TorchRay): " in capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert report["count"] == len(split) == len(split.class_names)
    assert report["dataset_hash"] == split.pack_hash
    assert report["input_size"] == {"baseline": 64, "cbam": 64}  # the checkpoints' trained size
    for key in ("baseline", "cbam"):
        summary = report["summary"][key]
        assert set(summary) == {"top1", "top5", "mean_p_true", "pointing", "energy", "on_distractor"}
        assert all(0.0 <= v <= 1.0 for v in summary.values())
        # the summary is the mean of the per-scene records
        assert summary["pointing"] == pytest.approx(np.mean([s[key]["pointing"] for s in report["scenes"]]))
        per_class = class_mean([s[key]["pointing"] for s in report["scenes"]], [s["label"] for s in report["scenes"]])
        assert report["pointing_class_mean"][key] == pytest.approx(per_class)
    for metric, diff in report["cbam_minus_baseline"].items():
        summary = report["summary"]
        assert diff["difference"] == pytest.approx(summary["cbam"][metric] - summary["baseline"][metric])
        assert diff["low"] <= diff["difference"] <= diff["high"]
        assert (diff["p_value"] is None) == (metric in ("mean_p_true", "energy"))
    sizes = report["by_object_size"]
    assert sum(g["count"] for g in sizes) == report["count"]
    assert all(a["area_range"][1] <= b["area_range"][0] for a, b in zip(sizes, sizes[1:]))
    assert (out / "sec43_figure.png").stat().st_size > 10_000 and (out / "sec43_figure.pdf").exists()


def test_eval_refuses_an_input_size_below_32(tmp_path, tiny_checkpoints, capsys):
    code = main(["eval", "--data", str(tmp_path), "--baseline", str(tiny_checkpoints["baseline"]),
                 "--cbam", str(tiny_checkpoints["cbam"]), "--input-size", "16"])
    assert code == 2 and "--input-size must be at least 32 px" in capsys.readouterr().err


def test_eval_refuses_checkpoints_of_other_classes(tmp_path, tiny_checkpoints, capsys):
    pack = AssetPack.load(make_synthetic_pack(tmp_path / "data" / "pack", n_classes=3))
    materialize_split(pack, tmp_path / "data", "test", per_class=1, size=64)
    code = main(["eval", "--data", str(tmp_path / "data"), "--baseline", str(tiny_checkpoints["baseline"]),
                 "--cbam", str(tiny_checkpoints["cbam"]), "--out", str(tmp_path / "eval")])
    assert code == 2 and "classes do not match" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_road_on_stamp_scenes(tmp_path, capsys):
    code, split, out = stamp_eval(tmp_path, "--limit", "2", "--figure-rows", "1", "--road", n_classes=3)
    printed = capsys.readouterr().out
    assert code == 0
    rows = [line[:32].strip() for line in printed.splitlines()]
    assert rows[3:10] == [label for _, label in METRICS] + ["ROAD, P (LeRF - MoRF) / 2"]
    assert "ROAD: 36 forward passes and 18 imputations per image and model" in printed
    report = json.loads((out / "eval.json").read_text())
    for key in ("baseline", "cbam"):
        assert report["summary"][key]["road"] == pytest.approx(np.mean([s[key]["road"] for s in report["scenes"]]))
