"""The page's and the API's event handlers, as methods of one object that holds the studio and the export folder.

Every handler takes the raw payloads Gradio sends (events run with preprocess=False), checks them, and answers
with a one-line message on any failure (`user_errors`).
"""

from __future__ import annotations

import html
import threading
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from cbam_viz.app.controls import TOP1, check_controls, check_flag, format_box, parse_box
from cbam_viz.app.figure_export import MAX_FIGURE_ROWS, ExportFolder, export_figure
from cbam_viz.app.served import served
from cbam_viz.app.server import log, user_errors
from cbam_viz.app.studio import Studio
from cbam_viz.app.uploads import SourceImage, check_upload
from cbam_viz.app.views import (
    attention_overlay,
    caption_markdown,
    colorbar_html,
    download_name,
    effects_json,
    effects_markdown,
    familiarity_banner,
    familiarity_gauge,
    heatmap_overlay,
    knockout_overlay,
    localization_markdown,
    localization_preview,
    pick_block,
    scores_json,
    top5_label,
)
from cbam_viz.cam.engine import DEFAULT_LAYER, DEFAULT_METHOD, LAYERS, METHODS, SLOW_METHODS
from cbam_viz.cam.figures import channel_attention_figure
from cbam_viz.cam.scorecam import RunControl
from cbam_viz.errors import CbamVizError
from cbam_viz.io.checkpoints import MODEL_KEYS
from cbam_viz.io.images import ImageError


DEFAULT_SHOWN = {"target": TOP1, "method": DEFAULT_METHOD, "layer": DEFAULT_LAYER}  # what a refusal falls back to


def warn(err: CbamVizError) -> None:
    """Say on the page, as a warning toast, why a request was refused (HTML-escaped: file names come from users)."""
    log.info("refused: %s", err)
    gr.Warning(html.escape(str(err), quote=False))


def selection(evt: gr.EventData | None) -> tuple[Any, Any]:
    """The (index, value) of a select event, (None, None) where the request sent no event data. The handlers take
    gr.EventData, not gr.SelectData: Gradio builds a SelectData before the handler runs and fails on missing data."""
    data = getattr(evt, "_data", None)
    return (data.get("index"), data.get("value")) if isinstance(data, dict) else (None, None)


class Handlers:
    """What the page's events and the API endpoints call, for one studio; figures go to `exports`.

    Uploads (and the examples, which Gradio copies there) live in Gradio's upload folder (`uploads`); an API call
    that names any other server file in its payload is refused (see Studio.open_upload).
    """

    def __init__(self, studio: Studio, exports: ExportFolder) -> None:
        self.studio, self.exports = studio, exports
        self.stops: dict[str, threading.Event] = {}  # visitor (Gradio's hash) -> the Stop of their slow request
        self.uploads = (get_upload_folder(),)
        self.names = {key: loaded.meta.display_name for key, loaded in studio.models.items()}

    def open_upload(self, payload: Any) -> SourceImage | None:
        """The uploaded image a payload names (None when empty); only files in Gradio's upload folder are accepted."""
        return self.studio.open_upload(payload, within=self.uploads)

    def require(self, payload: Any) -> SourceImage:
        """As `open_upload`, but a missing image is a CbamVizError saying how to give one."""
        source = self.open_upload(payload)
        if source is None:
            raise CbamVizError("no image yet: upload one, paste one, or pick an example")
        return source

    @user_errors
    def compare(self, image: dict | str | None, target: str = TOP1, method: str = DEFAULT_METHOD,
                layer: str = DEFAULT_LAYER, opacity: float = 0.5, colormap: str = "jet",
                box: str = "", attention_effects: bool = False) -> tuple[str, str, dict]:
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
            attention_effects: also knock out each stage's CBAM gates (spatial, channel, both) and report the
                target's P, the top-1 and the layer4 Grad-CAM's change for each (12 partial forward passes)
        """
        source = self.require(image)
        method, layer, opacity, colormap = check_controls(method, layer, opacity, colormap)
        with_effects, box = check_flag("attention_effects", attention_effects), parse_box(box)
        analysis = self.studio.analyse(source, target, method, layer)
        localization = self.studio.localize(analysis, box)
        scores = scores_json(analysis, localization)
        if with_effects:
            effects = self.studio.attention_effects(source, target, box)
            scores["attention_effects"] = effects_json(effects, self.studio.models["cbam"].meta)
        return (
            served(heatmap_overlay(analysis, "baseline", opacity, colormap), download_name(analysis, "baseline")),
            served(heatmap_overlay(analysis, "cbam", opacity, colormap), download_name(analysis, "cbam")),
            scores,
        )

    @user_errors
    def update_page(self, image, target, method, layer, opacity, colormap, box, shown=None,
                    request: gr.Request = None, progress=gr.Progress()) -> tuple:  # fmt: skip
        """Everything the page shows of one image: banner, both heatmaps with captions, familiarity and top-5,
        scores and localization. A refused, stopped or cancelled request (a slow method over its limit, a bad box)
        keeps what the page showed and puts the controls back to what produced it; a bad image clears the results.
        A slow method reports its progress and stops when the same visitor presses Stop (`stop_slow`)."""
        visitor = getattr(request, "session_hash", None) or ""
        label = METHODS[method].label if method in METHODS else ""
        control = RunControl(
            progress=lambda done, total: progress((done, total), desc=f"{label}: channel passes", unit="passes"),
            cancel=self.stops.setdefault(visitor, threading.Event()) if method in SLOW_METHODS else None,
        )
        if control.cancel is not None:  # the first batch of channel passes takes a while to report
            progress(0.0, desc=f"{label}: first channel passes")
        try:
            return self._update_page(image, target, method, layer, opacity, colormap, box, shown, control)
        finally:
            if control.cancel is not None:
                self.stops.pop(visitor, None)

    def stop_slow(self, request: gr.Request = None) -> None:
        """The Stop button: end this visitor's running slow-method request (it keeps the previous result)."""
        stop = self.stops.get(getattr(request, "session_hash", None) or "")
        if stop is None:
            gr.Info("No ScoreCAM run of yours is running.")
        else:
            stop.set()

    def _update_page(self, image, target, method, layer, opacity, colormap, box, shown, control) -> tuple:
        try:
            source = self.open_upload(image)
        except CbamVizError as err:
            warn(err)
            return self.empty_page()
        if source is None:
            return self.empty_page()
        try:
            return self.render_page(source, target, method, layer, opacity, colormap, parse_box(box), control=control)
        except CbamVizError as err:
            warn(err)
        kept = shown if isinstance(shown, dict) and shown.get("image") == source.key else DEFAULT_SHOWN
        return self.render_page(source, kept["target"], kept["method"], kept["layer"], opacity, colormap, None,
                                revert=True)  # fmt: skip

    def empty_page(self) -> tuple:
        """update_page's outputs without an image: the empty-state note, every result hidden or empty."""
        per_model = (gr.Image(None, visible=False), "", "", gr.Label(None, visible=False)) * len(MODEL_KEYS)
        return (gr.Markdown(visible=True), gr.Markdown(visible=False), *per_model, None, None, "", None,
                *(gr.skip(),) * 3)  # fmt: skip

    def render_page(self, source: SourceImage, target, method, layer, opacity, colormap, box,
                    revert: bool = False, control: RunControl | None = None) -> tuple:  # fmt: skip
        """update_page's outputs for one image and set of controls; `revert` also sets the target, method and
        layer controls to these (after a refused request)."""
        method, layer, opacity, colormap = check_controls(method, layer, opacity, colormap)
        analysis = self.studio.analyse(source, target, method, layer, control)
        localization = self.studio.localize(analysis, box)
        title = METHODS[method].label + ("" if layer == DEFAULT_LAYER else f" · {layer}")
        warning = familiarity_banner(analysis)
        outputs = [gr.Markdown(visible=False), gr.Markdown(warning, visible=bool(warning))]
        for key in MODEL_KEYS:
            result = analysis.results[key]
            picture = served(heatmap_overlay(analysis, key, opacity, colormap), download_name(analysis, key))
            outputs += [
                gr.Image(picture, visible=True),
                caption_markdown(result, title),
                familiarity_gauge(result, self.studio.models[key].familiarity),
                gr.Label(top5_label(result), visible=True),
            ]
        shown = {"image": source.key, "target": analysis.target, "method": method, "layer": layer}
        controls = (analysis.target, method, layer) if revert else (gr.skip(),) * 3
        return (
            *outputs,
            scores_json(analysis, localization),
            served(localization_preview(analysis, localization)),
            localization_markdown(analysis, localization),
            shown,
            *controls,
        )

    @user_errors
    def update_attention(self, image, block1, block2, block3, block4, opacity, colormap, stretch=False) -> tuple:
        """The CBAM attention tab: the chosen block's spatial map in each stage (absolute 0-1 scale, or stretched),
        a note under each nearly constant one, the colour bar, and the channel weights plot."""
        try:
            source = self.open_upload(image)
        except ImageError:  # update_page, triggered by the same upload, already says what is wrong with it
            source = None
        if source is None:
            return (gr.Image(None, visible=False),) * 4 + ("",) * 4 + ("", gr.Plot(None, visible=False))
        _, _, opacity, colormap = check_controls(DEFAULT_METHOD, DEFAULT_LAYER, opacity, colormap)
        analysis = self.studio.base(source)
        attention = analysis.results["cbam"].attention
        if attention is None:
            raise CbamVizError("the CBAM checkpoint recorded no attention maps")
        blocks = [pick_block(attention, stage, b) for stage, b in zip(LAYERS, (block1, block2, block3, block4))]
        images, notes = [], []
        for block in blocks:
            picture, label, note = attention_overlay(analysis, block, opacity, colormap, bool(stretch))
            images.append(gr.Image(served(picture) if picture is not None else None, label=label, visible=True))
            notes.append(note)
        plot = gr.Plot(channel_attention_figure(attention, blocks), visible=True)
        return (*images, *notes, colorbar_html(colormap, bool(stretch)), plot)

    @user_errors
    def attention_effects(self, image, target=TOP1, stage="layer4", gate="both", opacity=0.5, colormap="jet",
                          box="") -> tuple:  # fmt: skip
        """The attention tab's "What does attention do here?" panel, computed on demand: CBAM-ResNet50's knock-out
        table for the target, and its layer4 Grad-CAM with `stage`'s `gate` knocked out."""
        source = self.require(image)
        _, _, opacity, colormap = check_controls(DEFAULT_METHOD, DEFAULT_LAYER, opacity, colormap)
        effects = self.studio.attention_effects(source, target, parse_box(box))
        picture, caption = knockout_overlay(self.studio.base(source).image, effects, str(stage), str(gate), opacity,
                                            colormap)
        table = effects_markdown(effects, self.studio.models["cbam"].meta)
        return table, gr.Image(served(picture), label=caption, visible=True)

    @staticmethod
    def clear_effects() -> tuple:
        """A new image empties the knock-out panel until the visitor asks again (it costs twelve partial passes)."""
        return "", gr.Image(None, visible=False)

    @user_errors
    def paper_figure(self, image=None, extra_images=None, include_current=True, title="", target=TOP1,
                     method=DEFAULT_METHOD, layer=DEFAULT_LAYER, opacity=0.5, colormap="jet"):
        """A Sec. 4.3-style figure (input | ResNet50 CAM | CBAM CAM, P under each) as PNG and PDF."""
        items = ([image] if include_current and image else []) + list(extra_images or [])
        if len(items) > MAX_FIGURE_ROWS:  # before decoding any: each may be up to the upload cap
            raise CbamVizError(f"the figure takes at most {MAX_FIGURE_ROWS} images; {len(items)} were given")
        sources = [self.require(item) for item in items]
        png, pdf = export_figure(
            self.studio, sources, self.exports.new(), target=target, method=method, layer=layer,
            opacity=opacity, colormap=colormap, title=title,
        )
        return str(png), [str(png), str(pdf)]

    @user_errors
    def click_corner(self, image, corner, evt: gr.EventData = None):
        """A click on the localization preview: the box's first corner, or with the second one the box itself."""
        index, _ = selection(evt)
        if not isinstance(index, (list, tuple)) or len(index) < 2:
            raise CbamVizError("a corner comes from a click on the localization preview: send the click's position")
        analysis = self.studio.base(self.require(image))
        x, y = (round(float(v) / analysis.scale, 1) for v in index[:2])
        if not corner:
            return [x, y], gr.skip(), f"First corner at ({x:g}, {y:g}): now click the opposite corner."
        box = (corner[0], corner[1], x, y)
        return None, format_box(box), f"Box set to {format_box(box)}."

    @staticmethod
    def reset_box() -> tuple[None, str, str]:
        """No corner clicked, no box, no hint."""
        return None, "", ""

    def pick_example(self, evt: gr.EventData = None):
        """A click on an example: its picture (Gradio's cached copy, in the upload folder) becomes the image."""
        _, value = selection(evt)
        image = value.get("image") if isinstance(value, dict) else None
        path = image.get("path") if isinstance(image, dict) else None
        try:
            return path if path and check_upload({"path": path}, self.uploads) else gr.skip()
        except CbamVizError:
            return gr.skip()

    def pick_target(self, evt: gr.EventData = None):
        """A click on a top-5 entry makes its class the target of both models."""
        _, value = selection(evt)
        value = value.get("label") if isinstance(value, dict) else value
        return value if isinstance(value, str) and value in self.studio.class_names else gr.skip()
