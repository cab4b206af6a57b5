"""Figures for slides and papers: the Sec. 4.3-style Grad-CAM grid and the channel-attention plot.

Only `matplotlib.figure.Figure` is used (never pyplot), so figures can be drawn from several threads at once
(the web app's workers) and nothing is left in a global figure registry.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from cbam_viz.cam.engine import METHODS, ModelResult
from cbam_viz.cam.render import overlay
from cbam_viz.io.fileio import atomic_path
from cbam_viz.nn.attention import AttentionMaps

FigureRow = tuple[Image.Image, ModelResult, ModelResult]
TITLE_CHARS, TITLE_LINES = 60, 3  # a title is wrapped to lines of this many characters, at most this many lines
TITLE_SIZE, HEADING_SIZE, CAPTION_SIZE, NOTE_SIZE = 12, 10, 9, 8  # font sizes in points
MARGIN, COLUMN_GAP, ROW_GAP, CAPTION_GAP = 0.08, 0.06, 0.1, 0.03  # spacing of the grid, in inches
LINE_INCHES = 1.25 / 72  # height of one line of text per point of font size, in inches
CHAR_EMS = 0.6  # a generous average character width of the default font, in ems
MIN_ASPECT, MAX_ASPECT = 1 / 3, 2.0  # a tile's height / width; images beyond are letterboxed inside their tile
WARNING_COLOUR = "#c03000"
UNFAMILIAR_MARK = "\u26a0"  # the warning sign, which the default font (DejaVu Sans) has


def title_lines(title: str, width: int = TITLE_CHARS, max_lines: int = TITLE_LINES) -> list[str]:
    """The figure title wrapped to the grid's width, clipped with '…' after `max_lines` (so it never overflows)."""
    return textwrap.wrap(" ".join(title.split()), width, max_lines=max_lines, placeholder=" …")


def method_title(result: ModelResult) -> str:
    """'Grad-CAM', or 'Grad-CAM++ (layer3)' when the map is not from layer4."""
    label = METHODS[result.method].label if result.method in METHODS else result.method
    return label if result.layer == "layer4" else f"{label} ({result.layer})"


def fit_lines(text: str, inches: float, fontsize: float, max_lines: int | None = None) -> str:
    """`text` wrapped to lines that fit `inches` at `fontsize`, so captions never spill into the next tile."""
    chars = max(8, int(inches * 72 / (CHAR_EMS * fontsize)))
    lines = textwrap.wrap(" ".join(text.split()), chars, max_lines=max_lines, placeholder=" …", break_on_hyphens=False)
    return "\n".join(lines)


def text_inches(text: str, fontsize: float) -> float:
    """The height of a (multi-line) text at `fontsize`, in inches; 0 for no text."""
    return (text.count("\n") + 1) * fontsize * LINE_INCHES if text else 0.0


def probability_caption(result: ModelResult, inches: float = 2.0) -> str:
    """The text under a heatmap: the class it explains and its softmax P, e.g. 'penguin\\nP = 0.944'."""
    target = result.target
    return f"{fit_lines(target.label, inches, CAPTION_SIZE, max_lines=2)}\nP = {target.prob:.3f}"


def is_unfamiliar(result: ModelResult) -> bool:
    """Whether the model's familiarity detector found the image unlike its training images."""
    return result.familiarity is not None and result.familiarity.unfamiliar


def unfamiliar_note(results: Sequence[ModelResult], inches: float = 2.0) -> str:
    """The warning under an input tile naming the models that find it unfamiliar; '' when none does."""
    names = [res.meta.display_name for res in results if is_unfamiliar(res)]
    if not names:
        return ""
    text = f"{UNFAMILIAR_MARK} unfamiliar to {' and '.join(names)}: class and P not meaningful"
    return fit_lines(text, inches, NOTE_SIZE)


def row_captions(base: ModelResult, cbam: ModelResult, inches: float) -> list[tuple[str, int, str]]:
    """(text, font size, colour) under each tile of a row: the unfamiliar warning, then class and P per model."""
    note = (unfamiliar_note([base, cbam], inches), NOTE_SIZE, WARNING_COLOUR)
    return [note] + [
        (probability_caption(res, inches), CAPTION_SIZE, WARNING_COLOUR if is_unfamiliar(res) else "black")
        for res in (base, cbam)
    ]


def draw_tile(ax: Axes, picture: Image.Image, caption: tuple[str, int, str], framed: bool) -> None:
    """One picture of the grid with its caption right under it, framed in the warning colour if asked."""
    ax.imshow(np.asarray(picture), interpolation="lanczos")
    ax.set_axis_off()
    text, size, colour = caption
    if text:
        ax.annotate(
            text, (0.5, 0.0), xycoords="axes fraction", xytext=(0.0, -CAPTION_GAP * 72), textcoords="offset points",
            ha="center", va="top", fontsize=size, color=colour,
        )
    if framed:
        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=WARNING_COLOUR,
                               linewidth=2.5, clip_on=False))


def paper_figure_image(
    rows: Sequence[FigureRow],
    *,
    title: str | None = None,
    opacity: float = 0.5,
    colormap: str = "jet",
    tile_inches: float = 2.0,
) -> Figure:
    """The grid as a matplotlib Figure: one row per image, columns input | baseline CAM | CBAM CAM, axes added
    row by row.

    Under each heatmap: the class it explains and its softmax P. Under the input, framed: a warning when a model
    finds the image unfamiliar, since that model's class and P then mean nothing. Tiles and captions are packed
    with small even gaps, each row as tall as its image's aspect asks.
    """
    if not rows:
        raise ValueError("paper_figure needs at least one row")
    width = 2 * MARGIN + 3 * tile_inches + 2 * COLUMN_GAP
    headings = ["Input"] + [
        f"{fit_lines(res.meta.display_name, tile_inches, HEADING_SIZE)}\n{method_title(res)}" for res in rows[0][1:]
    ]
    captions = [row_captions(base, cbam, tile_inches) for _, base, cbam in rows]
    tile_heights = [tile_inches * min(max(im.height / im.width, MIN_ASPECT), MAX_ASPECT) for im, _, _ in rows]
    caption_heights = [CAPTION_GAP + max(text_inches(text, size) for text, size, _ in row) for row in captions]
    title_chars = min(TITLE_CHARS, int(width * 72 / (CHAR_EMS * TITLE_SIZE)))
    shown_title = "\n".join(title_lines(title, title_chars)) if title else ""
    top = MARGIN + (text_inches(shown_title, TITLE_SIZE) + MARGIN if shown_title else 0.0)
    top += max(text_inches(h, HEADING_SIZE) for h in headings) + CAPTION_GAP
    height = top + sum(tile_heights) + sum(caption_heights) + ROW_GAP * (len(rows) - 1) + MARGIN
    fig = Figure(figsize=(width, height))
    if shown_title:
        fig.suptitle(shown_title, fontsize=TITLE_SIZE, y=1 - MARGIN / height, va="top")
    y = top
    for r, ((image, base, cbam), tile_h, row) in enumerate(zip(rows, tile_heights, captions)):
        tiles = [image.convert("RGB")] + [overlay(image, res.heatmaps[0], opacity, colormap) for res in (base, cbam)]
        for c, (tile, caption) in enumerate(zip(tiles, row)):
            box = ((MARGIN + c * (tile_inches + COLUMN_GAP)) / width, 1 - (y + tile_h) / height,
                   tile_inches / width, tile_h / height)
            ax = fig.add_axes(box)
            draw_tile(ax, tile, caption, framed=c == 0 and bool(caption[0]))
            if r == 0:
                ax.set_title(headings[c], fontsize=HEADING_SIZE, pad=CAPTION_GAP * 72, va="bottom")
        y += tile_h + caption_heights[r] + ROW_GAP
    return fig


def paper_figure(
    rows: Sequence[FigureRow],
    path_png: str | Path,
    path_pdf: str | Path | None = None,
    *,
    title: str | None = None,
    opacity: float = 0.5,
    colormap: str = "jet",
    dpi: int = 200,
) -> list[Path]:
    """Write the Sec. 4.3-style grid (see `paper_figure_image`) as a PNG and, if asked, a PDF; return the paths.

    `rows` are (image, baseline result, CBAM result) with each result's first heatmap at the image's size
    (e.g. `(c.image, c.results["baseline"], c.results["cbam"])` for a `Comparison` c). Files are written
    atomically.
    """
    fig = paper_figure_image(rows, title=title, opacity=opacity, colormap=colormap)
    written = []
    for path, fmt in ((path_png, "png"), (path_pdf, "pdf")):
        if path is None:
            continue
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
        written.append(Path(path))
    return written


def channel_attention_figure(attention: AttentionMaps, blocks: Sequence[str], top: int = 5) -> Figure:
    """For each given block (one per stage), its channel attention Mc sorted from most boosted to most suppressed.

    The dotted line is 0.5 (sigmoid of 0, neither boosting nor suppressing); the box names the `top` most
    boosted channels by index with their weight.
    """
    columns = 2 if len(blocks) > 1 else 1
    rows = -(-len(blocks) // columns)
    fig = Figure(figsize=(4.2 * columns, 2.7 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax, block in zip(axes, blocks):
        weights = attention.channel[block].float().cpu().numpy()
        order = np.argsort(-weights, kind="stable")
        ranked = weights[order]
        ax.fill_between(np.arange(len(ranked)), ranked, color="tab:blue", alpha=0.25, linewidth=0)
        ax.plot(ranked, color="tab:blue", linewidth=1.2)
        ax.axhline(0.5, color="0.4", linestyle=":", linewidth=1)
        ax.set_xlim(0, max(len(ranked) - 1, 1))
        ax.set_ylim(0, 1)
        ax.set_title(f"{block}: {len(ranked)} channels", fontsize=10)
        ax.set_xlabel("channel rank (most boosted first)", fontsize=8)
        ax.set_ylabel("weight Mc", fontsize=8)
        ax.tick_params(labelsize=7)
        named = "\n".join(f"#{int(i):<5d}{weights[i]:.3f}" for i in order[:top])
        ax.text(
            0.98, 0.04, f"most boosted\n{named}", transform=ax.transAxes, ha="right", va="bottom",
            fontsize=7, family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"},
        )
    for ax in axes[len(blocks):]:
        ax.set_visible(False)
    return fig
