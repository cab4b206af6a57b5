"""Figures for slides and papers: the Sec. 4.3-style Grad-CAM grid and the channel-attention plot.

Only `matplotlib.figure.Figure` is used (never pyplot), so figures can be drawn from several threads at once
(the web app's workers) and nothing is left in a global figure registry.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from cbam_viz.cam.engine import METHODS, ModelResult
from cbam_viz.cam.render import overlay
from cbam_viz.io.fileio import atomic_path
from cbam_viz.nn.attention import AttentionMaps

FigureRow = tuple[Image.Image, ModelResult, ModelResult]
TITLE_CHARS, TITLE_LINES = 60, 3  # a title is wrapped to lines of this many characters, at most this many lines


def title_lines(title: str, width: int = TITLE_CHARS, max_lines: int = TITLE_LINES) -> list[str]:
    """The figure title wrapped to the grid's width, clipped with '…' after `max_lines` (so it never overflows)."""
    return textwrap.wrap(" ".join(title.split()), width, max_lines=max_lines, placeholder=" …")


def method_title(result: ModelResult) -> str:
    """'Grad-CAM', or 'Grad-CAM++ (layer3)' when the map is not from layer4."""
    label = METHODS[result.method].label if result.method in METHODS else result.method
    return label if result.layer == "layer4" else f"{label} ({result.layer})"


def probability_caption(result: ModelResult, row_label: str | None = None) -> str:
    """The text under a heatmap, as in the paper: 'P = 0.963', prefixed by the class when it is not the row's."""
    target = result.target
    text = f"P = {target.prob:.3f}"
    return text if target.label == row_label else f"{target.label}\n{text}"


def paper_figure_image(
    rows: Sequence[FigureRow],
    *,
    title: str | None = None,
    row_labels: Sequence[str | None] | None = None,
    opacity: float = 0.5,
    colormap: str = "jet",
    tile_inches: float = 2.0,
) -> Figure:
    """The grid as a matplotlib Figure: one row per image, columns input | baseline CAM | CBAM CAM.

    Under each heatmap: the softmax probability P of the class it explains (and the class when it differs
    from the row's label). A row's label defaults to the class both models explain when they agree.
    """
    if not rows:
        raise ValueError("paper_figure needs at least one row")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError("row_labels must have one entry per row")
    first_base, first_cbam = rows[0][1], rows[0][2]
    headings = [
        "Input",
        f"{first_base.meta.display_name}\n{method_title(first_base)}",
        f"{first_cbam.meta.display_name}\n{method_title(first_cbam)}",
    ]
    aspect = max(im.height / im.width for im, _, _ in rows)
    tile_h = tile_inches * min(max(aspect, 0.5), 1.5)
    lines = title_lines(title) if title else []
    height = len(rows) * (tile_h + 0.55) + 0.5 + 0.2 * len(lines) + (0.15 if lines else 0.0)
    fig = Figure(figsize=(3 * tile_inches + 0.5, height), layout="constrained")
    if lines:
        fig.suptitle("\n".join(lines), fontsize=12)
    axes = np.atleast_2d(fig.subplots(len(rows), 3, squeeze=False))
    for r, (image, base, cbam) in enumerate(rows):
        label = row_labels[r] if row_labels is not None else None
        if label is None and base.target.label == cbam.target.label:
            label = base.target.label
        tiles = [image.convert("RGB")] + [overlay(image, res.heatmaps[0], opacity, colormap) for res in (base, cbam)]
        for c, tile in enumerate(tiles):
            ax = axes[r, c]
            ax.imshow(np.asarray(tile), interpolation="lanczos")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(headings[c], fontsize=10)
        if label:
            axes[r, 0].set_ylabel(label, fontsize=10)
        for c, res in ((1, base), (2, cbam)):
            axes[r, c].set_xlabel(probability_caption(res, label), fontsize=10)
    return fig


def paper_figure(
    rows: Sequence[FigureRow],
    path_png: str | Path,
    path_pdf: str | Path | None = None,
    *,
    title: str | None = None,
    row_labels: Sequence[str | None] | None = None,
    opacity: float = 0.5,
    colormap: str = "jet",
    dpi: int = 200,
) -> list[Path]:
    """Write the Sec. 4.3-style grid (see `paper_figure_image`) as a PNG and, if asked, a PDF; return the paths.

    `rows` are (image, baseline result, CBAM result) with each result's first heatmap at the image's size
    (e.g. `(c.image, c.results["baseline"], c.results["cbam"])` for a `Comparison` c). Files are written
    atomically.
    """
    fig = paper_figure_image(rows, title=title, row_labels=row_labels, opacity=opacity, colormap=colormap)
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
