"""The paper figure of the page's "Paper figure" tab and the /paper_figure API: PNG and PDF in private folders."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from cbam_viz.app.controls import TOP1, check_controls
from cbam_viz.app.studio import Studio
from cbam_viz.app.uploads import SourceImage
from cbam_viz.cam.engine import DEFAULT_LAYER, DEFAULT_METHOD
from cbam_viz.cam.figures import paper_figure
from cbam_viz.errors import CbamVizError

MAX_FIGURE_ROWS = 8
MIN_FIGURE_OPACITY = 0.05  # below this the heatmaps vanish and a row shows the same photo three times
FIGURE_STEM = "cbam_gradcam_figure"


class ExportFolder:
    """A private temporary folder for exported figures; each export gets its own subfolder, pruned after an hour."""

    def __init__(self, root: str | Path | None = None, keep_seconds: float = 3600.0) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="cbam-studio-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_seconds = keep_seconds

    def new(self) -> Path:
        """A new empty subfolder for one export; subfolders older than keep_seconds are deleted first."""
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > self.keep_seconds:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def cleanup(self) -> None:
        """Delete the folder and every export in it (when the server stops)."""
        shutil.rmtree(self.root, ignore_errors=True)


def export_figure(
    studio: Studio,
    sources: Sequence[SourceImage],
    folder: str | Path,
    *,
    target: object = TOP1,
    method: str = DEFAULT_METHOD,
    layer: str = DEFAULT_LAYER,
    opacity: float = 0.5,
    colormap: str = "jet",
    title: str | None = None,
) -> tuple[Path, Path]:
    """The paper figure (PNG and PDF) for these images with these controls and the figure's own heatmap opacity;
    returns (png, pdf)."""
    if not sources:
        raise CbamVizError("add an image first: upload one, pick an example, or add files for the figure")
    if len(sources) > MAX_FIGURE_ROWS:
        raise CbamVizError(f"the figure takes at most {MAX_FIGURE_ROWS} images; {len(sources)} were given")
    method, layer, opacity, colormap = check_controls(method, layer, opacity, colormap)
    if opacity < MIN_FIGURE_OPACITY:
        raise CbamVizError(
            f"the figure's heatmap opacity must be from {MIN_FIGURE_OPACITY} to 1, not {opacity:g}: below that the "
            "heatmaps are invisible and each row would show the same photo three times"
        )
    rows = []
    for source in sources:
        analysis = studio.analyse(source, target, method, layer)
        rows.append((analysis.image, analysis.results["baseline"], analysis.results["cbam"]))
    folder = Path(folder)
    png, pdf = folder / f"{FIGURE_STEM}.png", folder / f"{FIGURE_STEM}.pdf"
    paper_figure(rows, png, pdf, title=(title or "").strip() or None, opacity=opacity, colormap=colormap)
    return png, pdf
