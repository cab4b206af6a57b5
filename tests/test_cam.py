"""CAM engine: exact fast Grad-CAM parity with pytorch_grad_cam, compare(), targets, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cbam_viz.cam.engine import METHODS, SLOW_METHODS, compare, preprocess, run_models
from cbam_viz.errors import CbamVizError
from cbam_viz.nn.resnet import build_model
from tests.conftest import CLASS_NAMES, INPUT_SIZE, random_image


@pytest.mark.parametrize("key", ["baseline", "cbam"])
def test_fast_gradcam_equals_pytorch_grad_cam(tiny_models, key):
    loaded = tiny_models[key]
    image = random_image(5, (INPUT_SIZE, INPUT_SIZE))
    classes = list(range(len(CLASS_NAMES)))
    ours = compare(image, {key: loaded}, target=classes).results[key]
    x = preprocess([image], loaded.meta)
    with GradCAM(model=loaded.model, target_layers=[loaded.model.layer4]) as cam:
        for slot, cls in enumerate(classes):
            theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])[0]
            assert ours.heatmaps[slot].shape == theirs.shape == (INPUT_SIZE, INPUT_SIZE)
            assert np.abs(ours.heatmaps[slot] - theirs).max() <= 1e-5, (key, cls)
    # different classes really give different maps (the comparison above is not vacuous)
    assert np.abs(ours.heatmaps[0] - ours.heatmaps[1]).max() > 0.05


def test_compare_returns_top5_targets_and_attention(tiny_models):
    image = random_image(1, (90, 40))
    result = compare(image, tiny_models)
    assert set(result.results) == {"baseline", "cbam"}
    for key, res in result.results.items():
        top5 = res.top5
        assert [p.label for p in top5] == [CLASS_NAMES[i] for i in np.argsort(-res.probs)[:5]]
        assert abs(sum(p.prob for p in top5) - 1.0) < 1e-5  # 5 classes: top-5 holds all the mass
        assert res.target == top5[0]
        assert res.heatmaps.shape == (1, 40, 90) and 0 <= res.heatmaps.min() and res.heatmaps.max() <= 1
    assert result.results["baseline"].attention is None
    attention = result.results["cbam"].attention
    assert len(attention.blocks) == 16
    assert attention.channel["layer4.2"].shape == (2048,)
    assert attention.spatial["layer1.0"].shape == (16, 16)  # 64 px input -> stride 4


def test_target_by_name_index_and_errors(tiny_models):
    image = random_image(2)
    by_name = compare(image, tiny_models, target="Blue Bar").results["cbam"]
    by_index = compare(image, tiny_models, target="2").results["cbam"]
    assert by_name.targets == by_index.targets == [2]
    np.testing.assert_array_equal(by_name.heatmaps, by_index.heatmaps)
    with pytest.raises(CbamVizError, match="did you mean 'blue bar'"):
        compare(image, tiny_models, target="blue bat")
    with pytest.raises(CbamVizError, match="out of range"):
        compare(image, tiny_models, target=7)
    with pytest.raises(CbamVizError, match="unknown CAM method"):
        compare(image, tiny_models, method="magic")
    with pytest.raises(CbamVizError, match="unknown layer"):
        compare(image, tiny_models, layer="layer5")


def test_batch_equals_single(tiny_models):
    images = [random_image(s, (64, 48)) for s in range(3)]
    batch = run_models(images, tiny_models, target="top5")
    for image, together in zip(images, batch):
        alone = compare(image, tiny_models, target="top5")
        for key in tiny_models:
            np.testing.assert_allclose(together.results[key].probs, alone.results[key].probs, atol=1e-5)
            np.testing.assert_allclose(together.results[key].heatmaps, alone.results[key].heatmaps, atol=1e-4)


def test_input_size_changes_the_feature_map_not_the_heatmap_size(tiny_models):
    # the tiny models are trained at 64 px: a 2x2 final map; at 128 px it is 4x4, heatmaps still cover the image
    image = random_image(4, (80, 60))
    trained, larger = (run_models([image], tiny_models, input_size=size)[0] for size in (None, 2 * INPUT_SIZE))
    for key in tiny_models:
        assert trained.results[key].cams.shape[-2:] == (INPUT_SIZE // 32, INPUT_SIZE // 32)
        assert larger.results[key].cams.shape[-2:] == (INPUT_SIZE // 16, INPUT_SIZE // 16)
        assert larger.results[key].heatmaps.shape == trained.results[key].heatmaps.shape == (1, 60, 80)
        assert not np.allclose(larger.results[key].probs, trained.results[key].probs)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "scorecam"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_every_method_through_grad_cam(tiny_models, method, layer):
    image = random_image(3, (50, 70))
    res = compare(image, tiny_models, target="top1", method=method, layer=layer).results["cbam"]
    assert res.heatmaps.shape == (1, 70, 50)
    assert np.isfinite(res.heatmaps).all() and res.heatmaps.min() >= 0 and res.heatmaps.max() <= 1


def test_layer4_gradcam_package_path_agrees_with_fast_path(tiny_models):
    """Grad-CAM on layer4 through grad-cam (forced by asking layer4 via the package) matches the fast path."""
    from cbam_viz.cam.engine import package_cam

    image = random_image(4, (INPUT_SIZE, INPUT_SIZE))
    fast = compare(image, tiny_models, target=[0, 3]).results["baseline"]
    loaded = tiny_models["baseline"]
    slow = package_cam(loaded, preprocess([image], loaded.meta), [[0, 3]], "gradcam", "layer4")[0]
    assert np.abs(fast.heatmaps - slow).max() <= 1e-5


def test_concurrent_compare_gives_each_request_its_own_result(tiny_models):
    images = [random_image(s) for s in range(6)]
    expected = [compare(im, tiny_models) for im in images]
    failures: list[str] = []

    def worker(i: int) -> None:
        for _ in range(3):
            got = compare(images[i], tiny_models).results["cbam"]
            want = expected[i].results["cbam"]
            if not np.allclose(got.heatmaps, want.heatmaps, atol=1e-5):
                failures.append(f"heatmap {i}")
            for name in want.attention.blocks:
                if not torch.allclose(got.attention.spatial[name], want.attention.spatial[name], atol=1e-5):
                    failures.append(f"attention {i} {name}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_grad_cam_recorder_ignores_other_threads_forwards(tiny_models):
    """A forward run by another thread while a grad-cam pass holds hooks must not enter that pass's activations."""
    from cbam_viz.cam.engine import OwnThreadActivations

    loaded = tiny_models["baseline"]
    x = preprocess([random_image(9, (INPUT_SIZE, INPUT_SIZE))], loaded.meta)
    recorder = OwnThreadActivations(loaded.model, [loaded.model.layer4])
    try:
        other = threading.Thread(target=lambda: loaded.model(x))
        other.start()
        other.join()
        assert recorder.activations == []
        recorder(x)
        assert len(recorder.activations) == 1
    finally:
        recorder.release()


@pytest.mark.slow
def test_scorecam_does_not_keep_the_gradient_methods_off_its_model(tiny_models, monkeypatch):
    """ScoreCAM runs no backward, so a HiResCAM pass on the same model runs while a ScoreCAM pass is under way; both
    give what they give alone."""
    from cbam_viz.cam.engine import package_cam
    from cbam_viz.cam.scorecam import BoundedScoreCAM as ScoreCAM

    loaded = tiny_models["cbam"]
    x = preprocess([random_image(10, (INPUT_SIZE, INPUT_SIZE))], loaded.meta)
    alone = {method: package_cam(loaded, x, [[1]], method, "layer1") for method in ("scorecam", "hirescam")}
    inside, finish, out = threading.Event(), threading.Event(), {}
    real = ScoreCAM.get_cam_weights

    def held(self, *args, **kwargs):  # ScoreCAM, stopped midway: its hooks are on the model, its forward done
        inside.set()
        assert finish.wait(60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ScoreCAM, "get_cam_weights", held)
    slow = threading.Thread(target=lambda: out.update(scorecam=package_cam(loaded, x, [[1]], "scorecam", "layer1")))
    slow.start()
    try:
        assert inside.wait(60)
        out["hirescam"] = package_cam(loaded, x, [[1]], "hirescam", "layer1")
        assert slow.is_alive()  # answered while ScoreCAM is still held
    finally:
        finish.set()
        slow.join(120)
    for method, expected in alone.items():
        np.testing.assert_allclose(out[method], expected, atol=1e-5)


def test_each_method_record_matches_what_grad_cam_does():
    model = build_model("resnet18", 3).eval()
    for name, method in METHODS.items():
        with method.cam_class(model=model, target_layers=[model.layer4]) as cam:
            assert method.gradients == cam.uses_gradients, name
    assert SLOW_METHODS == ("scorecam",)
    assert METHODS["scorecam"].choice == "ScoreCAM (slow: one forward pass per channel)"
    assert METHODS["gradcam"].choice == METHODS["gradcam"].label == "Grad-CAM"
