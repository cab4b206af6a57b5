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
from cbam_viz.nn.knockout import KNOCKOUTS

CSS = """
#title h1 { margin-bottom: 0.2em; }
#workspace { display: grid !important; grid-template-columns: minmax(0, 2fr) minmax(0, 3fr);
  grid-template-areas: "input results" "controls results"; align-items: start; }
#input-column { grid-area: input; }
#results-column { grid-area: results; }
#controls-column { grid-area: controls; }
#run-status { min-height: 2.4em; }
#results-empty { padding: 2em 1em; text-align: center; opacity: 0.75; }
#examples .grid-wrap { height: auto !important; min-height: 0 !important; max-height: none !important; }
#examples .grid-container { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important; }
.caption { text-align: center; min-height: 1.6em; }
.caption p { margin: 0.2em 0 !important; }
#heatmaps .confidence-set dl.label { display: flex; min-width: 0; }
#heatmaps .confidence-set dt.text { min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#heatmaps .confidence-set dd.confidence { flex: none; white-space: nowrap; }
#effects-table th, #effects-table td { padding: 0.2em 0.6em !important; white-space: nowrap; }
#effects-table table { font-size: 0.9em; }
.gauge { font-size: 0.85em; margin: 0.1em 0.4em 0.4em; }
.gauge-track { position: relative; height: 8px; border-radius: 4px; background: #2e9e4f; }
.gauge-band { position: absolute; top: 0; bottom: 0; background: #e8a317; }
.gauge-threshold { position: absolute; top: 0; right: 0; bottom: 0; background: #c8302b; border-left: 2px solid #222;
  border-radius: 0 4px 4px 0; }
.gauge-marker { position: absolute; top: -4px; width: 4px; height: 16px; margin-left: -2px; background: #111;
  border: 1px solid #fff; border-radius: 2px; }
.gauge-text { text-align: center; margin-top: 0.3em; }
.gauge-familiar .gauge-text b { color: #2e7d32; }
.gauge-borderline .gauge-text b { color: #b26a00; }
.gauge-unfamiliar .gauge-text b { color: #c62828; }
.attention-note { color: #b26a00; font-size: 0.9em; min-height: 1.2em; }
.colorbar { height: 14px; border-radius: 3px; margin: 0 0.5em; }
.colorbar-ends { display: flex; justify-content: space-between; font-size: 0.85em; margin: 0.2em 0.5em 0; }
@media (max-width: 768px) {
  #workspace { grid-template-columns: minmax(0, 1fr); grid-template-areas: "input" "results" "controls"; }
  #heatmaps { gap: 6px; }
  #heatmaps .confidence-set { font-size: 0.8em; }
  .tab-wrapper button { padding-left: 6px !important; padding-right: 6px !important; font-size: 0.9em !important; }
}
"""
# Gradio scopes CSS to its content box; the page's outer margin sits above it, so it is set in the page's head
HEAD = (
    "<style>@media (max-width: 768px) { .main.app { padding-left: 6px !important; padding-right: 6px !important; } }"
    "</style>"
)
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
EMPTY_RESULTS = (
    "**Upload a photo, paste one, or pick an example below.**  \n"
    "Each model's heatmap appears here, with the class it explains and its softmax P."
)


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
        gr.Markdown(
            "# CBAM Grad-CAM Studio\n"
            f"Where do **{handlers.names['baseline']}** and **{handlers.names['cbam']}** look? Grad-CAM of both, "
            "side by side, with the target class's softmax **P** under each (as in Woo et al., ECCV 2018, Sec. 4.3), "
            "and what CBAM's attention does inside the network.",
            elem_id="title",
        )
        workspace(ui, studio, handlers.names)
        examples_and_knowledge(ui, studio)
        with gr.Tabs():
            attention_tab(ui, studio)
            localization_tab(ui)
            figure_tab(ui)
            with gr.Tab("Models", elem_id="tab-info"), gr.Row(equal_height=False):
                for key in MODEL_KEYS:
                    with gr.Column(min_width=260):
                        gr.Markdown(model_info_markdown(studio.models[key]), elem_id=f"info-{key}")
        wire(ui, handlers)
    demo.file_inputs, demo.uploads = frozenset((ui.image._id, ui.extra_images._id)), handlers.uploads
    demo.file_lists = frozenset((ui.extra_images._id,))
    demo.cache_seconds = cache_seconds
    return demo


def workspace(ui: SimpleNamespace, studio: Studio, names: dict[str, str]) -> None:
    """The image, both models' answers and the controls: side by side on a wide screen (controls under the image),
    stacked on a phone with the answers right under the image."""
    with gr.Row(equal_height=False, elem_id="workspace"):
        with gr.Column(min_width=260, elem_id="input-column"):
            ui.image = gr.Image(
                type="filepath", sources=["upload", "webcam", "clipboard"], label="Image",
                elem_id="input-image", height=300,
            )
        with gr.Column(min_width=300, elem_id="results-column"):
            results(ui, names)
        with gr.Column(min_width=260, elem_id="controls-column"):
            controls(ui, studio)


def results(ui: SimpleNamespace, names: dict[str, str]) -> None:
    """The familiarity banner, then per model: heatmap, caption (class, P), familiarity gauge, top-5."""
    ui.empty = gr.Markdown(EMPTY_RESULTS, elem_id="results-empty")
    ui.banner = gr.Markdown(visible=False, elem_id="familiarity-banner")
    ui.heatmaps, ui.captions, ui.gauges, ui.top5 = {}, {}, {}, {}
    with gr.Row(equal_height=False, elem_id="heatmaps"):
        for key in MODEL_KEYS:
            with gr.Column(min_width=150):
                ui.heatmaps[key] = gr.Image(
                    label=f"{names[key]} heatmap", show_label=False, interactive=False, visible=False,
                    elem_id=f"heatmap-{key}", buttons=["download", "fullscreen"],
                )
                ui.captions[key] = gr.Markdown(elem_id=f"caption-{key}", elem_classes=["caption"])
                ui.gauges[key] = gr.HTML(elem_id=f"familiarity-{key}")
                ui.top5[key] = gr.Label(
                    num_top_classes=5, label=f"{names[key]} top-5", show_label=False, visible=False,
                    elem_id=f"top5-{key}", show_heading=False,
                )
    ui.status = gr.HTML(elem_id="run-status")  # where a running request shows its progress
    with gr.Accordion("Scores as JSON (what the /compare API returns)", open=False):
        ui.scores = gr.JSON(label="Scores", elem_id="scores")
    ui.shown = gr.State(None)  # the image and controls the shown result was made with


def controls(ui: SimpleNamespace, studio: Studio) -> None:
    """Target class, CAM method, layer, opacity and colormap."""
    target_choices = [("Each model's own top-1", TOP1)] + [(name, name) for name in studio.class_names]
    ui.target = gr.Dropdown(
        target_choices, value=TOP1, label="Target class", filterable=True, elem_id="target",
        info="Each model's own top-1, or one class for both (type to search, or click a top-5 entry)",
    )
    with gr.Row(equal_height=True):
        ui.method = gr.Dropdown(
            [(m.choice, key) for key, m in METHODS.items()], value=DEFAULT_METHOD, label="CAM method",
            elem_id="method", min_width=180, info=slow_methods_note(studio.slow_seconds),
        )
        ui.layer = gr.Radio(list(LAYERS), value=DEFAULT_LAYER, label="Layer", elem_id="layer", min_width=200)
    ui.stop = gr.Button("Stop a running ScoreCAM", size="sm", elem_id="stop-slow")
    with gr.Row(equal_height=True):
        ui.opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity", min_width=160)
        ui.colormap = gr.Dropdown(list(COLORMAPS), value="jet", label="Colormap", elem_id="colormap", min_width=120)


def examples_and_knowledge(ui: SimpleNamespace, studio: Studio) -> None:
    """The bundled examples, each captioned with its class, and what the models were trained to recognise."""
    with gr.Row(equal_height=False):
        if studio.examples:
            with gr.Column(scale=3, min_width=280):
                ui.examples = gr.Gallery(
                    [(str(path), label) for path, label in zip(studio.examples, example_labels(studio))],
                    label="Examples: test scenes with object masks (click one)", columns=5, height="auto",
                    allow_preview=False, object_fit="cover", elem_id="examples", buttons=[],
                )
        with gr.Column(scale=2, min_width=280):
            gr.Markdown(knowledge_markdown(studio.models), elem_id="knowledge")
            with gr.Accordion(f"The {len(studio.class_names)} classes", open=False):
                gr.Dataframe(
                    [[name] for name in studio.class_names], headers=["what the models know"], interactive=False,
                    show_search="search", max_height=220, elem_id="known-classes", show_row_numbers=True,
                )


def example_labels(studio: Studio) -> list[str]:
    """Each example's caption: the class its file name names (camel.jpg: 'camel'), else the file name."""
    classes = {name.lower(): name for name in studio.class_names}
    return [classes.get(path.stem.replace("_", " ").lower(), path.name) for path in studio.examples]


def attention_tab(ui: SimpleNamespace, studio: Studio) -> None:
    """Each stage's spatial attention of a chosen CBAM block on one colour scale, and the channel attention plot."""
    cbam_model = studio.models["cbam"].model
    ui.stage_images, ui.stage_notes, ui.stage_blocks = [], [], []
    with gr.Tab("Attention", elem_id="tab-attention"):
        ui.stretch = gr.Checkbox(
            False, label="Stretch each map to its own range", elem_id="stretch",
            info="Off: one absolute 0–1 scale for every map, so a nearly constant map looks nearly uniform",
        )
        with gr.Row(equal_height=False):
            for stage in LAYERS:
                choices = [f"{stage}.{i}" for i in range(len(getattr(cbam_model, stage)))]
                with gr.Column(min_width=150):
                    ui.stage_blocks.append(
                        gr.Dropdown(choices, value=choices[-1], label=f"{stage} block", elem_id=f"block-{stage}",
                                    min_width=120)
                    )
                    ui.stage_images.append(
                        gr.Image(label=f"{stage} spatial attention", interactive=False, visible=False,
                                 elem_id=f"attention-{stage}", buttons=["fullscreen"])
                    )
                    ui.stage_notes.append(
                        gr.Markdown(elem_id=f"attention-note-{stage}", elem_classes=["attention-note"])
                    )
        ui.colorbar = gr.HTML(elem_id="attention-colorbar")
        ui.channel_plot = gr.Plot(label="Channel attention per stage", elem_id="channel-attention", visible=False)
        gr.Markdown(ATTENTION_CAPTION)
        effects_panel(ui, studio)


def effects_panel(ui: SimpleNamespace, studio: Studio) -> None:
    """"What does attention do here?": the knock-out table and one knocked-out heatmap, computed on demand."""
    config = studio.models["cbam"].meta.cbam
    gates = list(KNOCKOUTS) if config is None or config.has_spatial else ["channel"]
    with gr.Accordion("What does attention do here?", open=False, elem_id="effects"):
        with gr.Row(equal_height=False):
            ui.effects_stage = gr.Radio(list(LAYERS), value=DEFAULT_LAYER, label="Stage whose gates are knocked out",
                                        elem_id="effects-stage", min_width=200)
            ui.effects_gate = gr.Radio(gates, value=gates[-1], label="Gate made constant", elem_id="effects-gate",
                                       min_width=200)
        ui.effects_button = gr.Button("Knock out CBAM's gates on this image", elem_id="effects-run")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                ui.effects_table = gr.Markdown(elem_id="effects-table")
            with gr.Column(scale=2, min_width=220):
                ui.effects_image = gr.Image(interactive=False, visible=False, elem_id="effects-heatmap",
                                            buttons=["fullscreen", "download"])


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
    with gr.Tab("Figure", elem_id="tab-figure"):
        gr.Markdown(
            "A PNG and PDF grid for a paper, *input | ResNet50 heatmap | CBAM heatmap* with the class and P under "
            f"each heatmap, for the current image and/or up to {MAX_FIGURE_ROWS} images added here, using the "
            "current target, method, layer and colormap and the opacity set here. Rows the models find unfamiliar "
            "are marked."
        )
        with gr.Row(equal_height=False):
            with gr.Column(min_width=260):
                ui.extra_images = gr.File(
                    file_count="multiple", file_types=["image"], label="More images (optional)",
                    elem_id="figure-images",
                )
                ui.include_current = gr.Checkbox(True, label="Include the current image")
                ui.figure_title = gr.Textbox("", label="Title (optional)", elem_id="figure-title")
                ui.figure_opacity = gr.Slider(
                    0.1, 1, value=0.5, step=0.05, label="Heatmap opacity in the figure", elem_id="figure-opacity"
                )
                ui.export_button = gr.Button("Export figure", variant="primary", elem_id="export-figure")
            with gr.Column(min_width=260):
                ui.figure_preview = gr.Image(label="Figure preview", interactive=False, elem_id="figure-preview")
                ui.figure_files = gr.File(label="Download PNG / PDF", elem_id="figure-files")


def wire(ui: SimpleNamespace, handlers: Handlers) -> None:
    """Connect the events to the handlers: the page's own events (private) and the two API endpoints."""
    api_inputs = [ui.image, ui.target, ui.method, ui.layer, ui.opacity, ui.colormap, ui.box]
    page_inputs = [*api_inputs, ui.shown]
    page_outputs = [ui.empty, ui.banner]
    for key in MODEL_KEYS:
        page_outputs += [ui.heatmaps[key], ui.captions[key], ui.gauges[key], ui.top5[key]]
    page_outputs += [ui.scores, ui.loc_preview, ui.loc_text, ui.shown, ui.target, ui.method, ui.layer]
    box_outputs = [ui.corner, ui.box, ui.box_hint]
    page = {"preprocess": False, "api_visibility": "private"}
    # progress shows on the status line, so the shown result and the controls stay visible while a request runs
    update = {**page, "show_progress_on": [ui.status]}
    gr.on(
        [ui.target.change, ui.method.change, ui.layer.change, ui.colormap.change, ui.opacity.release,
         ui.box.submit, ui.box.blur],
        handlers.update_page, page_inputs, page_outputs, trigger_mode="always_last", **update,
    )
    # a new image forgets the previous image's box before it is analysed
    ui.image.change(handlers.reset_box, None, box_outputs, queue=False, api_visibility="private").then(
        handlers.update_page, page_inputs, page_outputs, **update
    )
    gr.on(
        [ui.image.change, *(b.change for b in ui.stage_blocks), ui.colormap.change, ui.opacity.release,
         ui.stretch.change],
        handlers.update_attention, [ui.image, *ui.stage_blocks, ui.opacity, ui.colormap, ui.stretch],
        [*ui.stage_images, *ui.stage_notes, ui.colorbar, ui.channel_plot], trigger_mode="always_last",
        show_progress="minimal", **page,
    )
    effects_inputs = [ui.image, ui.target, ui.effects_stage, ui.effects_gate, ui.opacity, ui.colormap, ui.box]
    gr.on(
        [ui.effects_button.click, ui.effects_stage.change, ui.effects_gate.change],
        handlers.attention_effects, effects_inputs, [ui.effects_table, ui.effects_image], trigger_mode="always_last",
        show_progress="minimal", **page,
    )
    gr.on([ui.image.change, ui.target.change], handlers.clear_effects, None, [ui.effects_table, ui.effects_image],
          queue=False, api_visibility="private")
    ui.stop.click(handlers.stop_slow, None, None, queue=False, api_visibility="private")
    ui.loc_preview.select(handlers.click_corner, [ui.image, ui.corner], box_outputs, **page).then(
        handlers.update_page, page_inputs, page_outputs, **update
    )
    ui.clear_box.click(handlers.reset_box, None, box_outputs, queue=False, api_visibility="private").then(
        handlers.update_page, page_inputs, page_outputs, **update
    )
    if hasattr(ui, "examples"):
        ui.examples.select(handlers.pick_example, None, ui.image, api_visibility="private", queue=False)
    for label in ui.top5.values():
        label.select(handlers.pick_target, None, ui.target, api_visibility="private", queue=False)
    figure_inputs = [ui.image, ui.extra_images, ui.include_current, ui.figure_title, ui.target, ui.method,
                     ui.layer, ui.figure_opacity, ui.colormap]
    ui.export_button.click(
        handlers.paper_figure, figure_inputs, [ui.figure_preview, ui.figure_files], preprocess=False,
        api_name="paper_figure",
    )
    # The API: one endpoint with the image as its only required input (a hidden trigger; the page uses
    # update_page, which fills more outputs from the same cached analysis).
    api_trigger = gr.Button(visible=False)
    effects_flag = gr.Checkbox(False, visible=False, label="attention_effects")
    api_trigger.click(
        handlers.compare, [*api_inputs, effects_flag], [ui.heatmaps["baseline"], ui.heatmaps["cbam"], ui.scores],
        preprocess=False, api_name="compare",
    )
