"""The Sec. 4.3-style paper figure: unfamiliar rows marked, class and P under every heatmap, a tight grid, and the
figure's own heatmap opacity."""

from __future__ import annotations

import dataclasses
import inspect
import io
import warnings

import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from cbam_viz.app.figure_export import MIN_FIGURE_OPACITY, export_figure
from cbam_viz.app.studio import Studio
from cbam_viz.app.uploads import SourceImage, image_key
from cbam_viz.cam.engine import ModelResult, compare
from cbam_viz.cam.figures import UNFAMILIAR_MARK, WARNING_COLOUR, FigureRow, paper_figure_image
from cbam_viz.errors import CbamVizError
from cbam_viz.familiarity.detectors import FamiliarityScore
from tests.conftest import random_image

SIZES = {"square": (64, 64), "wide": (96, 48), "tall": (48, 96)}


@pytest.fixture(scope="module")
def figure_rows(tiny_models) -> dict[str, FigureRow]:
    """One row per image shape, from the tiny models."""
    rows = {}
    for seed, (shape, size) in enumerate(SIZES.items()):
        c = compare(random_image(seed, size), tiny_models)
        rows[shape] = (c.image, c.results["baseline"], c.results["cbam"])
    return rows


def unfamiliar(result: ModelResult) -> ModelResult:
    """The result as if its model's detector had found the image unfamiliar."""
    return dataclasses.replace(result, familiarity=FamiliarityScore(9.0, 4.0, True, "patches"))


def tile_texts(ax: Axes) -> list[Text]:
    """The visible texts drawn on one tile (its caption), title excluded."""
    return [t for t in ax.texts if t.get_visible() and t.get_text()]


def one_line(text: str) -> str:
    """The text with its line breaks (from wrapping) as spaces."""
    return " ".join(text.split())


def drawn(ax: Axes) -> Bbox:
    """Where the tile's picture is drawn, in pixels (the axes may be larger than the picture it shows)."""
    return ax.images[0].get_window_extent()


def test_an_unfamiliar_row_is_marked_under_and_around_its_input(figure_rows):
    image, base, cbam = figure_rows["square"]
    fig = paper_figure_image([(image, base, cbam), (image, base, unfamiliar(cbam)), (image, unfamiliar(base), cbam)])
    inputs = fig.axes[0::3]
    assert tile_texts(inputs[0]) == [] and not any(isinstance(p, Rectangle) for p in inputs[0].patches)
    for ax, names in ((inputs[1], cbam.meta.display_name), (inputs[2], base.meta.display_name)):
        (note,) = tile_texts(ax)
        assert one_line(note.get_text()) == f"{UNFAMILIAR_MARK} unfamiliar to {names}: class and P not meaningful"
        assert note.get_color() == WARNING_COLOUR
        assert any(isinstance(p, Rectangle) and p.get_edgecolor() == to_rgba(WARNING_COLOUR) for p in ax.patches)
    # the caption of the model that finds it unfamiliar is in the warning colour too, the other's is not
    assert [tile_texts(ax)[0].get_color() for ax in fig.axes[4:6]] == ["black", WARNING_COLOUR]
    both = paper_figure_image([(image, unfamiliar(base), unfamiliar(cbam))])
    (note,) = tile_texts(both.axes[0])
    assert f"unfamiliar to {base.meta.display_name} and {cbam.meta.display_name}:" in one_line(note.get_text())


def test_the_warning_sign_renders_with_the_default_font(figure_rows):
    image, base, cbam = figure_rows["square"]
    fig = paper_figure_image([(image, unfamiliar(base), cbam)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(io.BytesIO(), format="png", dpi=60)
    assert not [str(w.message) for w in caught if "missing from" in str(w.message)]


def test_every_row_has_its_class_and_p_under_both_heatmaps_and_nothing_to_the_left(figure_rows):
    image, base, cbam = figure_rows["square"]
    other = dataclasses.replace(cbam, targets=[(cbam.targets[0] + 1) % cbam.meta.num_classes])
    rows = [(image, base, cbam), (image, base, other)]  # the models agree on the first row, not on the second
    fig = paper_figure_image(rows)
    fig.draw_without_rendering()
    for r, (_, *results) in enumerate(rows):
        assert fig.axes[3 * r].get_ylabel() == ""
        for ax, res in zip(fig.axes[3 * r + 1 : 3 * r + 3], results):
            (caption,) = tile_texts(ax)
            assert caption.get_text() == f"{res.target.label}\nP = {res.target.prob:.3f}"
            box, tile = caption.get_window_extent(), drawn(ax)
            assert 0 <= tile.y0 - box.y1 <= 0.06 * fig.dpi  # right under its tile
            assert abs((box.x0 + box.x1) / 2 - (tile.x0 + tile.x1) / 2) < 1


def test_long_class_and_model_names_stay_inside_their_column(figure_rows):
    image, base, cbam = figure_rows["wide"]
    meta = dataclasses.replace(cbam.meta, class_names=["a very long class name " * 4] * cbam.meta.num_classes)
    fig = paper_figure_image([(image, base, unfamiliar(dataclasses.replace(cbam, meta=meta)))])
    fig.draw_without_rendering()
    for ax in fig.axes:
        tile = drawn(ax)
        for text in tile_texts(ax):
            box = text.get_window_extent()
            assert tile.x0 - 0.05 * fig.dpi <= box.x0 and box.x1 <= tile.x1 + 0.05 * fig.dpi, text.get_text()


@pytest.mark.parametrize(
    ("shapes", "title"),
    [
        (["square"], None),
        (["wide"], "One wide image"),
        (["square", "wide", "tall", "square", "tall", "wide", "square", "square"], None),
        (["tall"] * 8, "Eight tall images"),
    ],
)
def test_rows_are_packed_with_small_even_gaps(figure_rows, shapes, title):
    fig = paper_figure_image([figure_rows[s] for s in shapes], title=title)
    fig.draw_without_rendering()
    dpi, page = fig.dpi, fig.bbox
    tiles = [drawn(fig.axes[3 * r]) for r in range(len(shapes))]
    for r in range(len(shapes) - 1):
        assert (tiles[r].y0 - tiles[r + 1].y1) / tiles[r].height < 0.5, r
    bottoms = [min(t.get_window_extent().y0 for ax in fig.axes[3 * r : 3 * r + 3] for t in tile_texts(ax))
               for r in range(len(shapes))]  # fmt: skip
    for r in range(len(shapes) - 1):
        gap = bottoms[r] - tiles[r + 1].y1  # white space between a row's captions and the next row's tiles
        assert 0 < gap <= 0.15 * dpi, (r, gap / dpi)
    assert 0 < bottoms[-1] - page.y0 <= 0.15 * dpi  # a small margin under the last row
    headings = [ax.title.get_window_extent() for ax in fig.axes[:3]]
    assert all(0 <= h.y0 - tiles[0].y1 <= 0.1 * dpi for h in headings)
    top = fig._suptitle.get_window_extent().y1 if title else max(h.y1 for h in headings)
    assert 0 < page.y1 - top <= 0.15 * dpi


def test_the_figure_refuses_an_opacity_that_hides_the_heatmaps(tiny_models, tmp_path):
    assert inspect.signature(export_figure).parameters["opacity"].default == 0.5
    studio = Studio(tiny_models, examples_dir=None)
    image = random_image(5, (64, 48))
    sources = [SourceImage(image, image_key(image), "noise.png")]
    for opacity in (0, 0.0, 0.04):
        with pytest.raises(CbamVizError, match=r"the figure's heatmap opacity must be from 0\.05 to 1"):
            export_figure(studio, sources, tmp_path, opacity=opacity)
    png, pdf = export_figure(studio, sources, tmp_path, opacity=MIN_FIGURE_OPACITY)
    with Image.open(png) as im:
        assert im.format == "PNG"
    assert pdf.read_bytes()[:5] == b"%PDF-"
