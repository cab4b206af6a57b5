"""CBAM Grad-CAM Studio: where ResNet50 and CBAM-ResNet50 look, side by side, and how CBAM's attention changes it.

    python app.py                       # http://127.0.0.1:7860 with the bundled weights (cbam_viz.weights)
    python app.py --host 0.0.0.0 --port 8080 --baseline a.safetensors --cbam b.pth --device cuda

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set the defaults of --host / --port, CBAM_VIZ_BASELINE / CBAM_VIZ_CBAM
those of --baseline / --cbam. This file only wires the UI: the logic lives in `cbam_viz.webapp`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import html
import importlib.util
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

from cbam_viz.allocator import return_freed_memory  # noqa: E402
from cbam_viz.cam import LAYERS, METHODS  # noqa: E402
from cbam_viz.checkpoints import load_pair  # noqa: E402
from cbam_viz.devices import resolve_device  # noqa: E402
from cbam_viz.errors import CbamVizError  # noqa: E402
from cbam_viz.figures import channel_attention_figure  # noqa: E402
from cbam_viz.images import ImageError  # noqa: E402
from cbam_viz.render import COLORMAPS  # noqa: E402
from cbam_viz.weights import BUNDLED, WEIGHTS_ENV  # noqa: E402
from cbam_viz.webapp import (  # noqa: E402
    ATTENTION_CAPTION,
    CACHE_MB,
    MAX_FIGURE_ROWS,
    SEND_A_FILE,
    SLOW_SECONDS,
    TOP1,
    ExportFolder,
    Studio,
    attention_overlay,
    caption_markdown,
    check_controls,
    check_upload,
    delete_old_files,
    export_figure,
    familiarity_banner,
    format_box,
    heatmap_overlay,
    knowledge_markdown,
    localization_markdown,
    localization_preview,
    model_info_markdown,
    parse_box,
    pick_block,
    prune_empty_folders,
    save_once,
    scores_json,
    slow_methods_note,
    top5_label,
)

log = logging.getLogger("cbam_studio")

MAX_FILE_SIZE = "50mb"
CACHE_SECONDS = 1800  # uploads and served pictures are deleted this long after they were written (--cache-seconds)
CSS = """
.caption { text-align: center; min-height: 1.6em; }
.caption p { margin: 0.2em 0 !important; }
#title h1 { margin-bottom: 0.2em; }
@media (max-width: 640px) {
  .gradio-container { padding-left: 6px !important; padding-right: 6px !important; }
}
"""


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into a gr.Error with a human message: our CbamVizError text, or a generic line.

    The message is HTML-escaped (Gradio renders it as HTML and file names come from users); unexpected errors
    are logged with their traceback on the server, never sent to the page.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CbamVizError as err:
            log.info("%s: %s", fn.__name__, err)
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                "Something went wrong on the server while handling this request; the server log has the details.",
                print_exception=False,
            ) from None

    return wrapper


class UnnamedUploadPart:
    """ASGI middleware: a multipart upload part without a file name is a plain form field, which Gradio's upload
    route fails on with a TypeError (HTTP 500); answer 400 with what to send instead."""

    MESSAGE = "send the image as a file: the multipart field 'files' needs a file name (curl: -F files=@photo.jpg)"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/gradio_api/upload"):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except TypeError as err:
            if started or "GradioUploadFile" not in str(err):
                raise
            await PlainTextResponse(self.MESSAGE, status_code=400)(scope, receive, send)


OVERLAYS = "overlays"  # the folder of Gradio's cache that served pictures go to


def served(picture: Image.Image) -> str:
    """A picture for an output gr.Image, written once, atomically, under a name no other response uses.

    Given a PIL image, Gradio saves it as <cache>/<hash of its bytes>/image.webp and rewrites that file in place
    each time, so a client fetching the same overlay for an earlier identical request could read it empty or
    half-written. Given this path in its cache, Gradio serves the file as it is; StudioBlocks' pruning deletes it.
    """
    return str(save_once(picture, Path(get_upload_folder()) / OVERLAYS))


class StudioBlocks(gr.Blocks):
    """gr.Blocks that checks each request's payload before Gradio does, so that a bad one gets our one-line message.

    Even with preprocess=False, Gradio checks an event's payload before the handler runs (the number of inputs,
    then file paths against its upload folder, then each component's data model) and raises plain exceptions,
    which show_error=False turns into an anonymous error. `validate_inputs` is the first of those checks, so here
    missing trailing inputs get the handler's defaults (a raw REST call may send only the image), and the file
    inputs (`file_inputs`, component ids) go through `check_upload` (`uploads`: the allowed folders).

    It also prunes Gradio's cache itself (`cache_schedule`): files this app wrote or received (uploads, served
    pictures) are deleted once older than the age, and the folders left empty with them, so that disk use stays
    bounded under a sustained load. Gradio's own delete_cache cannot do this: its task iterates over the live sets
    of files that requests add to, fails with "Set changed size during iteration" under load, and never runs again.
    """

    file_inputs: frozenset[int] = frozenset()
    uploads: tuple[str, ...] = ()
    cache_seconds: int | None = None  # None: no pruning

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        if len(inputs) < len(block_fn.inputs) and block_fn.fn is not None:
            params = list(inspect.signature(block_fn.fn).parameters.values())[len(inputs) : len(block_fn.inputs)]
            required = [p.name for p in params if p.default is inspect.Parameter.empty]
            if required:
                names = ", ".join(p.name for p in inspect.signature(block_fn.fn).parameters.values())
                raise gr.Error(
                    f"missing input {required[0]}: send the inputs in the order [{names}]; {SEND_A_FILE}",
                    print_exception=False,
                )
            inputs.extend(p.default for p in params)
        for block, value in zip(block_fn.inputs, inputs):
            if block._id in self.file_inputs:
                for payload in value if isinstance(value, list) else [value]:
                    try:
                        check_upload(payload, self.uploads)
                    except CbamVizError as err:
                        raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        super().validate_inputs(block_fn, inputs)

    def launch(self, *args: Any, app_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        app_kwargs = dict(app_kwargs or {})
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(UnnamedUploadPart)]
        app_kwargs.setdefault("lifespan", self._prune_folders)
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)

    @contextlib.asynccontextmanager
    async def _prune_folders(self, _app: Any) -> Any:
        if self.cache_seconds is None:
            yield
            return
        frequency, age = cache_schedule(self.cache_seconds)

        async def prune() -> None:
            while True:
                await asyncio.sleep(frequency)
                await asyncio.to_thread(self.prune_cache, age)

        task = asyncio.create_task(prune())
        try:
            yield
        finally:
            task.cancel()
            self.prune_cache(0.0)  # as Gradio does when its server closes

    def prune_cache(self, age: float) -> None:
        """Delete the files this app wrote or received that are older than `age` seconds (by ctime, as Gradio
        does), except those Gradio keeps for good (the examples), then the folders left empty."""
        kept = set().union(*(getattr(block, "keep_in_cache", set()) for block in list(self.blocks.values())))
        cutoff = time.time() - age
        for files in self.temp_file_sets:
            for path in list(files):  # a snapshot: requests add files meanwhile
                if path in kept:
                    continue
                try:
                    if os.lstat(path).st_ctime <= cutoff:
                        os.remove(path)
                        files.discard(path)
                except FileNotFoundError:
                    files.discard(path)
                except OSError:
                    pass
        # the pictures served in updates belong to the copies of their components that Gradio keeps per visitor,
        # which it does not list: every file of the overlays folder is one of this app's, and old ones go by age
        delete_old_files(Path(get_upload_folder()) / OVERLAYS, age)
        prune_empty_folders(get_upload_folder(), age)


def cache_schedule(cache_seconds: int) -> tuple[int, int]:
    """Cache pruning: (how often to look, in seconds; the age in seconds past which files are deleted)."""
    return max(1, min(60, cache_seconds // 2)), cache_seconds


def build_demo(studio: Studio, exports: ExportFolder, cache_seconds: int = CACHE_SECONDS) -> gr.Blocks:
    """The page and its API (`/compare`, `/paper_figure`) for one loaded pair of models; uploads and served
    pictures are deleted `cache_seconds` after they were written (checked every minute, or more often)."""
    names = {key: loaded.meta.display_name for key, loaded in studio.models.items()}
    cbam_model = studio.models["cbam"].model
    stage_choices = {stage: [f"{stage}.{i}" for i in range(len(getattr(cbam_model, stage)))] for stage in LAYERS}
    method_choices = [(label, key) for key, (_, label) in METHODS.items()]
    target_choices = [("Each model's own top-1", TOP1)] + [(name, name) for name in studio.class_names]

    # Uploads (and the examples, which Gradio copies there) live in Gradio's upload folder; an API call that names
    # any other server file in its payload is refused (see Studio.open_upload).
    uploads = (get_upload_folder(),)

    def open_upload(payload: Any):
        return studio.open_upload(payload, within=uploads)

    def require(payload: Any):
        source = open_upload(payload)
        if source is None:
            raise CbamVizError("no image yet: upload one, paste one, or pick an example")
        return source

    # ------------------------------------------------------------------------------------------ handlers
    @user_errors
    def compare(image: dict | str | None, target: str = TOP1, method: str = "gradcam", layer: str = "layer4",
                opacity: float = 0.5, colormap: str = "jet", box: str = "") -> tuple[str, str, dict]:
        """Grad-CAM (or another CAM method) of ResNet50 and CBAM-ResNet50 for one image.

        Returns the baseline overlay, the CBAM overlay, and JSON with each model's top-5 (label, index, P), the
        target class and its P, localization scores when the object's mask (bundled examples) or a box
        'x0, y0, x1, y1' (original pixels) is known, CBAM's attention/Grad-CAM agreement, and familiarity
        where the checkpoints carry a detector.

        Args:
            image: the image file (over MCP: a base64 data: URL; the server fetches no http(s) URL)
            target: 'top1' for each model's own top-1, or one class name for both models
            method: the CAM method; gradcam at layer4 is exact and the fastest, scorecam the slowest
            layer: the ResNet stage the CAM is taken at (layer4, as in the paper, or layer1 to layer3)
            opacity: heatmap opacity over the image, 0 to 1
            colormap: the heatmap's matplotlib colormap
            box: optional object box 'x0, y0, x1, y1' in the image's pixels, for localization scores
        """
        source = require(image)
        method, layer, opacity, colormap = check_controls(method, layer, opacity, colormap)
        analysis = studio.analyse(source, target, method, layer)
        localization = studio.localize(analysis, parse_box(box))
        return (
            served(heatmap_overlay(analysis, "baseline", opacity, colormap)),
            served(heatmap_overlay(analysis, "cbam", opacity, colormap)),
            scores_json(analysis, localization),
        )

    empty_page = (gr.Markdown(visible=False), None, "", None, None, "", None, None, None, "")

    @user_errors
    def update_page(image, target, method, layer, opacity, colormap, box):
        source = open_upload(image)
        if source is None:
            return empty_page
        method, layer, opacity, colormap = check_controls(method, layer, opacity, colormap)
        analysis = studio.analyse(source, target, method, layer)
        localization = studio.localize(analysis, parse_box(box))
        title = METHODS[method][1].split(" (")[0] + ("" if layer == "layer4" else f" · {layer}")
        warning = familiarity_banner(analysis)
        outputs = [gr.Markdown(warning, visible=bool(warning))]
        for key in ("baseline", "cbam"):
            result = analysis.results[key]
            outputs += [
                gr.Image(value=served(heatmap_overlay(analysis, key, opacity, colormap)), label=f"{names[key]} · {title}"),
                caption_markdown(result),
                top5_label(result),
            ]
        return (
            *outputs,
            scores_json(analysis, localization),
            served(localization_preview(analysis, localization)),
            localization_markdown(analysis, localization),
        )

    @user_errors
    def update_attention(image, block1, block2, block3, block4, opacity, colormap):
        try:
            source = open_upload(image)
        except ImageError:  # update_page, triggered by the same upload, already says what is wrong with it
            source = None
        if source is None:
            return (None,) * 5
        _, _, opacity, colormap = check_controls("gradcam", "layer4", opacity, colormap)
        analysis = studio.base(source)
        attention = analysis.results["cbam"].attention
        if attention is None:
            raise CbamVizError("the CBAM checkpoint recorded no attention maps")
        blocks = [pick_block(attention, stage, b) for stage, b in zip(LAYERS, (block1, block2, block3, block4))]
        images = []
        for block in blocks:
            picture, caption = attention_overlay(analysis, block, opacity, colormap)
            images.append(gr.Image(value=served(picture), label=caption))
        return (*images, channel_attention_figure(attention, blocks))

    @user_errors
    def paper_figure(image=None, extra_images=None, include_current=True, title="", target=TOP1, method="gradcam",
                     layer="layer4", opacity=0.5, colormap="jet"):
        """A Sec. 4.3-style figure (input | ResNet50 CAM | CBAM CAM, P under each) as PNG and PDF."""
        items = ([image] if include_current and image else []) + list(extra_images or [])
        if len(items) > MAX_FIGURE_ROWS:  # before decoding any: each may be up to the upload cap
            raise CbamVizError(f"the figure takes at most {MAX_FIGURE_ROWS} images; {len(items)} were given")
        sources = [require(item) for item in items]
        png, pdf = export_figure(
            studio, sources, exports.new(), target=target, method=method, layer=layer,
            opacity=opacity, colormap=colormap, title=title,
        )
        return str(png), [str(png), str(pdf)]

    @user_errors
    def click_corner(image, corner, evt: gr.SelectData):
        source = require(image)
        analysis = studio.base(source)
        x, y = (round(float(v) / analysis.scale, 1) for v in evt.index[:2])
        if not corner:
            return [x, y], gr.skip(), f"First corner at ({x:g}, {y:g}): now click the opposite corner."
        box = (corner[0], corner[1], x, y)
        return None, format_box(box), f"Box set to {format_box(box)}."

    def reset_box():
        return None, "", ""

    def pick_target(evt: gr.SelectData):
        value = evt.value.get("label") if isinstance(evt.value, dict) else evt.value
        return value if value in studio.class_names else gr.skip()

    # ------------------------------------------------------------------------------------------- layout
    with StudioBlocks(title="CBAM Grad-CAM Studio") as demo:
        gr.Markdown(
            "# CBAM Grad-CAM Studio\n"
            f"Where do **{names['baseline']}** and **{names['cbam']}** look? Grad-CAM of both, side by side, with "
            "the target class's softmax **P** under each (as in Woo et al., ECCV 2018, Sec. 4.3), and what CBAM's "
            "attention does inside the network.",
            elem_id="title",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=280):
                image = gr.Image(
                    type="filepath", sources=["upload", "webcam", "clipboard"], label="Image",
                    elem_id="input-image", height=300,
                )
                if studio.examples:
                    gr.Examples(
                        examples=[[str(path)] for path in studio.examples],
                        inputs=[image],
                        label="Bundled scenes (object masks included: see Localization)",
                        examples_per_page=12,
                    )
                gr.Markdown(knowledge_markdown(studio.models), elem_id="knowledge")
                gr.Dataframe(
                    [[name] for name in studio.class_names], headers=["what the models know"], interactive=False,
                    show_search="search", max_height=220, elem_id="known-classes", show_row_numbers=True,
                )
            with gr.Column(scale=3, min_width=300):
                banner = gr.Markdown(visible=False, elem_id="familiarity-banner")
                with gr.Row(equal_height=False, elem_id="heatmaps"):
                    columns = []
                    for key in ("baseline", "cbam"):
                        with gr.Column(min_width=150):
                            columns.append((
                                gr.Image(
                                    label=f"{names[key]} · Grad-CAM", interactive=False, elem_id=f"heatmap-{key}",
                                    buttons=["download", "fullscreen"],
                                ),
                                gr.Markdown(elem_id=f"caption-{key}", elem_classes=["caption"]),
                                gr.Label(
                                    num_top_classes=5, label=f"{names[key]} top-5", elem_id=f"top5-{key}",
                                    show_heading=False,
                                ),
                            ))
                    (heat_base, cap_base, top5_base), (heat_cbam, cap_cbam, top5_cbam) = columns
                with gr.Accordion("Scores as JSON (what the /compare API returns)", open=False):
                    scores = gr.JSON(label="Scores", elem_id="scores")
        # the controls come after the results, so a phone shows the heatmaps right under the image
        with gr.Row(equal_height=True, elem_id="controls"):
            target = gr.Dropdown(
                target_choices, value=TOP1, label="Target class", filterable=True, elem_id="target", min_width=220,
                info="Each model's own top-1, or one class for both (type to search, or click a top-5 entry)",
            )
            method = gr.Dropdown(
                method_choices, value="gradcam", label="CAM method", elem_id="method", min_width=180,
                info=slow_methods_note(studio.slow_seconds),
            )
            layer = gr.Radio(list(LAYERS), value="layer4", label="Layer", elem_id="layer", min_width=250)
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity", min_width=160)
            colormap = gr.Dropdown(list(COLORMAPS), value="jet", label="Colormap", elem_id="colormap", min_width=120)

        with gr.Tabs():
            with gr.Tab("CBAM attention", elem_id="tab-attention"):
                with gr.Row(equal_height=False):
                    stage_images, stage_blocks = [], []
                    for stage in LAYERS:
                        with gr.Column(min_width=150):
                            stage_images.append(
                                gr.Image(label=f"{stage} spatial attention", interactive=False,
                                         elem_id=f"attention-{stage}", buttons=["fullscreen"])
                            )
                            stage_blocks.append(
                                gr.Dropdown(stage_choices[stage], value=stage_choices[stage][-1],
                                            label=f"{stage} block", elem_id=f"block-{stage}", min_width=120)
                            )
                channel_plot = gr.Plot(label="Channel attention per stage", elem_id="channel-attention")
                gr.Markdown(ATTENTION_CAPTION)
            with gr.Tab("Localization", elem_id="tab-localization"):
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=260):
                        loc_preview = gr.Image(
                            label="Object (outlined) and heatmap peaks: click two corners to set a box",
                            interactive=False, elem_id="localization-preview",
                        )
                    with gr.Column(min_width=260):
                        loc_text = gr.Markdown(elem_id="localization")
                        box = gr.Textbox(
                            "",
                            label="Object box x0, y0, x1, y1 (pixels of the uploaded image; optional)",
                            placeholder="e.g. 40, 30, 180, 150 — press Enter", elem_id="box",
                        )
                        box_hint = gr.Markdown("")
                        clear_box = gr.Button("Clear box", size="sm")
                corner = gr.State(None)
            with gr.Tab("Paper figure", elem_id="tab-figure"):
                gr.Markdown(
                    "A PNG and PDF grid, *input | ResNet50 Grad-CAM | CBAM Grad-CAM* with P under each heatmap, "
                    f"for the current image and/or up to {MAX_FIGURE_ROWS} images added here, using the current "
                    "target, method, layer, opacity and colormap."
                )
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=260):
                        extra_images = gr.File(
                            file_count="multiple", file_types=["image"], label="More images (optional)",
                            elem_id="figure-images",
                        )
                        include_current = gr.Checkbox(True, label="Include the current image")
                        figure_title = gr.Textbox("", label="Title (optional)", elem_id="figure-title")
                        export_button = gr.Button("Export figure", variant="primary", elem_id="export-figure")
                    with gr.Column(min_width=260):
                        figure_preview = gr.Image(label="Figure preview", interactive=False, elem_id="figure-preview")
                        figure_files = gr.File(label="Download PNG / PDF", elem_id="figure-files")
            with gr.Tab("Model info", elem_id="tab-info"), gr.Row(equal_height=False):
                for key in ("baseline", "cbam"):
                    with gr.Column(min_width=260):
                        gr.Markdown(model_info_markdown(studio.models[key]), elem_id=f"info-{key}")

        # ------------------------------------------------------------------------------------------ events
        controls = [image, target, method, layer, opacity, colormap, box]
        page_outputs = [
            banner, heat_base, cap_base, top5_base, heat_cbam, cap_cbam, top5_cbam, scores, loc_preview, loc_text,
        ]
        page = {"preprocess": False, "api_visibility": "private"}
        gr.on(
            [target.change, method.change, layer.change, colormap.change, opacity.release, box.submit, box.blur],
            update_page, controls, page_outputs, trigger_mode="always_last", **page,
        )
        # a new image forgets the previous image's box before it is analysed
        image.change(reset_box, None, [corner, box, box_hint], queue=False, api_visibility="private").then(
            update_page, controls, page_outputs, **page
        )
        gr.on(
            [image.change, *(b.change for b in stage_blocks), colormap.change, opacity.release],
            update_attention, [image, *stage_blocks, opacity, colormap], [*stage_images, channel_plot],
            trigger_mode="always_last", show_progress="minimal", **page,
        )
        loc_preview.select(click_corner, [image, corner], [corner, box, box_hint], **page).then(
            update_page, controls, page_outputs, **page
        )
        clear_box.click(reset_box, None, [corner, box, box_hint], queue=False, api_visibility="private").then(
            update_page, controls, page_outputs, **page
        )
        for label in (top5_base, top5_cbam):
            label.select(pick_target, None, target, api_visibility="private", queue=False)
        export_button.click(
            paper_figure,
            [image, extra_images, include_current, figure_title, target, method, layer, opacity, colormap],
            [figure_preview, figure_files],
            preprocess=False, api_name="paper_figure",
        )
        # The API: one endpoint with the image as its only required input (a hidden trigger; the page uses
        # update_page, which fills more outputs from the same cached analysis).
        api_trigger = gr.Button(visible=False)
        api_trigger.click(compare, controls, [heat_base, heat_cbam, scores], preprocess=False, api_name="compare")
    demo.file_inputs, demo.uploads = frozenset((image._id, extra_images._id)), uploads
    demo.cache_seconds = cache_seconds
    return demo


# ---------------------------------------------------------------------------------------------- running
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                        help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=_port(env.get("GRADIO_SERVER_PORT")),
                        help="port (default 7860, or $GRADIO_SERVER_PORT)")
    parser.add_argument("--baseline", type=Path, default=env.get("CBAM_VIZ_BASELINE") or None,
                        help=f"ResNet50 checkpoint (default: the bundled {BUNDLED['baseline'].file_name}, "
                        f"looked for in ${WEIGHTS_ENV}, then the checkout's weights/)")
    parser.add_argument("--cbam", type=Path, default=env.get("CBAM_VIZ_CBAM") or None,
                        help=f"CBAM-ResNet50 checkpoint (default: the bundled {BUNDLED['cbam'].file_name}, "
                        f"looked for in ${WEIGHTS_ENV}, then the checkout's weights/)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run")
    parser.add_argument("--max-file-size", default=MAX_FILE_SIZE, help="upload size limit (default 50mb)")
    parser.add_argument("--queue-size", type=int, default=32, help="requests that may wait in the queue")
    parser.add_argument("--concurrency", type=int, default=2, help="requests of one kind run at the same time")
    parser.add_argument("--slow-seconds", type=_positive, default=int(SLOW_SECONDS),
                        help=f"refuse a ScoreCAM request estimated to take longer (default {SLOW_SECONDS:.0f})")
    parser.add_argument("--cache-mb", type=_positive, default=int(CACHE_MB),
                        help=f"memory the caches of decoded images and analyses may hold (default {CACHE_MB:.0f})")
    parser.add_argument("--cache-seconds", type=_positive, default=CACHE_SECONDS,
                        help=f"delete uploads and served pictures this long after they were written "
                        f"(default {CACHE_SECONDS})")
    parser.add_argument("--examples", type=Path, default=Path(__file__).resolve().parent / "examples",
                        help="folder of example images (NAME.png with optional NAME.mask.png)")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve the API endpoints (compare, paper_figure) as MCP tools at /gradio_api/mcp/ "
                        "(needs the mcp package: pip install '.[mcp]')")
    return parser.parse_args(argv)


def _port(value: str | None) -> int:
    try:
        return int(value) if value else 7860
    except ValueError:
        raise SystemExit(f"error: GRADIO_SERVER_PORT must be a port number, not {value!r}") from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, at least 1, not {value[:80]!r}")
    return number


def load_studio(args: argparse.Namespace) -> Studio:
    """Load both checkpoints once; CbamVizError (missing or bad file, no CUDA) says what to do."""
    models = load_pair(args.baseline, args.cbam, resolve_device(args.device))
    return Studio(models, examples_dir=args.examples, cache_mb=args.cache_mb, slow_seconds=args.slow_seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mcp and importlib.util.find_spec("mcp") is None:
        print("error: --mcp needs the mcp package: pip install '.[mcp]' (or 'mcp>=1.21,<2')", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    return_freed_memory()  # before any model or worker thread allocates
    try:
        studio = load_studio(args)
    except CbamVizError as err:
        print(f"error: {err}", file=sys.stderr)
        if args.baseline is None or args.cbam is None:
            print(
                "hint: train the bundled weights (python -m cbam_viz train ...) or pass --baseline PATH --cbam PATH",
                file=sys.stderr,
            )
        return 2
    exports = ExportFolder()
    demo = build_demo(studio, exports, args.cache_seconds)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `docker stop`: close the server cleanly
    try:
        demo.launch(
            server_name=args.host, server_port=args.port, share=False, show_error=False,
            max_file_size=args.max_file_size, css=CSS, mcp_server=args.mcp,
        )
    except KeyboardInterrupt:
        pass
    finally:
        exports.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
