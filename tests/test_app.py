"""The web app: the /compare and /paper_figure API through gradio_client, error messages, caching, CLI, logic."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from cbam_viz.app import served as served_files
from cbam_viz.app import server as app_server
from cbam_viz.app import studio as studio_module
from cbam_viz.app.controls import normalise_target, parse_box
from cbam_viz.app.figure_export import ExportFolder
from cbam_viz.app.server import StudioBlocks, user_errors
from cbam_viz.app.studio import Studio
from cbam_viz.app.views import (
    PEAK_MARKERS,
    attention_overlay,
    colorbar_html,
    download_name,
    familiarity_gauge,
    gauge_scale,
    heatmap_overlay,
    localization_preview,
    scores_json,
)
from cbam_viz.cam.engine import compare
from cbam_viz.cam.figures import channel_attention_figure, paper_figure
from cbam_viz.cam.render import colorize
from cbam_viz.errors import CbamVizError
from cbam_viz.familiarity.detectors import FamiliarityScore
from cbam_viz.eval.metrics import box_mask, energy_in_mask, pointing_hit
from cbam_viz.io.checkpoints import load_pair
from cbam_viz.io.images import ImageError
from cbam_viz.lru import LRU
from cbam_viz.nn.cbam import CBAMConfig
from tests.apphelpers import ROOT, app, free_port, serve
from tests.conftest import CLASS_NAMES, make_checkpoint, random_image

EXAMPLE = ROOT / "tests" / "fixtures" / "scenes" / "green_disc.png"

# The HTTP API's client example (docs/app.md; test_readme_snippet also runs the documented copy).
README_SNIPPET = '''
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")
overlay_baseline, overlay_cbam, scores = client.predict(
    handle_file("examples/penguin.jpg"),  # the only required input
    target="top1",  # or one class name for both models, e.g. "penguin"
    api_name="/compare",
)
for key, result in scores["models"].items():
    print(result["model"], result["target"]["label"], f"P={result['target']['p']:.3f}", result["localization"])
print("heatmaps saved at", overlay_baseline, overlay_cbam)
'''


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    """The real page and API, served in this process (so the test can count model passes), 1 MB upload cap; its
    examples are the test scenes and the README's penguin, each with its mask."""
    examples = tmp_path_factory.mktemp("examples")
    for path in [*(ROOT / "tests" / "fixtures" / "scenes").glob("*.png"), *(ROOT / "examples").glob("penguin*")]:
        (examples / path.name).symlink_to(path)
    studio = Studio(tiny_models, examples_dir=examples)
    with serve(studio, ExportFolder(tmp_path_factory.mktemp("exports")), max_file_size="1mb") as served:
        yield served


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


@contextlib.contextmanager
def count_forwards(models):
    """Count forward passes of every model (a pre-hook on conv1: runs for plain and grad-cam passes alike)."""
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1

    handles = [loaded.model.conv1.register_forward_pre_hook(hook) for loaded in models.values()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def save(image: Image.Image, path: Path) -> str:
    image.save(path)
    return str(path)


# ------------------------------------------------------------------------------------------------ the API
def test_api_has_compare_with_only_the_image_required(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/compare", "/paper_figure"}  # the page's own events are private
    params = {p["parameter_name"]: p for p in endpoints["/compare"]["parameters"]}
    assert list(params) == ["image", "target", "method", "layer", "opacity", "colormap", "box", "attention_effects"]
    assert [name for name, p in params.items() if not p["parameter_has_default"]] == ["image"]
    assert params["target"]["parameter_default"] == "top1" and params["method"]["parameter_default"] == "gradcam"


def test_compare_json_and_overlays(client, tiny_models):
    base_png, cbam_png, scores = client.predict(handle_file(str(EXAMPLE)), api_name="/compare")
    reference = compare(Image.open(EXAMPLE).convert("RGB"), tiny_models)
    assert scores["method"] == "gradcam" and scores["layer"] == "layer4" and scores["target"] == "top1"
    assert scores["image"]["name"] == "green_disc.png"
    for key in ("baseline", "cbam"):
        entry, ref = scores["models"][key], reference.results[key]
        assert [p["label"] for p in entry["top5"]] == [p.label for p in ref.top5]
        assert all(set(CLASS_NAMES) >= {p["label"]} for p in entry["top5"])
        assert sum(p["p"] for p in entry["top5"]) == pytest.approx(1.0, abs=1e-4)  # 5 classes
        assert entry["target"] == entry["top5"][0]  # each model's own top-1
        assert entry["target"]["p"] == pytest.approx(ref.target.prob, abs=1e-5)
        loc = entry["localization"]  # bundled example: its mask is known
        assert isinstance(loc["pointing_hit"], bool) and 0.0 <= loc["energy_in_mask"] <= 1.0
    assert scores["localization"] == {"source": "example mask", "box": None}
    assert "attention_agreement" not in scores["models"]["baseline"]
    agree = scores["models"]["cbam"]["attention_agreement"]
    assert agree["block"] == "layer4.2" and -1.0 <= agree["pearson"] <= 1.0
    for path in (base_png, cbam_png):
        with Image.open(path) as im:
            assert im.size == (224, 168)
            assert np.asarray(im.convert("RGB"), dtype=np.float32).std() > 10  # a real overlay, not blank


def test_compare_with_attention_effects_adds_the_knock_out_table(client, tiny_models):
    _, _, plain = client.predict(handle_file(str(EXAMPLE)), api_name="/compare")
    assert "attention_effects" not in plain  # off by default
    _, _, scores = client.predict(handle_file(str(EXAMPLE)), attention_effects=True, api_name="/compare")
    effects = scores["attention_effects"]
    target = scores["models"]["cbam"]["target"]
    assert effects["model"] == "CBAM-ResNet50" and effects["target"] == {"label": target["label"],
                                                                          "index": target["index"]}
    assert effects["intact"]["p_target"] == pytest.approx(target["p"], abs=1e-5)  # the same forward pass
    assert effects["intact"]["top1_label"] == scores["models"]["cbam"]["top5"][0]["label"]
    rows = effects["knockouts"]
    assert [(r["stage"], r["gate"]) for r in rows] == [
        (stage, gate) for stage in (1, 2, 3, 4) for gate in ("spatial", "channel", "both")
    ]
    for row in rows:
        assert row["delta_p"] == pytest.approx(row["p_target"] - effects["intact"]["p_target"], abs=2e-6)
        assert row["top1_changed"] == (row["top1"] != effects["intact"]["top1"])
        assert -1.0 <= row["cam_correlation"] <= 1.0 and isinstance(row["peak_moved"], bool)
        assert isinstance(row["pointing"], bool) and 0.0 <= row["energy"] <= 1.0  # the example's mask is known
    with pytest.raises(AppError, match="attention_effects must be true or false, not 'maybe'"):
        client.predict(handle_file(str(EXAMPLE)), attention_effects="maybe", api_name="/compare")


def test_the_knock_out_panel_shows_the_table_and_the_chosen_knocked_out_heatmap(tiny_models, tmp_path):
    from cbam_viz.app.handlers import Handlers

    studio = Studio(tiny_models, examples_dir=None)
    handlers = Handlers(studio, ExportFolder(tmp_path / "exports"))
    folder = Path(handlers.uploads[0]) / "effects-test"
    folder.mkdir(parents=True, exist_ok=True)
    random_image(66).save(folder / "photo.png")
    image = {"path": str(folder / "photo.png"), "orig_name": "photo.png"}
    runs = studio.model_runs
    table, picture = handlers.attention_effects(image, "top1", "layer2", "channel", 0.5, "jet", "")
    assert studio.model_runs == runs + 2 + 1  # the base pass of both models, then one knock-out run
    assert table.count("| layer") == 12 and "| layer2 | channel |" in table
    assert picture.visible and "without layer2's channel gate" in picture.label
    table_again, other = handlers.attention_effects(image, "top1", "layer4", "both", 0.5, "jet", "")
    assert studio.model_runs == runs + 3 and table_again == table  # another stage: from the cache
    assert "without layer4's gates" in other.label and other.value != picture.value
    with pytest.raises(gr.Error, match="no image yet"):
        handlers.attention_effects(None, "top1", "layer4", "both", 0.5, "jet", "")


def test_target_by_class_name_and_box(client, tiny_models, tmp_path):
    image = random_image(21, (96, 80))
    path = save(image, tmp_path / "scene.png")
    _, _, scores = client.predict(handle_file(path), target="green disc", box="10, 12, 60, 50", api_name="/compare")
    reference = compare(image, tiny_models, target="green disc")
    mask = box_mask((10, 12, 60, 50), (80, 96))
    for key in ("baseline", "cbam"):
        entry, ref = scores["models"][key], reference.results[key]
        assert entry["target"]["label"] == "green disc" and entry["target"]["index"] == 1
        assert entry["target"]["p"] == pytest.approx(float(ref.probs[1]), abs=1e-5)
        heat = ref.heatmaps[0]
        assert entry["localization"]["pointing_hit"] == pointing_hit(heat, mask)
        assert entry["localization"]["energy_in_mask"] == pytest.approx(energy_in_mask(heat, mask), abs=1e-5)
    assert scores["localization"] == {"source": "box", "box": [10.0, 12.0, 60.0, 50.0]}
    # no mask and no box: localization is unknown, not made up
    _, _, plain = client.predict(handle_file(path), api_name="/compare")
    assert plain["localization"] is None and plain["models"]["cbam"]["localization"] is None


BAD_UPLOADS = {
    "empty.png": (b"", "empty.png is empty"),
    "notes.png": (b"these are not the pixels you are looking for\n" * 3, "notes.png is not an image file"),
    "cut.png": (None, "cut.png is truncated or corrupt"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_gives_a_clear_message_without_paths(client, tmp_path, name):
    data, expected = BAD_UPLOADS[name]
    if data is None:  # a PNG cut in the middle of its pixel data
        buffer = io.BytesIO()
        random_image(3, (120, 90)).save(buffer, format="PNG")
        data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(path)), api_name="/compare")
    message = str(caught.value)
    assert expected in message
    assert "verbose error" not in message and "Traceback" not in message
    assert not re.search(r"(/tmp|/work|/home|gradio_api|\\\\)", message), message


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"target": "blue bat"}, "did you mean 'blue bar'"),
        ({"target": "top5"}, "one class name or one class index"),
        ({"method": "magic"}, "unknown CAM method 'magic'"),
        ({"layer": "layer9"}, "unknown layer 'layer9'"),
        ({"colormap": "rainbowz"}, "unknown colormap"),
        ({"box": "1, 2, 3"}, "four numbers"),
        ({"box": "500, 500, 600, 600"}, "does not cover any pixel"),
        ({"box": "0,0,1e308,1e308"}, "the box coordinate '1e308' is out of range"),
        ({"target": "x" * 10_000}, f"unknown target class {'x' * 80!r}… (10000 characters)"),
        ({"target": "7" * 5_000}, "(5000 characters); use 'top1', one class name or one class index"),
        ({"method": "m" * 10_000}, "(10000 characters); choose one of gradcam"),
        ({"box": "1, 2, 3, 4 " + "x" * 10_000}, "four numbers 'x0, y0, x1, y1' in pixels, not '1, 2, 3, 4 xxx"),
        ({"box": "1, 2, 3, " + "4" * 10_000}, "out of range"),
    ],
)
def test_bad_controls_give_clear_messages(client, kwargs, expected):
    with pytest.raises(AppError, match=re.escape(expected)) as caught:
        client.predict(handle_file(str(EXAMPLE)), api_name="/compare", **kwargs)
    assert len(str(caught.value)) < 250, str(caught.value)  # user text comes back clipped, never whole


def test_overlay_files_are_written_once_under_new_names(tmp_path, monkeypatch):
    monkeypatch.setattr(served_files, "get_upload_folder", lambda: str(tmp_path))
    picture = random_image(9, (40, 30))
    first = served_files.served(picture)
    before = (Path(first).read_bytes(), os.stat(first).st_ino, os.stat(first).st_mtime_ns)
    second = served_files.served(picture)  # the same picture again, as for an identical request
    assert first != second and Path(first).parent == Path(second).parent == tmp_path / served_files.OVERLAYS
    assert (Path(first).read_bytes(), os.stat(first).st_ino, os.stat(first).st_mtime_ns) == before
    assert Path(second).read_bytes() == before[0]
    with Image.open(second) as im:
        assert im.format == "WEBP" and im.size == (40, 30)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(map(Path, (first, second)))  # no .part


def hold_scorecam(monkeypatch, on_fast=lambda: None) -> tuple[threading.Event, threading.Event]:
    """(started, finish): ScoreCAM passes set `started`, wait for `finish`, then run as Grad-CAM++ (standing in for
    minutes of ScoreCAM); every other pass calls `on_fast` first."""
    started, finish = threading.Event(), threading.Event()
    real = studio_module.run_models

    def passes(images, models, **kwargs):
        if kwargs["method"] == "scorecam":
            started.set()
            assert finish.wait(120)
            kwargs["method"] = "gradcam++"
        else:
            on_fast()
        return real(images, models, **kwargs)

    monkeypatch.setattr(studio_module, "run_models", passes)
    return started, finish


def test_slow_methods_run_one_at_a_time_and_only_within_their_time_limit(tiny_models, monkeypatch):
    studio = Studio(tiny_models, examples_dir=None)
    source = studio.open(random_image(12, (72, 56)))
    studio.base(source)
    assert studio.forward_seconds and studio.forward_seconds > 0
    passes, seconds = studio.slow_estimate("scorecam", "layer4")
    share = studio_module.SLOW_PASS_SHARE
    assert passes == 2048 and seconds == pytest.approx(2 * 2048 * share * studio.forward_seconds)
    assert studio.slow_estimate("scorecam", "layer1")[0] == 256

    studio.slow_seconds = seconds / 2  # refused before any model runs, saying why
    runs = studio.model_runs
    with pytest.raises(CbamVizError, match=r"^ScoreCAM at layer4 runs each model 2048 times \(once per channel\), "
                                           r"about .+ over its limit of .+: pick another method"):
        studio.analyse(source, method="scorecam", layer="layer4")
    assert studio.model_runs == runs

    studio.slow_seconds = 1e9
    started, finish = hold_scorecam(monkeypatch)
    first = threading.Thread(target=studio.analyse, args=(source,), kwargs={"method": "scorecam", "layer": "layer3"})
    first.start()
    try:
        assert started.wait(60)
        other = studio.open(random_image(13, (64, 48)))
        with pytest.raises(CbamVizError, match="^another ScoreCAM request is running .they run one at a time."):
            studio.analyse(other, method="scorecam", layer="layer1")
        assert studio.analyse(other, method="hirescam").method == "hirescam"  # the fast methods are not held up
    finally:
        finish.set()
        first.join(60)
    assert studio.analyse(source, method="scorecam", layer="layer3").method == "scorecam"  # cached: no slot needed
    assert studio._slow.acquire(blocking=False)  # and the slot was given back
    studio._slow.release()
    # the run measured what one pass costs at its layer, and later estimates there use it
    assert studio.pass_seconds("layer3") > 0 and studio.slow_estimate("scorecam", "layer3")[1] == pytest.approx(
        2 * 1024 * studio.pass_seconds("layer3"), rel=1e-3
    )


def test_a_running_scorecam_leaves_every_fast_slot_to_fast_requests(tiny_models, tmp_path, monkeypatch):
    """With --concurrency 1, a fast /compare still runs while a ScoreCAM request is computing, and the studio never
    lets more than `concurrency` fast passes compute at once."""
    studio = Studio(tiny_models, examples_dir=None, concurrency=1)
    studio.slow_seconds = 1e9
    fast_inside = []  # False: the fast pass holds the only fast slot
    started, finish = hold_scorecam(monkeypatch, lambda: fast_inside.append(studio._fast.acquire(blocking=False)))
    slow_image, fast_image = tmp_path / "slow.png", tmp_path / "fast.png"
    random_image(80, (64, 48)).save(slow_image)
    random_image(81, (66, 50)).save(fast_image)
    with serve(studio, ExportFolder(tmp_path / "exports")) as served:
        clients = [Client(served.url, verbose=False) for _ in range(2)]
        slow = clients[0].submit(handle_file(str(slow_image)), method="scorecam", layer="layer3", api_name="/compare")
        try:
            assert started.wait(120)
            _, _, scores = clients[1].predict(handle_file(str(fast_image)), method="hirescam", layer="layer3",
                                              api_name="/compare")
            assert scores["method"] == "hirescam" and not slow.done()  # answered while ScoreCAM still runs
        finally:
            finish.set()
        assert slow.result(timeout=120)[2]["method"] == "scorecam"
    assert fast_inside and not any(fast_inside)


def test_the_page_says_which_methods_are_slow(server):
    method = next(b for b in server.demo.blocks.values() if getattr(b, "elem_id", None) == "method")
    assert method.info.startswith("ScoreCAM: slow, one forward pass per channel") and "is refused" in method.info
    assert ("ScoreCAM (slow: one forward pass per channel)", "scorecam") in method.choices


def test_cache_pruning_deletes_old_files_and_their_folders_but_keeps_examples(tmp_path, monkeypatch):
    import time

    import gradio as gr

    monkeypatch.setattr(app_server, "get_upload_folder", lambda: str(tmp_path))
    with StudioBlocks() as demo:
        gallery = gr.Image()
    paths = {name: tmp_path / name / "f.png" for name in ("upload", "overlay", "example", "fresh")}
    for name in ("upload", "overlay", "example"):
        paths[name].parent.mkdir()
        paths[name].write_bytes(b"x")
    time.sleep(1.2)
    paths["fresh"].parent.mkdir()
    paths["fresh"].write_bytes(b"x")
    demo.upload_file_set.update(str(paths[n]) for n in ("upload", "fresh"))
    gallery.temp_files.update(str(paths[n]) for n in ("overlay", "example"))
    gallery.keep_in_cache.add(str(paths["example"]))
    untracked = tmp_path / "other-app.png"  # another app's file in the same folder: not ours to delete
    untracked.write_bytes(b"x")
    demo.prune_cache(1.0)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "example", "example/f.png", "fresh", "fresh/f.png", "other-app.png", "overlay", "upload",
    ]  # the emptied folders go once they too are older than the age
    assert str(paths["upload"]) not in demo.upload_file_set and str(paths["fresh"]) in demo.upload_file_set
    for folder in ("overlay", "upload"):
        os.utime(tmp_path / folder, (0, 0))
    demo.prune_cache(1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example", "fresh", "other-app.png"]


def test_prune_empty_folders_removes_only_old_empty_ones(tmp_path):
    from cbam_viz.app.served import prune_empty_folders

    old_empty, new_empty, full, nested = (tmp_path / n for n in ("old", "new", "full", "a/b"))
    for folder in (old_empty, new_empty, full, nested):
        folder.mkdir(parents=True)
    (full / "upload.png").write_bytes(b"x")
    for folder in (old_empty, full, nested, tmp_path / "a"):
        os.utime(folder, (0, 0))
    assert prune_empty_folders(tmp_path, older_than=60) == 2  # old/ and a/b/ (a/ changed just now: next round)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "full", "new"] and (full / "upload.png").exists()
    assert prune_empty_folders(tmp_path, older_than=0) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_upload_size_cap(server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(1_200_000))
    response = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("big.png", big.read_bytes())})
    assert response.status_code == 413
    assert app.parse_args([]).max_file_size == "50mb"


def test_cached_rerender_does_not_run_the_models(client, server, tiny_models, tmp_path):
    path = handle_file(save(random_image(31, (80, 64)), tmp_path / "cache.png"))
    with count_forwards(tiny_models) as calls:
        client.predict(path, api_name="/compare")
        assert calls["n"] == 2  # one forward pass per model
        # rendering-only changes and layer4 Grad-CAM of another class come from the cache
        client.predict(path, opacity=0.2, colormap="turbo", api_name="/compare")
        _, _, scores = client.predict(path, target="white star", box="0, 0, 40, 40", api_name="/compare")
        assert scores["models"]["cbam"]["target"]["label"] == "white star"
        assert calls["n"] == 2
        # another method needs the model (once per model), then is cached too
        client.predict(path, method="hirescam", api_name="/compare")
        after_method = calls["n"]
        assert after_method > 2
        client.predict(path, method="hirescam", opacity=0.9, api_name="/compare")
        assert calls["n"] == after_method


def test_concurrent_requests_match_sequential_results(client, tiny_models, tmp_path):
    images = [random_image(40 + i, (72, 56)) for i in range(3)]
    paths = [save(im, tmp_path / f"c{i}.png") for i, im in enumerate(images)]
    jobs = [client.submit(handle_file(p), target=t, api_name="/compare") for p in paths for t in ("top1", "red square")]
    results = [job.result(timeout=120) for job in jobs]
    for (p, t), (_, _, scores) in zip([(p, t) for p in paths for t in ("top1", "red square")], results):
        reference = compare(images[paths.index(p)], tiny_models, target=t)
        for key in ("baseline", "cbam"):
            assert scores["models"][key]["target"]["p"] == pytest.approx(reference.results[key].target.prob, abs=1e-5)


def test_paper_figure_endpoint_writes_png_and_pdf(client, tmp_path):
    extra = save(random_image(50, (64, 48)), tmp_path / "extra.png")
    preview, files = client.predict(
        handle_file(str(EXAMPLE)), extra_images=[handle_file(extra)], title="Test", api_name="/paper_figure"
    )
    with Image.open(preview) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 600  # 2 rows x 3 columns at 200 dpi
    assert sorted(Path(f).suffix for f in files) == [".pdf", ".png"]
    pdf = next(f for f in files if f.endswith(".pdf"))
    assert Path(pdf).read_bytes()[:5] == b"%PDF-"
    with pytest.raises(AppError, match="add an image first"):
        client.predict(api_name="/paper_figure")


def run_snippet(code: str, url: str) -> str:
    code = code.replace("http://127.0.0.1:7860/", url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.chdir(ROOT):
        exec(compile(code, "<readme>", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


def test_readme_snippet(server):
    output = run_snippet(README_SNIPPET, server.url)
    assert re.search(r"^ResNet50 \S.* P=0\.\d{3} \{'pointing_hit'", output, re.MULTILINE), output
    assert re.search(r"^CBAM-ResNet50 \S.* P=0\.\d{3} ", output, re.MULTILINE), output
    docs = (ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", docs, re.S) if 'api_name="/compare"' in b]
    assert len(blocks) == 1
    assert "P=" in run_snippet(blocks[0], server.url)  # the documented copy runs too


# ---------------------------------------------------------------------------------------------- the logic
def test_studio_fast_retarget_equals_a_fresh_compare(tiny_models):
    studio = Studio(tiny_models, examples_dir=None)
    source = studio.open(random_image(60, (70, 50)))
    studio.analyse(source)
    assert studio.model_runs == 2
    for target in ("blue bar", "3", "top1"):
        analysis = studio.analyse(source, target)
        reference = compare(source.image, tiny_models, target=normalise_target(target))
        for key in ("baseline", "cbam"):
            assert analysis.results[key].targets == reference.results[key].targets
            np.testing.assert_allclose(analysis.results[key].heatmaps, reference.results[key].heatmaps, atol=1e-6)
    assert studio.model_runs == 2
    # the same pixels from a file are the same cache entry
    assert studio.open(Image.fromarray(np.asarray(source.image))).key == source.key


def test_spatial_attention_is_drawn_on_the_absolute_scale_and_a_flat_map_is_called_nearly_constant(tiny_models):
    studio = Studio(tiny_models, examples_dir=None)
    analysis = studio.analyse(studio.open(random_image(63)))
    spatial = analysis.results["cbam"].attention.spatial
    spatial["layer4.2"] = torch.full_like(spatial["layer4.2"], 0.72)
    spatial["layer4.2"][0, 0] = 0.75  # spans 0.03: nearly constant
    spatial["layer3.5"] = torch.linspace(0.2, 0.6, spatial["layer3.5"].numel()).view_as(spatial["layer3.5"])
    flat, label, note = attention_overlay(analysis, "layer4.2", opacity=1.0)
    assert label.endswith("Ms 0.72–0.75") and "nearly constant" in note and "0.72–0.75" in note
    colours = np.asarray(flat).reshape(-1, 3).astype(int)
    assert np.abs(colours - colours.mean(axis=0)).max() < 40  # one colour, not a full-range jet of hot spots
    stretched, _, _ = attention_overlay(analysis, "layer4.2", opacity=1.0, stretch=True)
    spread = {name: np.asarray(im).reshape(-1, 3).std(axis=0).sum() for name, im in (("flat", flat), ("s", stretched))}
    assert spread["s"] > 3 * spread["flat"], spread  # stretched, the same map spans the whole colormap
    ramp, label, note = attention_overlay(analysis, "layer3.5", opacity=1.0)
    assert note == "" and label.endswith("Ms 0.20–0.60")
    # absolute: 0.2 to 0.6 of the colormap, never its ends; stretched: both ends
    ends = colorize(np.array([[0.0, 1.0]]), "jet")[0].astype(int)
    for picture, reaches in ((ramp, False), (attention_overlay(analysis, "layer3.5", 1.0, stretch=True)[0], True)):
        pixels = np.asarray(picture).reshape(-1, 1, 3).astype(int)
        nearest = np.abs(pixels - ends[None]).sum(axis=2).min(axis=0)  # each end's closest pixel
        assert (nearest.max() < 30) == reaches, nearest
    assert "0: position suppressed" in colorbar_html("jet", False) and "minimum" in colorbar_html("jet", True)


def test_the_familiarity_gauge_says_familiar_borderline_or_unfamiliar_against_the_threshold():
    quantiles = {"0.5": 1.0, "0.8": 2.0}
    detector = SimpleNamespace(info={"val_quantiles": quantiles})
    states = {}
    for score in (0.5, 2.5, 3.5):
        verdict = FamiliarityScore(score, 3.0, score > 3.0, "patches")
        html = familiarity_gauge(SimpleNamespace(familiarity=verdict), detector)
        states[score] = html.split("gauge gauge-")[1].split('"')[0]
        assert f"score {score:.2f}, threshold 3.00" in html
    assert states == {0.5: "familiar", 2.5: "borderline", 3.5: "unfamiliar"}
    assert gauge_scale(3.0, quantiles) == (1.0, 2.0, 4.0)
    assert gauge_scale(3.0, None) == (0.0, 3.0, 4.5)  # no recorded quantiles: no borderline band
    assert familiarity_gauge(SimpleNamespace(familiarity=None), detector) == ""


def test_a_heatmap_download_is_a_png_named_after_photo_model_method_and_layer(tiny_models):
    studio = Studio(tiny_models, examples_dir=None)
    source = studio.open(random_image(64), name="my camel photo.jpg")
    analysis = studio.analyse(source, method="hirescam", layer="layer3")
    assert download_name(analysis, "cbam") == "my_camel_photo_cbam-resnet50_hirescam_layer3"
    path = Path(served_files.served(heatmap_overlay(analysis, "cbam"), download_name(analysis, "cbam")))
    assert path.name == "my_camel_photo_cbam-resnet50_hirescam_layer3.png" and Image.open(path).format == "PNG"
    assert served_files.delete_old_files(path.parent.parent, 0.0) >= 1 and not path.exists()


def test_peak_markers_stay_distinct_when_the_peaks_coincide(tiny_models):
    studio = Studio(tiny_models, examples_dir=None)
    analysis = studio.analyse(studio.open(Image.new("RGB", (400, 300), (128, 128, 128))))
    for result in analysis.results.values():
        result.heatmaps[0] = 0.0
        result.heatmaps[0][150, 200] = 1.0  # both peaks on one pixel
    marked = np.asarray(localization_preview(analysis, None)).astype(int)
    colours = {tuple(c) for c in marked.reshape(-1, 3)}
    for colour, _ in PEAK_MARKERS.values():
        assert colour in colours  # the larger square does not hide the circle
    blue = (np.abs(marked - PEAK_MARKERS["baseline"][0]).sum(axis=2) == 0).sum()
    assert blue > 250  # a ring about 1/9 of the picture across and 1/100 of it thick, not a few pixels


def test_a_channel_only_cbam_shows_its_channel_weights_and_says_it_has_no_spatial_map(tiny_checkpoints, tmp_path):
    cbam = make_checkpoint(tmp_path / "channel.safetensors", "resnet50-cbam", 3, cbam=CBAMConfig(arrangement="channel"))
    models = load_pair(tiny_checkpoints["baseline"], cbam)
    studio = Studio(models, examples_dir=None)
    analysis = studio.analyse(studio.open(random_image(62)))
    attention = analysis.results["cbam"].attention
    assert attention.blocks[-1] == "layer4.2" and attention.stage(1) == ["layer1.0", "layer1.1", "layer1.2"]
    assert not attention.spatial and attention.channel["layer4.2"].shape == (2048,)
    picture, caption, note = attention_overlay(analysis, "layer3.5")
    assert picture is None and caption == "layer3.5 · channel attention only: this CBAM variant has no spatial map"
    assert note == ""
    assert "attention_agreement" not in scores_json(analysis)["models"]["cbam"]
    fig = channel_attention_figure(attention, ["layer1.2", "layer2.3", "layer3.5", "layer4.2"])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [
        "layer1.2: 256 channels", "layer2.3: 512 channels", "layer3.5: 1024 channels", "layer4.2: 2048 channels"]


def test_studio_examples_masks_and_uploads(tiny_models, tmp_path):
    studio = Studio(tiny_models, examples_dir=ROOT / "tests" / "fixtures" / "scenes")
    assert {p.name for p in studio.examples} >= {"green_disc.png", "red_square.png"}
    assert not any(p.name.endswith(".mask.png") for p in studio.examples)
    source = studio.open_upload({"path": str(EXAMPLE), "orig_name": "my photo.png"})
    assert source.name == "my photo.png" and source.key in studio.example_masks
    mask = studio.example_mask(source, source.image.size)
    assert mask.shape == (168, 224) and 0.05 < mask.mean() < 0.3
    assert studio.open_upload(None) is None
    with pytest.raises(ImageError, match="is a URL"):
        studio.open_upload({"path": "https://example.com/cat.jpg", "orig_name": "cat.jpg"})
    buffer = io.BytesIO()
    random_image(1).save(buffer, format="PNG")
    import base64

    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert studio.open_upload({"path": None, "url": data_url}).image.size == (72, 56)


def test_box_is_in_original_pixels_for_large_uploads(tiny_models):
    studio = Studio(tiny_models, examples_dir=None, max_side=256)
    source = studio.open(random_image(70, (1024, 512)))
    analysis = studio.analyse(source)
    assert analysis.image.size == (256, 128) and analysis.scale == 0.25
    localization = studio.localize(analysis, (0, 0, 512, 256))  # the top-left quarter of the upload
    assert localization.mask.shape == (128, 256)
    assert localization.mask[:64, :128].all() and localization.mask.sum() == 64 * 128
    with pytest.raises(CbamVizError, match="does not cover any pixel of the 1024×512 image"):
        studio.localize(analysis, (2000, 0, 2100, 10))


def test_scores_json_is_plain_json(tiny_models):
    import json

    studio = Studio(tiny_models, examples_dir=ROOT / "tests" / "fixtures" / "scenes")
    analysis = studio.analyse(studio.open(EXAMPLE))
    data = scores_json(analysis, studio.localize(analysis))
    assert json.loads(json.dumps(data)) == data


def test_parse_box():
    assert parse_box("") is None and parse_box(None) is None
    assert parse_box("(1, 2.5, 30, 40)") == (1.0, 2.5, 30.0, 40.0)
    assert parse_box("[1 2 3 4]") == (1.0, 2.0, 3.0, 4.0)
    assert parse_box("1e2, 2.5E1, -3e-1, .5e+1") == (100.0, 25.0, -0.3, 5.0)
    assert parse_box([0, 0, 64e6, 1]) == (0.0, 0.0, 64e6, 1.0)
    for bad in ("1, 2, 3", "a, b, c, d", "1, 2, 3, 4, 5", "1, 2, 3, 4 px", "1e, 2, 3, 4", [1, 2, 3]):
        with pytest.raises(CbamVizError, match="four numbers"):
            parse_box(bad)
    with pytest.raises(CbamVizError, match="not NaN"):
        parse_box([0, 0, float("nan"), 1])
    for far, shown in (("0,0,1e308,1e308", "'1e308'"), ("0 0 1e999 1", "'1e999'"), ("-7e7, 0, 1, 1", "'-7e7'"),
                       ([0, 0, 10**400, 1], "'1000000000"), ([0, 0, float("inf"), 1], "'inf'")):
        with pytest.raises(CbamVizError, match=re.escape(f"the box coordinate {shown}") + ".* is out of range"):
            parse_box(far)


def test_lru_runs_each_key_once_under_concurrency():
    cache = LRU(2)
    runs = []
    gate = threading.Event()

    def slow():
        runs.append(1)
        gate.wait(2)
        return "value"

    threads = [threading.Thread(target=cache.get_or_compute, args=("k", slow)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert runs == [1] and cache.get("k") == "value"
    cache.put("a", 1)
    cache.put("b", 2)
    assert "k" not in cache and len(cache) == 2
    weighted = LRU(10, weigh=len, budget=5)  # e.g. decoded uploads, weighed by their pixel count
    weighted.put("a", "xxx")
    weighted.put("b", "xxx")
    assert "a" not in weighted and weighted.get("b") == "xxx"


def test_nbytes_counts_what_a_cache_entry_holds(tiny_models):
    import torch

    from cbam_viz.lru import nbytes

    whole = torch.zeros(4, 8, dtype=torch.float32)
    array = np.zeros((10, 10), np.float32)
    entry = {"a": [array, array[:2]], "b": (whole[0], Image.new("RGB", (5, 4))), "c": "text", "d": 3}
    assert nbytes(entry) == 400 + 400 + 128 + 60  # a view holds its whole base
    assert nbytes(np.frombuffer(bytes(64), np.uint8)) == 64  # an array over a buffer that is not an array
    result = compare(random_image(2, (40, 30)), tiny_models).results["cbam"]  # a dataclass of arrays and tensors
    parts = nbytes(result.features) + result.heatmaps.nbytes + result.cams.nbytes + result.probs.nbytes
    assert parts > 0 and nbytes(result) >= parts + nbytes(result.attention)


def test_studio_caches_stay_within_their_byte_budget(tiny_models, tmp_path):
    from cbam_viz.app.cache import CACHE_SHARES

    studio = Studio(tiny_models, examples_dir=None, cache_mb=1.5)
    for seed in range(6):
        path = tmp_path / f"{seed}.png"
        random_image(seed, (80 + seed, 60)).save(path)
        source = studio.open(path)  # through the uploads cache, as the app's files are
        studio.analyse(source, "top1", "hirescam", "layer3")
        used = studio.cache_bytes
        for name, share in CACHE_SHARES.items():
            assert used[name] <= share * 1.5 * 2**20, (name, used)
    assert 2 <= len(studio._base) < 6 and 2 <= len(studio._results) < 12 and len(studio._files) >= 2
    assert studio.analyse(source, "top1", "hirescam", "layer3").method == "hirescam"  # the newest stays cached


def test_user_errors_escape_html_and_hide_unexpected_errors():
    import gradio as gr

    @user_errors
    def bad_name():
        raise ImageError("<img src=x onerror=alert(1)>.png is empty (0 bytes).")

    @user_errors
    def crash():
        raise RuntimeError("secret /srv/path")

    with pytest.raises(gr.Error) as caught:
        bad_name()
    assert "<img" not in caught.value.message and "&lt;img" in caught.value.message
    with pytest.raises(gr.Error) as caught:
        crash()
    assert "/srv" not in caught.value.message and "server log" in caught.value.message


def test_paper_figure_and_channel_plot(tiny_models, tmp_path):
    rows = []
    for seed in (1, 2):
        c = compare(random_image(seed, (80, 60)), tiny_models, target="blue bar")
        rows.append((c.image, c.results["baseline"], c.results["cbam"]))
    written = paper_figure(rows, tmp_path / "fig.png", tmp_path / "fig.pdf", title="Two scenes")
    assert written == [tmp_path / "fig.png", tmp_path / "fig.pdf"]
    with Image.open(tmp_path / "fig.png") as im:
        assert im.format == "PNG" and im.width > 1000
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"
    attention = rows[0][2].attention
    fig = channel_attention_figure(attention, ["layer1.2", "layer2.3", "layer3.5", "layer4.2"])
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4


def test_a_very_long_figure_title_is_wrapped_and_clipped_inside_the_figure(tiny_models):
    from cbam_viz.cam.figures import TITLE_CHARS, TITLE_LINES, paper_figure_image, title_lines

    c = compare(random_image(3, (80, 60)), tiny_models)
    row = (c.image, c.results["baseline"], c.results["cbam"])
    assert title_lines("Two  scenes\n") == ["Two scenes"]
    long = ("Grad-CAM of both models " * 500)[:10_000]
    for title in (long, "x" * 10_000):  # words, and one 10,000-character word
        lines = title_lines(title)
        assert len(lines) == TITLE_LINES and all(len(line) <= TITLE_CHARS for line in lines)
        assert lines[-1].endswith("…") and lines[0] == title[: len(lines[0])]
        fig = paper_figure_image([row], title=title)
        fig.canvas.draw()
        shown = fig._suptitle
        assert shown.get_text() == "\n".join(lines)
        box, page = shown.get_window_extent(), fig.bbox
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)


# ------------------------------------------------------------------------------------------------- the CLI
def test_cli_defaults_and_environment(monkeypatch):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "CBAM_VIZ_BASELINE", "CBAM_VIZ_CBAM"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.baseline, args.cbam, args.device) == ("127.0.0.1", 7860, None, None, "cpu")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    args = app.parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 8123)
    args = app.parse_args(["--host", "127.0.0.2", "--port", "9000", "--baseline", "a.pth", "--cbam", "b.pth"])
    assert (args.host, args.port, str(args.baseline), str(args.cbam)) == ("127.0.0.2", 9000, "a.pth", "b.pth")


@pytest.mark.slow
def test_cli_missing_weights_fail_with_a_clear_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--baseline", str(tmp_path / "none.safetensors"),
         "--cbam", str(tmp_path / "none2.safetensors"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "error: checkpoint not found" in proc.stderr and "none.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_page_keeps_its_result_when_a_slow_run_is_refused_or_stopped(tiny_models, tmp_path):
    """update_page: a refused ScoreCAM, and one stopped by the visitor's Stop, leave the shown result and put the
    method back; progress is reported per batch of channel passes."""
    from cbam_viz.app.handlers import Handlers

    studio = Studio(tiny_models, examples_dir=None, slow_seconds=1e6)
    handlers = Handlers(studio, ExportFolder(tmp_path / "exports"))
    folder = Path(handlers.uploads[0]) / "page-test"  # the page's images are uploads
    folder.mkdir(parents=True, exist_ok=True)
    random_image(65).save(folder / "photo.png")
    image = {"path": str(folder / "photo.png"), "orig_name": "photo.png"}
    request = SimpleNamespace(session_hash="visitor")
    shown_page = handlers.update_page(image, "top1", "hirescam", "layer4", 0.5, "jet", "", None, request)
    shown = shown_page[-4]
    assert shown["method"] == "hirescam" and all(not isinstance(control, str) for control in shown_page[-3:])

    reports = []

    def press_stop(progress, desc=None, unit=None):
        reports.append((progress, desc))
        if isinstance(progress, tuple):  # once channel passes have run
            handlers.stop_slow(request)

    stopped = handlers.update_page(image, "top1", "scorecam", "layer1", 0.5, "jet", "", shown, request, press_stop)
    assert reports[0] == (0.0, "ScoreCAM: first channel passes")  # shown at once, before the first batch ends
    (done, total), desc = reports[1]
    assert len(reports) == 2 and total == 2 * 256 and 0 < done < total  # stopped after its first batch
    assert desc == "ScoreCAM: channel passes"
    assert stopped[-3:] == ("top1", "hirescam", "layer4")  # the controls go back to what is shown
    assert "HiResCAM" in stopped[3] and stopped[-4] == shown
    source = studio.open(image["path"], name="photo.png")
    assert not any((source.key, key, "scorecam", "layer1", 0) in studio._results for key in ("baseline", "cbam"))
    assert not handlers.stops

    studio.slow_seconds = 1e-9  # every ScoreCAM is now estimated over its limit: refused before it starts
    refused = handlers.update_page(image, "top1", "scorecam", "layer1", 0.5, "jet", "", shown, request)
    assert refused[-3:] == ("top1", "hirescam", "layer4") and "HiResCAM" in refused[3]
