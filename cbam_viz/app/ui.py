"""The page: its layout (inputs and results, controls, the four tabs) and which handler each event calls.

`build_demo` returns the Gradio Blocks of one loaded studio; `app.py` launches it. The components go into one
namespace as the layout functions create them, so that `wire` can connect them to the `Handlers` methods.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from cbam_viz.app.controls import TOP1
from cbam_viz.app.figure_export import MAX_FIGURE_ROWS, ExportFolder
from cbam_viz.app.handlers import Handlers
from cbam_viz.app.served import CACHE_SECONDS
from cbam_viz.app.server import StudioBlocks
from cbam_viz.app.studio import Studio
from cbam_viz.app.views import ATTENTION_CAPTION, knowledge_markdown, model_info_markdown, slow_methods_note
from cbam_viz.cam.engine import DEFAULT_LAYER, DEFAULT_METHOD, LAYERS, METHODS
from cbam_viz.cam.render import COLORMAPS
from cbam_viz.io.checkpoints import MODEL_KEYS

CSS = """
.caption { text-align: center; min-height: 1.6em; }
.caption p { margin: 0.2em 0 !important; }
#title h1 { margin-bottom: 0.2em; }
@media (max-width: 640px) {
  .gradio-container { padding-left: 6px !important; padding-right: 6px !important; }
}
"""


def queue(demo: gr.Blocks, studio: Studio, max_size: int) -> gr.Blocks:
    """Gradio's queue for the page: each event runs up to studio.concurrency + 1 requests, the extra one for the
    one slow-method request (ScoreCAM) the studio allows, so that it never takes a fast request's place."""
    return demo.queue(max_size=max_size, default_concurrency_limit=studio.concurrency + 1)


def build_demo(studio: Studio, exports: ExportFolder, cache_seconds: int = CACHE_SECONDS) -> gr.Blocks:
    """The page and its API (`/compare`, `/paper_figure`) for one loaded pair of models; uploads and served
    pictures are deleted `cache_seconds` after they were written (checked every minute, or more often)."""
    handlers = Handlers(studio, exports)
    ui = SimpleNamespace()
    with StudioBlocks(title="CBAM Grad-CAM Studio") as demo:
        inputs_and_results(ui, studio, handlers.names)
        controls(ui, studio)  # after the results, so a phone shows the heatmaps right under the image
        with gr.Tabs():
            attention_tab(ui, studio)
            localization_tab(ui)
            figure_tab(ui)
            with gr.Tab("Model info", elem_id="tab-info"), gr.Row(equal_height=False):
                for key in MODEL_KEYS:
                    with gr.Column(min_width=260):
                        gr.Markdown(model_info_markdown(studio.models[key]), elem_id=f"info-{key}")
        wire(ui, handlers)
    demo.file_inputs, demo.uploads = frozenset((ui.image._id, ui.extra_images._id)), handlers.uploads
    demo.cache_seconds = cache_seconds
    return demo


def inputs_and_results(ui: SimpleNamespace, studio: Studio, names: dict[str, str]) -> None:
    """The title, the image with the examples and what the models know; beside them both heatmaps and scores."""
    gr.Markdown(
        "# CBAM Grad-CAM Studio\n"
        f"Where do **{names['baseline']}** and **{names['cbam']}** look? Grad-CAM of both, side by side, with "
        "the target class's softmax **P** under each (as in Woo et al., ECCV 2018, Sec. 4.3), and what CBAM's "
        "attention does inside the network.",
        elem_id="title",
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            ui.image = gr.Image(
                type="filepath", sources=["upload", "webcam", "clipboard"], label="Image",
                elem_id="input-image", height=300,
            )
            if studio.examples:
                gr.Examples(
                    examples=[[str(path)] for path in studio.examples],
                    inputs=[ui.image],
                    label="Bundled scenes (object masks included: see Localization)",
                    examples_per_page=12,
                )
            gr.Markdown(knowledge_markdown(studio.models), elem_id="knowledge")
            gr.Dataframe(
                [[name] for name in studio.class_names], headers=["what the models know"], interactive=False,
                show_search="search", max_height=220, elem_id="known-classes", show_row_numbers=True,
            )
        with gr.Column(scale=3, min_width=300):
            ui.banner = gr.Markdown(visible=False, elem_id="familiarity-banner")
            ui.heatmaps, ui.captions, ui.top5 = {}, {}, {}
            with gr.Row(equal_height=False, elem_id="heatmaps"):
                for key in MODEL_KEYS:
                    with gr.Column(min_width=150):
                        ui.heatmaps[key] = gr.Image(
                            label=f"{names[key]} · Grad-CAM", interactive=False, elem_id=f"heatmap-{key}",
                            buttons=["download", "fullscreen"],
                        )
                        ui.captions[key] = gr.Markdown(elem_id=f"caption-{key}", elem_classes=["caption"])
                        ui.top5[key] = gr.Label(
                            num_top_classes=5, label=f"{names[key]} top-5", elem_id=f"top5-{key}", show_heading=False,
                        )
            with gr.Accordion("Scores as JSON (what the /compare API returns)", open=False):
                ui.scores = gr.JSON(label="Scores", elem_id="scores")


def controls(ui: SimpleNamespace, studio: Studio) -> None:
    """Target class, CAM method, layer, opacity and colormap, in one row."""
    target_choices = [("Each model's own top-1", TOP1)] + [(name, name) for name in studio.class_names]
    with gr.Row(equal_height=True, elem_id="controls"):
        ui.target = gr.Dropdown(
            target_choices, value=TOP1, label="Target class", filterable=True, elem_id="target", min_width=220,
            info="Each model's own top-1, or one class for both (type to search, or click a top-5 entry)",
        )
        ui.method = gr.Dropdown(
            [(m.choice, key) for key, m in METHODS.items()], value=DEFAULT_METHOD, label="CAM method",
            elem_id="method", min_width=180, info=slow_methods_note(studio.slow_seconds),
        )
        ui.layer = gr.Radio(list(LAYERS), value=DEFAULT_LAYER, label="Layer", elem_id="layer", min_width=250)
        ui.opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity", min_width=160)
        ui.colormap = gr.Dropdown(list(COLORMAPS), value="jet", label="Colormap", elem_id="colormap", min_width=120)


def attention_tab(ui: SimpleNamespace, studio: Studio) -> None:
    """Each stage's spatial attention of a chosen CBAM block, and the channel attention plot."""
    cbam_model = studio.models["cbam"].model
    ui.stage_images, ui.stage_blocks = [], []
    with gr.Tab("CBAM attention", elem_id="tab-attention"):
        with gr.Row(equal_height=False):
            for stage in LAYERS:
                choices = [f"{stage}.{i}" for i in range(len(getattr(cbam_model, stage)))]
                with gr.Column(min_width=150):
                    ui.stage_images.append(
                        gr.Image(label=f"{stage} spatial attention", interactive=False,
                                 elem_id=f"attention-{stage}", buttons=["fullscreen"])
                    )
                    ui.stage_blocks.append(
                        gr.Dropdown(choices, value=choices[-1], label=f"{stage} block", elem_id=f"block-{stage}",
                                    min_width=120)
                    )
        ui.channel_plot = gr.Plot(label="Channel attention per stage", elem_id="channel-attention")
        gr.Markdown(ATTENTION_CAPTION)


def localization_tab(ui: SimpleNamespace) -> None:
    """The object's outline with both heatmap peaks, the scores, and the box (typed or clicked)."""
    with gr.Tab("Localization", elem_id="tab-localization"):
        with gr.Row(equal_height=False):
            with gr.Column(min_width=260):
                ui.loc_preview = gr.Image(
                    label="Object (outlined) and heatmap peaks: click two corners to set a box",
                    interactive=False, elem_id="localization-preview",
                )
            with gr.Column(min_width=260):
                ui.loc_text = gr.Markdown(elem_id="localization")
                ui.box = gr.Textbox(
                    "",
                    label="Object box x0, y0, x1, y1 (pixels of the uploaded image; optional)",
                    placeholder="e.g. 40, 30, 180, 150 — press Enter", elem_id="box",
                )
                ui.box_hint = gr.Markdown("")
                ui.clear_box = gr.Button("Clear box", size="sm")
        ui.corner = gr.State(None)


def figure_tab(ui: SimpleNamespace) -> None:
    """The paper figure's inputs (more images, title) and its preview and files."""
    with gr.Tab("Paper figure", elem_id="tab-figure"):
        gr.Markdown(
            "A PNG and PDF grid, *input | ResNet50 Grad-CAM | CBAM Grad-CAM* with P under each heatmap, "
            f"for the current image and/or up to {MAX_FIGURE_ROWS} images added here, using the current "
            "target, method, layer, opacity and colormap."
        )
        with gr.Row(equal_height=False):
            with gr.Column(min_width=260):
                ui.extra_images = gr.File(
                    file_count="multiple", file_types=["image"], label="More images (optional)",
                    elem_id="figure-images",
                )
                ui.include_current = gr.Checkbox(True, label="Include the current image")
                ui.figure_title = gr.Textbox("", label="Title (optional)", elem_id="figure-title")
                ui.export_button = gr.Button("Export figure", variant="primary", elem_id="export-figure")
            with gr.Column(min_width=260):
                ui.figure_preview = gr.Image(label="Figure preview", interactive=False, elem_id="figure-preview")
                ui.figure_files = gr.File(label="Download PNG / PDF", elem_id="figure-files")


def wire(ui: SimpleNamespace, handlers: Handlers) -> None:
    """Connect the events to the handlers: the page's own events (private) and the two API endpoints."""
    controls = [ui.image, ui.target, ui.method, ui.layer, ui.opacity, ui.colormap, ui.box]
    page_outputs = [ui.banner]
    for key in MODEL_KEYS:
        page_outputs += [ui.heatmaps[key], ui.captions[key], ui.top5[key]]
    page_outputs += [ui.scores, ui.loc_preview, ui.loc_text]
    box_outputs = [ui.corner, ui.box, ui.box_hint]
    page = {"preprocess": False, "api_visibility": "private"}
    gr.on(
        [ui.target.change, ui.method.change, ui.layer.change, ui.colormap.change, ui.opacity.release,
         ui.box.submit, ui.box.blur],
        handlers.update_page, controls, page_outputs, trigger_mode="always_last", **page,
    )
    # a new image forgets the previous image's box before it is analysed
    ui.image.change(handlers.reset_box, None, box_outputs, queue=False, api_visibility="private").then(
        handlers.update_page, controls, page_outputs, **page
    )
    gr.on(
        [ui.image.change, *(b.change for b in ui.stage_blocks), ui.colormap.change, ui.opacity.release],
        handlers.update_attention, [ui.image, *ui.stage_blocks, ui.opacity, ui.colormap],
        [*ui.stage_images, ui.channel_plot], trigger_mode="always_last", show_progress="minimal", **page,
    )
    ui.loc_preview.select(handlers.click_corner, [ui.image, ui.corner], box_outputs, **page).then(
        handlers.update_page, controls, page_outputs, **page
    )
    ui.clear_box.click(handlers.reset_box, None, box_outputs, queue=False, api_visibility="private").then(
        handlers.update_page, controls, page_outputs, **page
    )
    for label in ui.top5.values():
        label.select(handlers.pick_target, None, ui.target, api_visibility="private", queue=False)
    figure_inputs = [ui.image, ui.extra_images, ui.include_current, ui.figure_title, ui.target, ui.method,
                     ui.layer, ui.opacity, ui.colormap]
    ui.export_button.click(
        handlers.paper_figure, figure_inputs, [ui.figure_preview, ui.figure_files], preprocess=False,
        api_name="paper_figure",
    )
    # The API: one endpoint with the image as its only required input (a hidden trigger; the page uses
    # update_page, which fills more outputs from the same cached analysis).
    api_trigger = gr.Button(visible=False)
    api_trigger.click(
        handlers.compare, controls, [ui.heatmaps["baseline"], ui.heatmaps["cbam"], ui.scores], preprocess=False,
        api_name="compare",
    )
