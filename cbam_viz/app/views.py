"""What the page shows of an analysis: overlays, captions, top-5, scores as JSON, localization and model panels.

Pure rendering: nothing here calls a model, so opacity and colormap changes cost no forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cbam_viz.app.controls import format_box
from cbam_viz.app.studio import Analysis, Localization, duration
from cbam_viz.app.uploads import base_name
from cbam_viz.cam.engine import METHODS, SLOW_METHODS, ModelResult, upsample
from cbam_viz.cam.render import colorize, overlay
from cbam_viz.errors import CbamVizError, echo
from cbam_viz.eval.metrics import agreement, peak
from cbam_viz.familiarity.detectors import SCORE_NAMES
from cbam_viz.io.checkpoints import LoadedModel, ModelMeta
from cbam_viz.nn.knockout import ImageEffects, KnockOut

NEARLY_CONSTANT = 0.1  # a spatial map spanning less than this is flagged under the picture
NEARLY_CONSTANT_NOTE = "nearly constant: this block barely reweights positions here"
ATTENTION_CAPTION = (
    "**Spatial attention** (top row): CBAM's map Ms of the chosen block in each stage, the weight from 0 to 1 by "
    "which the block multiplies each position of its output before the residual add, on the colour bar's scale "
    "(absolute 0 to 1, or each map stretched to its own range; each label gives the range). A map that spans less "
    f"than {NEARLY_CONSTANT:g} barely reweights positions. **Channel attention** (plot): the weights Mc of the same "
    "blocks' channels, sorted from most boosted to most suppressed; the box names the most boosted channels by "
    "index. A flat curve means the block barely reweights its channels."
)


def slow_methods_note(slow_seconds: float) -> str:
    """What the page says up front about the slow methods (the method dropdown's info line)."""
    names = " and ".join(METHODS[m].label for m in SLOW_METHODS)
    return (
        f"{names}: slow, one forward pass per channel (256 at layer1 to 2048 at layer4); one runs at a time, and "
        f"one estimated over {duration(slow_seconds)} is refused. The others take one pass."
    )


def heatmap_overlay(analysis: Analysis, key: str, opacity: float = 0.5, colormap: str = "jet") -> Image.Image:
    """The model's heatmap for the target blended over the displayed image (pure rendering, no model call)."""
    return overlay(analysis.image, analysis.results[key].heatmaps[0], opacity, colormap)


def caption_markdown(result: ModelResult, title: str) -> str:
    """The lines under a heatmap, as in the paper's figure: the model and method, the explained class, its P."""
    target = result.target
    return f"**{_md(result.meta.display_name)}** · {_md(title)}  \n{_md(target.label)}  \n**P = {target.prob:.3f}**"


def download_name(analysis: Analysis, key: str) -> str:
    """The heatmap's file name for a download: photo, model, method and layer (camel_cbam-resnet50_gradcam_layer4)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(analysis.source.name).stem).strip("._")[:60] or "image"
    model = re.sub(r"[^\w.-]+", "-", analysis.results[key].meta.display_name.lower())
    return f"{stem}_{model}_{analysis.method}_{analysis.layer}"


def top5_label(result: ModelResult) -> dict[str, float]:
    """The top-5 as gr.Label wants it: {class: probability}."""
    return {p.label: round(p.prob, 6) for p in result.top5}


def pick_block(attention: Any, stage: str, block: object) -> str:
    """The requested block if it belongs to `stage`, else the stage's last block."""
    blocks = attention.stage(int(stage[-1]))
    if not blocks:
        raise CbamVizError(f"the CBAM model has no attention maps in {stage}")
    return str(block) if block in blocks else blocks[-1]


def attention_overlay(
    analysis: Analysis, block: str, opacity: float = 0.5, colormap: str = "jet", stretch: bool = False
) -> tuple[Image.Image | None, str, str]:
    """One CBAM block's spatial attention overlaid on the absolute 0-1 scale (or stretched to its own range), its
    label with the true range, and a note when the map is nearly constant; no picture for a block without one."""
    attention = analysis.results["cbam"].attention
    if attention is None:
        raise CbamVizError("the CBAM checkpoint recorded no attention maps")
    if block not in attention.spatial:
        return None, f"{block} · channel attention only: this CBAM variant has no spatial map", ""
    spatial = attention.spatial[block].float().cpu().numpy()
    low, high = float(spatial.min()), float(spatial.max())
    if stretch:
        spatial = (spatial - low) / (high - low) if high > low else np.zeros_like(spatial)
    h, w = spatial.shape
    shown = cv2.resize(np.clip(spatial, 0, 1).astype(np.float32), analysis.image.size, interpolation=cv2.INTER_LINEAR)
    note = f"{block}: {NEARLY_CONSTANT_NOTE} (Ms {low:.2f}–{high:.2f})" if high - low < NEARLY_CONSTANT else ""
    return overlay(analysis.image, shown, opacity, colormap), f"{block} · {w}×{h} · Ms {low:.2f}–{high:.2f}", note


def colorbar_html(colormap: str, stretch: bool) -> str:
    """The attention maps' colour bar: the colormap as a CSS gradient, with its two ends named."""
    colours = colorize(np.linspace(0, 1, 11)[None], colormap)[0]
    stops = ", ".join(f"rgb({r}, {g}, {b}) {i * 10}%" for i, (r, g, b) in enumerate(colours))
    low, high = ("each map's minimum", "its maximum") if stretch else ("0: position suppressed", "1: kept in full")
    return (
        f'<div class="colorbar" style="background: linear-gradient(to right, {stops})"></div>'
        f'<div class="colorbar-ends"><span>{low}</span><span>Ms</span><span>{high}</span></div>'
    )


def last_attention_agreement(result: ModelResult) -> tuple[str, float] | None:
    """Pearson correlation between CBAM's last spatial attention map and the result's heatmap (None for the baseline
    and for a variant without spatial maps)."""
    if result.attention is None or not result.attention.spatial:
        return None
    block = list(result.attention.spatial)[-1]
    heat = result.heatmaps[0]
    spatial = result.attention.spatial[block].float().cpu().numpy()[None]
    return block, agreement(upsample(spatial, (heat.shape[1], heat.shape[0]))[0], heat)


EFFECTS_INTRO = (
    "Each row runs CBAM-ResNet50 with one stage's spatial gate, channel gate or both made constant (the gate's own "
    "mean on this image, so the activations keep their scale and lose the gate's pattern), reusing the activations "
    "below that stage. **ΔP**: change in the target's softmax P. **Top-1**: the class it then predicts. "
    "**CAM r**: Pearson correlation of its layer4 Grad-CAM with the intact one's; **peak** says whether the CAM's "
    "maximum moved."
)


def effects_json(effects: ImageEffects, meta: ModelMeta) -> dict[str, Any]:
    """The knock-out table as the `compare` API returns it: the target, the intact outcome, one row per knock-out
    with class labels and rounded figures (no CAMs)."""
    table = effects.to_dict()

    def tidy(row: dict[str, Any]) -> dict[str, Any]:
        row = {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
        return {**row, "top1_label": meta.class_names[row["top1"]]}

    return {
        "model": meta.display_name,
        "target": {"label": meta.class_names[effects.target], "index": effects.target},
        "intact": tidy(table["intact"]),
        "knockouts": [tidy(row) for row in table["knockouts"]],
    }


def effects_markdown(effects: ImageEffects, meta: ModelMeta) -> str:
    """The knock-out table for the page: stage × gate with ΔP, the top-1 after, CAM correlation and peak."""
    names = meta.class_names
    lines = [
        f"**{_md(meta.display_name)}**, target **{_md(names[effects.target])}**, intact P = "
        f"{effects.intact.p_target:.3f} (top-1 {_md(names[effects.intact.top1])})",
        "",
        "| stage | gate made constant | ΔP | top-1 | CAM r | peak |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for k in effects.knockouts:
        top1 = "same" if k.outcome.top1 == effects.intact.top1 else f"→ {_md(names[k.outcome.top1])}"
        lines.append(
            f"| layer{k.stage} | {k.gate} | {k.outcome.p_target - effects.intact.p_target:+.3f} | {top1} | "
            f"{k.cam_correlation:.2f} | {'moved' if k.peak_moved else 'same'} |"
        )
    return "\n".join(lines) + "\n\n" + EFFECTS_INTRO


def find_knockout(effects: ImageEffects, stage: str, gate: str) -> KnockOut:
    """The knock-out of `stage` ("layer1".."layer4") and `gate`; CbamVizError names the ones measured."""
    for k in effects.knockouts:
        if f"layer{k.stage}" == stage and k.gate == gate:
            return k
    done = ", ".join(sorted({f"layer{k.stage} {k.gate}" for k in effects.knockouts}))
    raise CbamVizError(f"no knock-out of the {echo(gate)} gate at {echo(stage)}; measured: {done}")


def knockout_overlay(
    image: Image.Image, effects: ImageEffects, stage: str, gate: str, opacity: float = 0.5, colormap: str = "jet"
) -> tuple[Image.Image, str]:
    """The layer4 Grad-CAM with `stage`'s `gate` knocked out over the shown image, and its caption."""
    k = find_knockout(effects, stage, gate)
    heatmap = upsample(k.cam[None], image.size)[0]
    caption = (
        f"without {stage}'s {'gates' if gate == 'both' else gate + ' gate'} · P {k.outcome.p_target:.3f} "
        f"(intact {effects.intact.p_target:.3f}) · CAM r {k.cam_correlation:.2f}"
    )
    return overlay(image, heatmap, opacity, colormap), caption


# each model's peak marker: colour and size relative to the circle; the CBAM square is larger, so that both stay
# visible when the peaks coincide, and a dark rim keeps either visible on any photo
PEAK_MARKERS = {"baseline": ((0, 170, 255), 1.0), "cbam": ((255, 60, 200), 1.6)}


def localization_preview(analysis: Analysis, localization: Localization | None) -> Image.Image:
    """The displayed image with the object's outline (mask or box) and each model's heatmap peak marked."""
    image = analysis.image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    side = min(image.size)
    line, radius = max(3, round(side / 90)), max(10, round(side / 18))
    if localization is not None:
        mask = localization.mask
        edge = mask & ~ndimage.binary_erosion(mask)  # 4-neighbour; outside the image counts as background
        shade = np.asarray(image).copy()
        shade[~mask] = (shade[~mask] * 0.55).astype(np.uint8)
        shade[ndimage.binary_dilation(edge, iterations=max(1, line // 3))] = (255, 255, 255)
        image = Image.fromarray(shade)
        draw = ImageDraw.Draw(image)
    for key, (color, size) in PEAK_MARKERS.items():
        y, x = peak(analysis.results[key].heatmaps[0])
        r = round(radius * size)
        shape = draw.ellipse if key == "baseline" else draw.rectangle
        shape((x - r - line, y - r - line, x + r + line, y + r + line), outline=(0, 0, 0), width=3 * line)
        shape((x - r, y - r, x + r, y + r), outline=color, width=line)
    return image


def localization_markdown(analysis: Analysis, localization: Localization | None) -> str:
    """A small table: pointing-game hit and energy inside the mask/box per model, plus CBAM's agreement score."""
    names = {key: res.meta.display_name for key, res in analysis.results.items()}
    lines = [f"Heatmap peaks: blue circle = {names['baseline']}, larger pink square = {names['cbam']}.", ""]
    if localization is None:
        lines.append(
            "No object location for this image. Pick a bundled example (they ship object masks), type a box "
            "below, or click two opposite corners of the object on this image."
        )
    else:
        where = (
            f"the box {format_box(localization.box)}" if localization.box is not None else "the example's object mask"
        )
        lines += [
            f"Object location: {where} (outlined).",
            "",
            "| model | target | pointing game | energy in " + ("box" if localization.box else "mask") + " |",
            "|---|---|---|---|",
        ]
        for key, res in analysis.results.items():
            s = localization.scores[key]
            hit = "**hit**" if s["pointing_hit"] else "miss"
            lines.append(f"| {res.meta.display_name} | {_md(res.target.label)} | {hit} | {s['energy_in_mask']:.1%} |")
    agree = last_attention_agreement(analysis.results["cbam"])
    if agree is not None:
        lines += [
            "",
            f"**Attention–CAM agreement** (CBAM): Pearson r = **{agree[1]:.3f}** between its last spatial attention "
            f"map ({agree[0]}) and its {METHODS[analysis.method].label} map for "
            f"{_md(analysis.results['cbam'].target.label)}.",
        ]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Escape Markdown control characters in a class name."""
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", str(text))


def _prediction(p: Any) -> dict[str, Any]:
    return {"label": p.label, "index": p.index, "p": round(float(p.prob), 6)}


def scores_json(analysis: Analysis, localization: Localization | None = None) -> dict[str, Any]:
    """What the `compare` API returns: per model top-5 and P, the target and P, localization when known."""
    models = {}
    for key, res in analysis.results.items():
        entry: dict[str, Any] = {
            "model": res.meta.display_name,
            "arch": res.meta.arch,
            "top5": [_prediction(p) for p in res.top5],
            "target": _prediction(res.target),
            "localization": None,
        }
        if localization is not None:
            s = localization.scores[key]
            entry["localization"] = {
                "pointing_hit": bool(s["pointing_hit"]),
                "energy_in_mask": round(float(s["energy_in_mask"]), 6),
            }
        entry["familiarity"] = res.familiarity.as_json() if res.familiarity else None
        agree = last_attention_agreement(res)
        if agree is not None:
            entry["attention_agreement"] = {"block": agree[0], "pearson": round(agree[1], 6)}
        models[key] = entry
    return {
        "image": {
            "name": analysis.source.name,
            "width": analysis.source.image.width,
            "height": analysis.source.image.height,
            "analysed_width": analysis.image.width,
            "analysed_height": analysis.image.height,
        },
        "target": analysis.target,
        "method": analysis.method,
        "method_label": METHODS[analysis.method].choice,
        "layer": analysis.layer,
        "localization": None
        if localization is None
        else {"source": localization.source, "box": list(localization.box) if localization.box else None},
        "models": models,
    }


def model_info_markdown(loaded: LoadedModel, max_classes: int = 60) -> str:
    """The checkpoint's metadata for the model-info panel (the file's base name only, never a server path)."""
    meta = loaded.meta
    names = meta.class_names
    shown = ", ".join(_md(n) for n in names[:max_classes])
    if len(names) > max_classes:
        shown += f", … ({len(names) - max_classes} more)"
    params = sum(p.numel() for p in loaded.model.parameters())
    lines = [
        f"### {meta.display_name}",
        f"- **checkpoint**: `{base_name(meta.source) if meta.source else 'n/a'}` "
        f"({meta.arch}, {params / 1e6:.1f} M parameters)",
        f"- **input**: {meta.input_size}×{meta.input_size} px, mean {_floats(meta.mean)}, std {_floats(meta.std)}",
        f"- **classes** ({len(names)}): {shown}",
    ]
    if meta.cbam is not None:
        lines.append(f"- **CBAM blocks**: {meta.cbam.describe()}")
    lines.append(f"- **familiarity**: {familiarity_summary(loaded)}")
    tables = (("dataset", meta.dataset), ("training recipe", meta.recipe), ("validation metrics", meta.metrics))
    for title, table in tables:
        if not table:
            lines.append(f"- **{title}**: not recorded in the checkpoint")
            continue
        lines.append(f"- **{title}**:")
        lines += [f"    - {_md(str(k))}: {_md(_value(v))}" for k, v in table.items()]
    return "\n".join(lines)


# What each known training set looks like, for the panel that says what the models know.
DATASET_KINDS = {
    "stamp scenes": (
        "stamp subjects",
        "photos of single objects (Tux Paint's photographic stamps) pasted onto nature photographs, with up to "
        "two other objects as clutter",
    ),
    "ImageNet-1k": ("ImageNet classes", "ImageNet photographs"),
}


def known_classes(meta: Any) -> str:
    """'the 32 stamp subjects', 'the 1000 ImageNet classes', or 'the 5 classes' of a checkpoint."""
    noun = DATASET_KINDS.get(meta.dataset.get("name", ""), ("classes", ""))[0]
    return f"the {meta.num_classes} {noun}"


def knowledge_markdown(models: dict[str, LoadedModel]) -> str:
    """What the models were trained to recognise and on which kind of images (shown beside the upload)."""
    described: dict[str, list[str]] = {}
    for loaded in models.values():
        meta = loaded.meta
        kind = DATASET_KINDS.get(meta.dataset.get("name", ""), ("", ""))[1]
        described.setdefault(known_classes(meta) + (f", trained on {kind}" if kind else ""), []).append(
            meta.display_name
        )
    lines = [
        f"**{' and '.join(names)}** know{'s' if len(names) == 1 else ''} {what}." for what, names in described.items()
    ]
    lines.append(
        "Other photos still get a class and a heatmap, but those mean nothing: a warning above the heatmaps says "
        "when an image looks unlike the training images."
    )
    return "  \n".join(lines)


def familiarity_banner(analysis: Analysis) -> str:
    """A warning naming the models that find the image unfamiliar; '' when every model with a detector finds it
    familiar (or none has one)."""
    strangers = [res for res in analysis.results.values() if res.familiarity and res.familiarity.unfamiliar]
    if not strangers:
        return ""
    names = " and ".join(res.meta.display_name for res in strangers)
    classes = known_classes(strangers[0].meta)
    whose = "these models were" if len(strangers) == len(analysis.results) else f"{names} was"
    return (
        f"⚠️ **This image looks unlike {classes} {whose} trained on** (unfamiliar to {names}): "
        "the top-5 and heatmaps here are not meaningful."
    )


FAMILIARITY_STATES = {
    "familiar": "familiar",
    "borderline": "borderline: close to the threshold",
    "unfamiliar": "unfamiliar: answer not meaningful",
}


def gauge_scale(threshold: float, quantiles: dict[str, float] | None) -> tuple[float, float, float]:
    """(left end, start of the borderline band, right end) of a familiarity gauge: from the validation median to
    half that distance past the threshold, the band from the 80% quantile. A detector that recorded no
    quantiles gets no band (familiar or unfamiliar only) on a scale of its threshold's size."""
    if quantiles and "0.5" in quantiles and "0.8" in quantiles:
        low, border = float(quantiles["0.5"]), float(quantiles["0.8"])
    else:
        low, border = threshold - max(abs(threshold), 1.0), threshold
    low = min(low, threshold - 1e-6)
    return low, min(max(border, low), threshold), threshold + (threshold - low) / 2


def familiarity_gauge(result: ModelResult, detector: Any) -> str:
    """A small gauge of one model's familiarity score against its threshold, labelled familiar, borderline or
    unfamiliar; '' when the checkpoint has no detector."""
    score = result.familiarity
    if score is None or detector is None:
        return ""
    low, border, high = gauge_scale(score.threshold, detector.info.get("val_quantiles"))
    state = "unfamiliar" if score.unfamiliar else "borderline" if border < score.score else "familiar"

    def at(value: float) -> float:
        return round(100 * min(max((value - low) / (high - low), 0.0), 1.0), 1)

    return (
        f'<div class="gauge gauge-{state}" title="{SCORE_NAMES.get(score.method, score.method)}: higher is less '
        f'familiar">'
        f'<div class="gauge-track"><span class="gauge-band" style="left: {at(border)}%; width: '
        f'{at(score.threshold) - at(border)}%"></span><span class="gauge-threshold" style="left: '
        f'{at(score.threshold)}%"></span><span class="gauge-marker" style="left: {at(score.score)}%"></span></div>'
        f'<div class="gauge-text"><b>{FAMILIARITY_STATES[state]}</b> · score {score.score:.2f}, threshold '
        f"{score.threshold:.2f}</div></div>"
    )


def familiarity_summary(loaded: LoadedModel) -> str:
    """One line on the checkpoint's familiarity detector, or 'not available'."""
    fam = loaded.familiarity
    if fam is None:
        return "not available (the checkpoint carries no familiarity statistics)"
    fit = f", fit on {fam.info['train_images']} training images" if "train_images" in fam.info else ""
    keep = fam.info.get("keep", 0.95)
    score = SCORE_NAMES.get(fam.method, fam.method)
    kept = f"keeps {keep:.0%} of validation images familiar"
    return f"{fam.method} ({score}), threshold {fam.threshold:.4g}{fit} ({kept})"


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    return str(value)
