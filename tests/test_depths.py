"""Checkpoints of the other depths (BasicBlock ResNet18/34, ResNet101) and of an ablation variant through `eval`,
`export` and the app's analysis, as ResNet50's go: tiny random weights, 64 px, three stamp classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint, random_image

from cbam_viz.app.studio import Studio
from cbam_viz.app.views import attention_overlay, model_info_markdown
from cbam_viz.cli import main
from cbam_viz.data.pack import AssetPack
from cbam_viz.data.splits import MaterializedSplit, materialize_split
from cbam_viz.data.synthetic import make_synthetic_pack
from cbam_viz.io.checkpoints import ModelMeta, load_pair, save_checkpoint
from cbam_viz.nn.cbam import CBAMConfig
from cbam_viz.nn.resnet import build_model


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    pack = AssetPack.load(make_synthetic_pack(root / "pack", n_classes=3, n_distractors=1))
    materialize_split(pack, root, "test", per_class=1, size=64)
    return root


def check_everywhere(split_dir: Path, tmp_path: Path, baseline: Path, cbam: Path, names: tuple[str, str]) -> None:
    """eval's report, export's manifest and the app's analysis, attention view and Model info for the pair."""
    out = tmp_path / "eval"
    pair = ["--baseline", str(baseline), "--cbam", str(cbam)]
    assert main(["eval", "--data", str(split_dir), *pair, "--out", str(out), "--figure-rows", "1"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["count"] == 3 and set(report["summary"]) == {"baseline", "cbam"}

    images = tmp_path / "in"
    images.mkdir()
    random_image(0).save(images / "a.png")
    assert main(["export", str(images), "--out", str(tmp_path / "out"), "--size", "64", *pair, "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [row["error"] for row in rows] == [None, None]

    models = load_pair(baseline, cbam)
    studio = Studio(models, examples_dir=None)
    source = studio.open(random_image(1))
    for layer in ("layer4", "layer3"):  # the exact fast path, and grad-cam's hooks on another stage
        analysis = studio.analyse(source, "top1", "gradcam", layer)
        assert all(r.heatmaps.shape[1:] == (56, 72) for r in analysis.results.values())
    attention = analysis.results["cbam"].attention
    assert attention is not None
    deep = models["cbam"].meta.arch not in ("resnet18-cbam", "resnet34-cbam")  # Bottleneck blocks: 4x wider
    assert studio.slow_estimate("scorecam", "layer4")[0] == (2048 if deep else 512)  # ScoreCAM's passes
    image, caption, _ = attention_overlay(analysis, attention.blocks[-1])
    assert image.size == (72, 56) and caption.startswith("layer4.")
    for key, name in zip(("baseline", "cbam"), names):
        assert model_info_markdown(models[key]).startswith(f"### {name}\n")


@pytest.mark.parametrize("depth", [18, 34, 101])
def test_every_depth_in_eval_export_and_app(split_dir, tmp_path, depth):
    names = MaterializedSplit(split_dir, "test").class_names
    baseline, cbam = (
        make_checkpoint(tmp_path / f"{arch}.safetensors", arch, seed, class_names=names)
        for seed, arch in enumerate((f"resnet{depth}", f"resnet{depth}-cbam"))
    )
    check_everywhere(split_dir, tmp_path, baseline, cbam, (f"ResNet{depth}", f"CBAM-ResNet{depth}"))


def test_ablation_variant_in_eval_export_and_app(split_dir, tmp_path):
    names = MaterializedSplit(split_dir, "test").class_names
    baseline = make_checkpoint(tmp_path / "resnet18.safetensors", "resnet18", 0, class_names=names)
    config = CBAMConfig(arrangement="spatial-channel", spatial_pool="conv1x1", kernel_size=3)
    torch.manual_seed(1)
    model = build_model("resnet18-cbam", len(names), cbam=config)
    for module in model.modules():
        if hasattr(module, "spatial"):
            torch.nn.init.normal_(module.spatial.bn.weight, 1.0, 0.1)
    cbam = tmp_path / "variant.safetensors"
    save_checkpoint(cbam, model.eval(), ModelMeta("resnet18-cbam", list(names), input_size=64, cbam=config))
    variant = "CBAM-ResNet18 (spatial first, conv1x1 spatial descriptor, 3×3 spatial kernel)"
    check_everywhere(split_dir, tmp_path, baseline, cbam, ("ResNet18", variant))
