"""ScoreCAM as the project runs it: grad-cam's weights in memory-bounded batches, a deadline, a cancel event and
progress; the studio's time limit, its per-layer estimates and its messages. Tiny ResNet18 pairs at 32 px."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cbam_viz.app import studio as studio_module
from cbam_viz.app.studio import Studio
from cbam_viz.cam import scorecam
from cbam_viz.cam.engine import METHODS, run_models
from cbam_viz.cam.scorecam import BoundedScoreCAM, Cancelled, OverTime, RunControl, masked_batch_size
from cbam_viz.errors import CbamVizError
from cbam_viz.nn.resnet import build_model
from tests.conftest import SMALL_SIDE as SIDE
from tests.conftest import random_image

BATCH = 50  # masked copies per batch in the tests that set the budget with `small_batches`


@pytest.fixture
def studio(small_models) -> Studio:
    """A studio whose slow-method limit no busy test machine reaches (a test that needs it reached sets it)."""
    return Studio(small_models, examples_dir=None, slow_seconds=3600.0)


@pytest.fixture
def small_batches(monkeypatch) -> None:
    """ScoreCAM's budget holds BATCH masked copies of a SIDE×SIDE input, so a layer's channels take several batches."""
    per_copy = 4 * SIDE * SIDE * (scorecam.FORWARD_FLOATS_PER_PIXEL + scorecam.MASK_FLOATS_PER_PIXEL)
    monkeypatch.setattr(scorecam, "MASKED_BATCH_BYTES", BATCH * per_copy)


def jump_clock_after_first_batch(monkeypatch, seen: list) -> None:
    """ScoreCAM's clock runs a day ahead once `seen` holds anything (the progress callback fills it)."""
    clock = SimpleNamespace(monotonic=lambda: time.monotonic() + (86400.0 if seen else 0.0))
    monkeypatch.setattr(scorecam, "time", clock)


def test_the_same_cams_as_grad_cam_in_bounded_batches(monkeypatch):
    torch.manual_seed(0)
    model = build_model("resnet18-cbam", 3).eval()
    x = torch.randn(2, 3, 40, 48)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    per_copy = 4 * 40 * 48 * (scorecam.FORWARD_FLOATS_PER_PIXEL + scorecam.MASK_FLOATS_PER_PIXEL)
    monkeypatch.setattr(scorecam, "MASKED_BATCH_BYTES", 7 * per_copy)  # 128 channels: 18 batches of 7, one of 2
    with ScoreCAM(model=model, target_layers=[model.layer2]) as cam:
        expected = cam(input_tensor=x, targets=targets)
    seen: list[tuple[int, int]] = []
    control = RunControl(progress=lambda done, total: seen.append((done, total)))
    with BoundedScoreCAM(model=model, target_layers=[model.layer2], control=control) as cam:
        got = cam(input_tensor=x, targets=targets)
        assert len(cam.activations_and_grads.activations) == 1  # the masked passes left nothing in the recorder
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert seen == [(min(done, 128) + 128 * image, 256) for image in range(2) for done in range(7, 135, 7)]
    assert METHODS["scorecam"].cam_class is BoundedScoreCAM


def test_the_batch_shrinks_as_the_input_grows_within_the_memory_bound():
    sizes = {side: masked_batch_size(side, side, 2048) for side in (16, 224, 320, 512, 1024)}
    assert sizes[16] == 2048 and sizes[224] > sizes[320] > sizes[512] > sizes[1024] == 1  # one copy at least
    per_pixel = 4 * (scorecam.FORWARD_FLOATS_PER_PIXEL + scorecam.MASK_FLOATS_PER_PIXEL)
    for side in (224, 320, 512):
        assert sizes[side] * side * side * per_pixel <= scorecam.MASKED_BATCH_BYTES
    assert masked_batch_size(224, 224, 8) == 8  # never more copies than channels


def test_a_deadline_already_past_stops_before_any_pass(small_models):
    image, past = random_image(1, (40, 30)), RunControl(deadline=time.monotonic() - 1)
    with pytest.raises(OverTime, match=r"^ScoreCAM stopped at its time limit after 0 of 64 channels$"):
        run_models([image], {"cbam": small_models["cbam"]}, method="scorecam", layer="layer1", control=past)
    run_models([image], small_models, method="gradcam", layer="layer1", control=past)  # one-pass methods ignore it


def test_the_limit_stops_a_run_says_so_and_caches_nothing(studio, monkeypatch, small_batches):
    source = studio.open(random_image(3, (40, 30)))
    studio.base(source)
    cached, runs = studio.cache_bytes["heatmaps"], studio.model_runs
    seen: list[tuple[int, int]] = []
    jump_clock_after_first_batch(monkeypatch, seen)
    control = RunControl(progress=lambda done, total: seen.append((done, total)))
    with pytest.raises(OverTime, match=rf"^ScoreCAM stopped at its limit of 60 min after {BATCH} of 256 channels: pick "
                                       r"another method \(one pass each\) or an earlier layer \(layer1\)$"):
        studio.analyse(source, "top1", "scorecam", "layer2", control)
    assert seen == [(BATCH, 256)]
    assert studio.cache_bytes["heatmaps"] == cached and studio.model_runs == runs + 1
    assert studio._slow.acquire(blocking=False)  # the slot was given back
    studio._slow.release()
    seen.clear()  # the clock runs true again, and the same request runs both models again
    analysis = studio.analyse(source, "top1", "scorecam", "layer2")
    assert analysis.method == "scorecam" and studio.model_runs == runs + 3
    assert all(r.heatmaps.shape == (1, 30, 40) for r in analysis.results.values())


def test_the_cancel_event_stops_a_run(studio, small_batches):
    source = studio.open(random_image(4, (40, 30)))
    studio.base(source)
    cancel = threading.Event()
    control = RunControl(progress=lambda done, total: cancel.set(), cancel=cancel)
    with pytest.raises(Cancelled, match=rf"^ScoreCAM cancelled after {BATCH} of 128 channels$"):
        studio.analyse(source, "top1", "scorecam", "layer1", control)
    assert isinstance(Cancelled("", 0, 0), CbamVizError)
    assert studio.cache_bytes["heatmaps"] == 0


def test_progress_counts_both_models_up_to_the_total(studio, small_batches):
    source = studio.open(random_image(5, (40, 30)))
    seen: list[tuple[int, int]] = []
    studio.analyse(source, "top1", "scorecam", "layer1", RunControl(progress=lambda *counts: seen.append(counts)))
    assert seen == [(BATCH, 128), (64, 128), (64 + BATCH, 128), (128, 128)]  # 64 channels per model, in 2 batches
    seen.clear()
    studio.analyse(source, "top1", "scorecam", "layer1", RunControl(progress=lambda *counts: seen.append(counts)))
    assert seen == []  # cached: nothing runs


def test_the_estimate_is_per_layer_and_recovers_after_a_slow_run(studio):
    source = studio.open(random_image(6, (40, 30)))
    studio.base(source)
    prior = studio.pass_seconds("layer2")
    assert prior == pytest.approx(studio_module.SLOW_PASS_SHARE * studio.forward_seconds)
    studio._measure("layer2", 1e4 * prior, 1)  # a run on a busy machine
    assert studio.pass_seconds("layer2") == pytest.approx(1e4 * prior, rel=1e-3)
    assert studio.pass_seconds("layer1") == prior  # the other layers keep their own estimate
    studio.slow_seconds = studio.slow_estimate("scorecam", "layer2")[1] / 100  # layer1's is 200 times less
    studio.analyse(source, "top1", "scorecam", "layer1")  # answered
    with pytest.raises(CbamVizError, match="^ScoreCAM at layer2 runs each model 128 times"):
        studio.analyse(source, "top1", "scorecam", "layer2")
    slow = studio.pass_seconds("layer2")
    assert slow == pytest.approx(1e4 * prior, rel=1e-3)  # a refusal changes no estimate
    studio._measure("layer2", 2.0 * prior, 2)  # a faster run counts half against the old ones
    assert studio.pass_seconds("layer2") == pytest.approx((slow + prior) / 2, rel=1e-3)
    seconds, when = studio._pass_seconds["layer2"]
    studio._pass_seconds["layer2"] = (seconds, when - 40 * studio_module.SLOW_HALF_LIFE)  # and age fades the excess
    assert studio.pass_seconds("layer2") == pytest.approx(prior, rel=1e-3)
    studio._measure("layer3", 0.1 * prior, 1)  # a faster machine than the prior says: kept as it ages
    seconds, when = studio._pass_seconds["layer3"]
    studio._pass_seconds["layer3"] = (seconds, when - 40 * studio_module.SLOW_HALF_LIFE)
    assert studio.pass_seconds("layer3") == pytest.approx(0.1 * prior, rel=1e-3)


def test_a_stopped_run_counts_its_partial_rate(studio, small_batches):
    source = studio.open(random_image(7, (40, 30)))
    studio.base(source)
    cancel = threading.Event()
    began = time.monotonic()
    with pytest.raises(Cancelled):
        studio.analyse(source, "top1", "scorecam", "layer2", RunControl(lambda *_: cancel.set(), cancel))
    took = time.monotonic() - began
    assert 0 < studio.pass_seconds("layer2") <= took / BATCH


def test_refusals_suggest_an_earlier_layer_only_where_one_exists(studio):
    source = studio.open(random_image(8, (40, 30)))
    studio.base(source)
    studio.slow_seconds = 1e-9
    with pytest.raises(CbamVizError, match=r"over its limit of 0 s: pick another method \(one pass each\)$"):
        studio.analyse(source, "top1", "scorecam", "layer1")
    with pytest.raises(CbamVizError, match=r": pick another method \(one pass each\) or an earlier layer "
                                           r"\(layer1, layer2\)$"):
        studio.analyse(source, "top1", "scorecam", "layer3")
