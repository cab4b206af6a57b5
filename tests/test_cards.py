"""Saliency cards: cascading randomisation on tiny models (Grad-CAM changes, EigenCAM does not see fc), the maps'
agreement with the app's, a reference MPRT computation as Quantus runs it, deletion AUC on a hand-made model, and
the `cards` command end to end on a tiny stamp split."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, make_stamps
from scipy.stats import spearmanr
from torch import nn

from cbam_viz.cam.engine import METHODS, package_cam
from cbam_viz.cards import verdict, verdicts
from cbam_viz.cards.card import card_file
from cbam_viz.cards.maps import heatmaps, layer4_cams, resized
from cbam_viz.cards.measure import summary
from cbam_viz.cards.randomisation import CASCADE, cascade, judge, own_init, similarities, spearman, ssim
from cbam_viz.cli import main
from cbam_viz.eval.faithfulness import causal_curves, curve_auc
from cbam_viz.io.checkpoints import LoadedModel, ModelMeta
from cbam_viz.nn.resnet import build_model

SIDE = 96  # a 3x3 layer4 map


def tiny(arch: str = "resnet18", seed: int = 1, classes: int = 4) -> LoadedModel:
    """A random-weight model whose BN layers carry trained-looking statistics, so its maps are not degenerate."""
    torch.manual_seed(seed)
    model = build_model(arch, classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0, 0.1)
    names = [f"class {i}" for i in range(classes)]
    return LoadedModel(model.eval(), ModelMeta(arch=arch, class_names=names, input_size=SIDE))


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, list[int]]:
    torch.manual_seed(0)
    return torch.randn(4, 3, SIDE, SIDE), [0, 1, 2, 3]


def stage_maps(loaded: LoadedModel, x: torch.Tensor, labels: list[int], method: str) -> dict[str, np.ndarray]:
    """The method's layer4 maps on the trained model ("none") and after each cascade stage."""
    maps = {"none": layer4_cams(loaded.model, x, labels, [method])[method]}
    for stage, randomised in cascade(loaded.model, own_init(loaded)):
        maps[stage] = layer4_cams(randomised, x, labels, [method])[method]
    return maps


def test_randomising_fc_changes_gradcam_and_nothing_else(batch):
    loaded, (x, labels) = tiny(), batch
    initial = own_init(loaded)
    stage, randomised = next(cascade(loaded.model, initial))
    assert stage == "fc"
    before, after = loaded.model.state_dict(), randomised.state_dict()
    for key in before:
        expected = initial.state_dict()[key] if key.startswith("fc.") else before[key]
        assert torch.equal(after[key], expected), key
    trained = layer4_cams(loaded.model, x, labels, ["gradcam"])["gradcam"]
    random_fc = layer4_cams(randomised, x, labels, ["gradcam"])["gradcam"]
    size = (SIDE, SIDE)
    for a, b in zip(resized(trained, size), resized(random_fc, size)):
        assert spearman(a, b) < 0.9
    assert not np.allclose(trained, random_fc)


def test_eigencam_ignores_fc_but_not_layer4(batch):
    loaded, (x, labels) = tiny(), batch
    maps = stage_maps(loaded, x, labels, "eigencam")
    np.testing.assert_array_equal(maps["fc"], maps["none"])
    assert not np.allclose(np.abs(maps["layer4"]), np.abs(maps["none"]), atol=1e-3)
    size = (SIDE, SIDE)
    curve = {}
    for stage in CASCADE:
        rows = [similarities(*four) for four in zip(resized(maps["none"], size), resized(maps[stage], size),
                                                    heatmaps(maps["none"], size), heatmaps(maps[stage], size))]
        curve[stage] = {figure: summary([row[figure] for row in rows]) for figure in rows[0]}
    assert {figure: stat["mean"] for figure, stat in curve["fc"].items()} == pytest.approx(
        {"spearman": 1.0, "spearman_abs": 1.0, "ssim": 1.0}, abs=1e-12)
    assert judge(curve) == "class-independent"


def stat(mean: float, half: float = 0.05) -> dict:
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": 200}


@pytest.mark.parametrize(
    ("fc_abs", "layer4", "expected"),
    [
        (1.0, (0.1, 0.1), "class-independent"),  # unchanged with fc random, whatever happens below
        (0.6, (0.1, 0.4), "passes"),
        (0.6, (0.1, 0.52), "inconclusive"),  # SSIM's interval crosses 0.5
        (0.6, (0.8, 0.3), "fails"),
    ],
)
def test_the_pass_rule(fc_abs, layer4, expected):
    curve = {stage: {"spearman": stat(0.0), "spearman_abs": stat(0.0), "ssim": stat(0.0)} for stage in CASCADE}
    curve["fc"]["spearman_abs"] = stat(fc_abs)
    curve["layer4"]["spearman"], curve["layer4"]["ssim"] = stat(layer4[0]), stat(layer4[1])
    assert judge(curve) == expected


@pytest.mark.parametrize("method", list(METHODS))
def test_layer4_maps_are_the_apps(method):
    loaded = tiny("resnet18-cbam", classes=3)
    torch.manual_seed(5)
    x = torch.randn(2, 3, 64, 64)
    app = package_cam(loaded, x, [[1], [2]], method, "layer4")[:, 0]
    ours = heatmaps(layer4_cams(loaded.model, x, [1, 2], [method])[method], (64, 64))
    np.testing.assert_allclose(ours, app, atol=1e-5)


def test_ssim_of_known_maps():
    rng = np.random.default_rng(0)
    a = rng.random((20, 24))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 1 - a) < 0
    flat = np.full((20, 24), 0.5)  # constant maps: the luminance term alone, (2 * .5 * .5 + c1) / (.5 + c1)
    assert ssim(flat, flat) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2-D maps"):
        ssim(a[:5], a[:5])


def test_cascade_matches_a_quantus_style_mprt(batch):
    """Quantus's MPRT (top_down) resets every module that has reset_parameters, last to first, each after
    torch.manual_seed(seed + 1), and compares maps by scipy's Spearman (of |map| with abs=True). With those values as
    `initial`, the cascade's stages are the states after the last module of each stage, and the figures agree."""
    loaded, (x, labels) = tiny("resnet18-cbam", classes=4), batch
    seed = 42
    reference, states = copy.deepcopy(loaded.model), {}
    modules = [(name, m) for name, m in reference.named_modules() if hasattr(m, "reset_parameters")][::-1]
    for name, module in modules:
        torch.manual_seed(seed + 1)
        module.reset_parameters()
        stage = name.split(".")[0]
        if stage in CASCADE:
            states[stage] = copy.deepcopy(reference.state_dict())  # the last module of a stage leaves the stage's state
    assert next(name for name, _ in modules) == "fc"
    initial = copy.deepcopy(loaded.model)
    for _, module in [(n, m) for n, m in initial.named_modules() if hasattr(m, "reset_parameters")][::-1]:
        torch.manual_seed(seed + 1)
        module.reset_parameters()
    size = (SIDE, SIDE)
    trained = resized(layer4_cams(loaded.model, x, labels, ["gradcam"])["gradcam"], size)
    for stage, randomised in cascade(loaded.model, initial):
        ours = resized(layer4_cams(randomised, x, labels, ["gradcam"])["gradcam"], size)
        reference.load_state_dict(states[stage])
        theirs = resized(layer4_cams(reference, x, labels, ["gradcam"])["gradcam"], size)
        for a, b, c in zip(trained, ours, theirs):
            quantus_abs = spearmanr(np.abs(a / np.abs(a).max()).ravel(), np.abs(c / np.abs(c).max()).ravel())[0]
            assert spearman(np.abs(a), np.abs(b)) == pytest.approx(quantus_abs, abs=1e-6)  # float32 rounding of a / max
            assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), c.ravel())[0], abs=1e-6)


class OnePixel(nn.Module):
    """Two classes decided by one pixel: logits (4 v, 0) where v is channel 0 at (row 1, col 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 1, 2]
        return torch.stack([4 * v, torch.zeros_like(v)], dim=1)


def test_deletion_auc_where_one_pixel_decides_the_class():
    x = torch.full((1, 3, 12, 12), 0.3)  # larger than the blur's reach (5 px), which insertion starts from
    x[0, 0, 1, 2] = 1.0  # P(class 0) = sigmoid(4); deleted (set to 0): sigmoid(0) = 0.5
    first = np.arange(144, dtype=np.float32)[::-1].reshape(1, 12, 12).copy()
    first[0, 1, 2] = 1000.0  # the deciding pixel ranks first
    last = first.copy()
    last[0, 1, 2] = -1.0  # ... or last
    p = 1 / (1 + math.exp(-4))
    # 4 steps of 36 pixels: P after 0, 36, 72, 108, 144 pixels; trapezoids over [0, 1] in quarters
    deletion_first, insertion_first = causal_curves(OnePixel(), x, first, [0], steps=4)
    np.testing.assert_allclose(deletion_first[0], [p, 0.5, 0.5, 0.5, 0.5])
    assert curve_auc(deletion_first)[0] == pytest.approx((p / 2 + 0.5 + 0.5 + 0.5 + 0.5 / 2) / 4)
    deletion_last, _ = causal_curves(OnePixel(), x, last, [0], steps=4)
    assert curve_auc(deletion_last)[0] == pytest.approx((p / 2 + p + p + p + 0.5 / 2) / 4)
    np.testing.assert_allclose(insertion_first[0, 1:], [p] * 4)  # inserted first: the class's P from step 1
    assert insertion_first[0, 0] < p


@pytest.fixture(scope="module")
def cards_run(tmp_path_factory):
    root = make_stamps(tmp_path_factory.mktemp("stamps"), "test", per_class=2, size=64)
    names = json.loads((root / "test" / "split.json").read_text())["class_names"]
    pair = ["--baseline", str(make_checkpoint(root / "b.safetensors", "resnet18", 0, class_names=names)),
            "--cbam", str(make_checkpoint(root / "c.safetensors", "resnet18-cbam", 1, class_names=names))]
    out = root / "cards"
    args = ["cards", "--data", str(root), "--out", str(out), *pair, "--images", "3", "--faithfulness-images", "1",
            "--scorecam-images", "1", "--steps", "4", "--batch-size", "2", "--cost-repeats", "1"]
    assert main([*args, "--methods", "gradcam,eigencam,scorecam"]) == 0
    return out, args


@pytest.mark.slow
def test_cards_command_writes_every_card(cards_run):
    out, _ = cards_run
    report = json.loads((out / "cards.json").read_text())
    assert list(report["methods"]) == ["gradcam", "eigencam", "scorecam"]
    for method in report["methods"]:
        for key in ("baseline", "cbam"):
            card = (out / card_file(method, key)).read_text()
            assert card.startswith(f"# {METHODS[method].label} Saliency Card: ")
            for section in ("## Methodology", "### Hyperparameter Dependence", "### Computational Efficiency",
                            "## Sensitivity Testing", "Cascading Model Parameter Randomization", "## Citation"):
                assert section in card, (method, section)
    assert (out / "randomisation-baseline.png").stat().st_size > 1000
    assert (out / "randomisation-cbam.png").stat().st_size > 1000
    measured = report["methods"]["scorecam"]["models"]["cbam"]
    assert (measured["scenes"], measured["faithfulness_scenes"]) == (1, 1)
    assert "measured on fewer scenes" in (out / card_file("scorecam", "cbam")).read_text()
    gradcam = report["methods"]["gradcam"]["models"]["baseline"]
    assert (gradcam["scenes"], gradcam["faithfulness_scenes"]) == (3, 1)
    assert report["methods"]["eigencam"]["verdict"] == "independent of the class"
    assert verdict("eigencam", out / "cards.json") == "independent of the class"
    assert set(verdicts(out / "cards.json")) == {"gradcam", "eigencam", "scorecam"}
    assert verdict("layercam", out / "cards.json") == ""


@pytest.mark.slow
def test_cards_command_keeps_earlier_methods(cards_run):
    out, args = cards_run
    assert main([*args, "--methods", "layercam"]) == 0
    report = json.loads((out / "cards.json").read_text())
    assert list(report["methods"]) == ["gradcam", "layercam", "eigencam", "scorecam"]
    assert "[Grad-CAM](gradcam-baseline.md)" in (out / "README.md").read_text()
    assert main([*args, "--methods", "nonsense"]) == 2
