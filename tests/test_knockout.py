"""Attention knock-outs: a hand-built model whose spatial gate decides the class, the neutral value's preserved
mean, the partial forward against a full one, channel-only variants, and `eval --attention-effects` end to end."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, make_stamps
from torch import nn

from cbam_viz.cam.engine import fast_gradcam
from cbam_viz.cli import main
from cbam_viz.nn.attention import capture_attention
from cbam_viz.nn.cbam import CBAM, CBAMConfig, knock_out
from cbam_viz.nn.knockout import attention_effects
from cbam_viz.nn.resnet import STAGES, build_model, forward_maps
from tests.test_localization import make_photo_folder

# ---- a hand-built model whose spatial gate decides the class ----


class SpatialDecides(nn.Module):
    """ResNet's interface with one CBAM block in layer2 and identities elsewhere; fc reads each channel's mean.

    The channel gate is a constant 0.5 (zero MLP); the spatial gate is sigmoid(10 * max over channels - 10): about 1
    where a channel reaches 2 after the channel gate, about 0 elsewhere. The image holds class 0 as a small bright
    blob (2x2 px of 4) and class 1 as a large dim patch (5x5 px of 1): ungated, class 1 has more mass; gated, only
    the blob passes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
        block = CBAM(2, CBAMConfig(reduction=1), name="layer2.0").eval()
        with torch.no_grad():
            for param in block.channel.parameters():
                param.zero_()
            block.spatial.conv.weight.zero_()
            block.spatial.conv.weight[0, 1, 3, 3] = 10.0  # the max-over-channels descriptor at the centre tap
            block.spatial.bn.weight.fill_(1.0)
            block.spatial.bn.bias.zero_()
            block.spatial.bn.running_mean.fill_(10.0)
            block.spatial.bn.running_var.fill_(1.0 - block.spatial.bn.eps)
        self.layer1, self.layer2, self.layer3, self.layer4 = nn.Sequential(), nn.Sequential(block), nn.Sequential(), \
            nn.Sequential()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(100 * torch.eye(2))


def blob_and_patch() -> torch.Tensor:
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, 1:3, 1:3] = 4.0
    x[0, 1, 3:8, 3:8] = 1.0
    return x


def test_knocking_out_the_deciding_spatial_gate_flips_the_prediction():
    model = SpatialDecides().eval()
    [effects] = attention_effects(model, blob_and_patch())
    assert effects.target == effects.intact.top1 == 0 and effects.intact.p_target > 0.99
    rows = {(k.stage, k.gate): k for k in effects.knockouts}
    assert set(rows) == {(2, "spatial"), (2, "channel"), (2, "both")}  # stages without CBAM blocks are not rows
    for gate in ("spatial", "both"):
        assert rows[2, gate].outcome.top1 == 1 and rows[2, gate].outcome.p_target < 0.5
        assert effects.to_dict()["knockouts"][[k.gate for k in effects.knockouts].index(gate)]["top1_changed"]
    # a constant channel gate is its own mean: knocking it out changes nothing
    assert rows[2, "channel"].outcome == effects.intact and rows[2, "channel"].cam_correlation == pytest.approx(1.0)


def test_a_knock_out_with_the_init_value_replaces_the_gate_by_one_half():
    model = SpatialDecides().eval()
    with capture_attention() as maps, knock_out([model.layer2[0]], ["spatial"], neutral="init"):
        model.layer2(blob_and_patch())
    assert torch.equal(maps.spatial["layer2.0"], torch.full((1, 8, 8), 0.5))


# ---- the neutral value keeps the gate's scale ----


def gated_block(arrangement: str) -> CBAM:
    torch.manual_seed(0)
    block = CBAM(8, CBAMConfig(reduction=2, arrangement=arrangement), name="blk").eval()
    if block.spatial is not None:
        with torch.no_grad():
            block.spatial.bn.weight.fill_(1.5)
            block.spatial.bn.bias.fill_(1.0)  # the spatial map's mean is far from 0.5, the init value
    return block


@pytest.mark.parametrize("arrangement", ["channel-spatial", "parallel"])
def test_spatial_knock_out_keeps_each_channels_mean_and_removes_the_pattern(arrangement):
    """On an input constant over H, W (the spatial map still varies: the convolution pads with zeros), every
    channel of the knocked-out output is constant and equals that channel's mean in the intact output."""
    block = gated_block(arrangement)
    x = torch.randn(2, 8, 1, 1).expand(2, 8, 6, 7)
    with torch.no_grad():
        intact = block(x)
        with knock_out([block], ["spatial"]):
            knocked = block(x)
    assert intact.std(dim=(2, 3)).min() > 1e-3  # the intact output has a spatial pattern
    torch.testing.assert_close(knocked, intact.mean(dim=(2, 3), keepdim=True).expand_as(knocked))


@pytest.mark.parametrize("arrangement", ["channel", "spatial-channel", "parallel"])
def test_channel_knock_out_keeps_each_pixels_channel_mean_and_removes_the_pattern(arrangement):
    """On an input equal in every channel, the knocked-out output is equal in every channel too, and equals the
    intact output's mean over channels at each pixel."""
    block = gated_block(arrangement)
    x = torch.randn(2, 1, 6, 7).expand(2, 8, 6, 7)
    with torch.no_grad():
        intact = block(x)
        with knock_out([block], ["channel"]):
            knocked = block(x)
    assert intact.std(dim=1).min() > 1e-4  # the intact output weighs channels differently
    torch.testing.assert_close(knocked, intact.mean(dim=1, keepdim=True).expand_as(knocked))


def test_a_knock_out_is_invisible_to_other_threads():
    block, x = gated_block("channel-spatial"), torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        intact = block(x)
        seen = {}
        with knock_out([block], ["spatial", "channel"]):
            worker = threading.Thread(target=lambda: seen.update(other=block(x)))
            worker.start()
            worker.join()
            seen["own"] = block(x)
    assert torch.equal(seen["other"], intact) and not torch.allclose(seen["own"], intact)


# ---- the partial forward is the full forward with the same knock-out ----


def random_cbam(arrangement: str = "channel-spatial") -> nn.Module:
    torch.manual_seed(3)
    model = build_model("resnet18-cbam", 5, cbam=CBAMConfig(arrangement=arrangement)).eval()
    for module in model.modules():
        if isinstance(module, CBAM) and module.spatial is not None:
            nn.init.normal_(module.spatial.bn.weight, 1.0, 0.1)  # spatial maps vary, as after training
    return model


def test_partial_forward_equals_a_full_forward_with_the_same_knock_out():
    model, x = random_cbam(), torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    targets = [0, 2, 4]
    effects = attention_effects(model, x, targets)
    with torch.no_grad():
        logits, _, features = forward_maps(model, x)
    for i, image in enumerate(effects):
        assert image.intact.p_target == pytest.approx(torch.softmax(logits, 1)[i, targets[i]].item(), abs=1e-6)
    assert [(k.stage, k.gate) for k in effects[0].knockouts] == [
        (stage, gate) for stage in (1, 2, 3, 4) for gate in ("spatial", "channel", "both")]
    for n, row in enumerate(effects[0].knockouts):
        blocks = [block.cbam for block in getattr(model, STAGES[row.stage - 1])]
        with torch.no_grad(), knock_out(blocks, {"both": ["spatial", "channel"]}.get(row.gate, [row.gate])):
            logits, _, features = forward_maps(model, x)
        probs = torch.softmax(logits, 1)
        cams = fast_gradcam(model.fc.weight, features, torch.tensor(targets)[:, None])[:, 0].numpy()
        for i, image in enumerate(effects):
            knocked = image.knockouts[n]
            assert torch.allclose(torch.tensor(knocked.outcome.p_target), probs[i, targets[i]], atol=1e-6)
            assert knocked.outcome.top1 == int(probs[i].argmax())
            assert torch.allclose(torch.from_numpy(knocked.cam), torch.from_numpy(cams[i]), atol=1e-5)
            assert not np.allclose(knocked.cam, image.intact_cam, atol=1e-4)  # the knock-out changed the CAM


def test_mask_gives_pointing_and_energy_and_none_without():
    model, x = random_cbam(), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = np.zeros((40, 50), bool)
    mask[5:30, 10:45] = True
    with_mask, without = attention_effects(model, x, masks=[mask, None])
    assert isinstance(with_mask.intact.pointing, bool) and 0.0 <= with_mask.intact.energy <= 1.0
    assert all(k.outcome.energy is not None for k in with_mask.knockouts)
    assert without.intact.pointing is None and without.knockouts[0].outcome.energy is None
    json.dumps(with_mask.to_dict())  # plain JSON


# ---- variants without a spatial gate ----


def test_channel_only_variant_reports_the_channel_gate_alone():
    model = random_cbam("channel")
    [effects] = attention_effects(model, torch.randn(1, 3, 64, 64))
    assert [(k.stage, k.gate) for k in effects.knockouts] == [(stage, "channel") for stage in (1, 2, 3, 4)]
    blocks = [block.cbam for block in model.layer3]
    for gates in (["spatial"], ["spatial", "channel"]):
        with pytest.raises(ValueError, match="layer3.0 has no spatial gate"), knock_out(blocks, gates):
            pass


def test_knock_out_refuses_unknown_gates_and_plain_models():
    block = gated_block("channel-spatial")
    with pytest.raises(ValueError, match="some of spatial, channel"), knock_out([block], ["temporal"]):
        pass
    with pytest.raises(ValueError, match="neutral value 'zero'"), knock_out([block], ["spatial"], "zero"):
        pass
    with pytest.raises(ValueError, match="no CBAM blocks"):
        attention_effects(build_model("resnet18", 5).eval(), torch.randn(1, 3, 64, 64))


# ---- eval --attention-effects ----


@pytest.fixture(scope="module")
def stamps_and_pair(tmp_path_factory) -> tuple[Path, list[str]]:
    root = make_stamps(tmp_path_factory.mktemp("stamps"), "test", per_class=2, size=64)
    names = json.loads((root / "test" / "split.json").read_text())["class_names"]
    pair = ["--baseline", str(make_checkpoint(root / "b.safetensors", "resnet50", 0, class_names=names)),
            "--cbam", str(make_checkpoint(root / "c.safetensors", "resnet50-cbam", 1, class_names=names))]
    return root, pair


def test_eval_attention_effects_on_stamp_scenes(stamps_and_pair, tmp_path, capsys):
    root, pair = stamps_and_pair
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(root), *pair, "--out", str(out), "--figure-rows", "1",
                 "--attention-effects"]) == 0
    printed = capsys.readouterr().out
    assert "attention knock-outs of CBAM-ResNet50 on 6 scenes, each gate replaced by its per-image mean" in printed
    assert "s per image and CBAM model" in printed
    report = json.loads((out / "eval.json").read_text())
    effects = report["attention_effects"]
    assert effects["neutral"] == "mean" and list(effects["models"]) == ["cbam"]  # the baseline has no attention
    summary = effects["models"]["cbam"]
    assert summary["count"] == summary["localized"] == 6
    # the knock-outs' intact pass is the evaluation's own
    assert summary["intact"]["p_target"] == pytest.approx(report["summary"]["cbam"]["mean_p_true"], abs=1e-6)
    assert summary["intact"]["pointing"] == pytest.approx(report["summary"]["cbam"]["pointing"])
    assert [(r["stage"], r["gate"]) for r in summary["knockouts"]] == [
        (stage, gate) for stage in (1, 2, 3, 4) for gate in ("spatial", "channel", "both")]
    scenes = report["scenes"]
    assert all("attention_effects" not in s["baseline"] for s in scenes)
    for n, row in enumerate(summary["knockouts"]):
        assert set(row["knocked_minus_intact"]) == {"p_target", "top1", "pointing", "energy"}
        for diff in row["knocked_minus_intact"].values():
            assert diff["low"] <= diff["difference"] <= diff["high"]
        deltas = [s["cbam"]["attention_effects"]["knockouts"][n]["delta_p"] for s in scenes]
        assert row["knocked_minus_intact"]["p_target"]["difference"] == pytest.approx(np.mean(deltas))
        line = f"{row['stage']:<7d}{row['gate']:9s}{100 * row['knocked_minus_intact']['p_target']['difference']:+10.1f}"
        assert line in printed


def test_eval_attention_effects_on_photos_localizes_only_the_annotated(tiny_checkpoints, tmp_path, capsys):
    make_photo_folder(tmp_path, ["red square", "green disc"])  # 3 of the 6 photos have a box of their class
    assert main(["eval", "--data", str(tmp_path / "photos"), "--boxes", str(tmp_path / "boxes"),
                 "--baseline", str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"]),
                 "--out", str(tmp_path / "eval"), "--figure-rows", "1", "--attention-effects", "init"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    summary = report["attention_effects"]["models"]["cbam"]
    annotated = sum(r["annotated"] for r in report["images"])
    assert summary["count"] == 6 and summary["localized"] == annotated < 6
    assert "replaced by 0.5, its value at initialisation" in printed
    assert f"(pointing and energy on the {annotated} images with a mask or boxes)" in printed
