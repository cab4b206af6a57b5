"""The page's and the API's controls, checked as they arrive: target class, method, layer, opacity, colormap, box."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from cbam_viz.cam.engine import check_method_layer
from cbam_viz.cam.render import COLORMAPS, check_colormap
from cbam_viz.errors import CbamVizError, echo
from cbam_viz.io.images import MAX_PIXELS

TOP1 = "top1"


def normalise_target(target: object) -> str:
    """'top1' for each model's own top-1 (also for empty input), else the stripped class name or index."""
    text = "" if target is None else str(target).strip()
    if text.lower().replace("-", "").replace(" ", "") in ("", "top1"):
        return TOP1
    return text


def check_controls(method: object, layer: object, opacity: object = 0.5, colormap: object = "jet") -> tuple:
    """Validate the rendering controls as they arrive from a form or an API call; CbamVizError says what is wrong."""
    method, layer = check_method_layer(method, layer)
    try:
        opacity = float(0.5 if opacity is None else opacity)
    except (TypeError, ValueError):
        raise CbamVizError(f"opacity must be a number from 0 to 1, not {echo(opacity)}") from None
    if not 0.0 <= opacity <= 1.0:
        raise CbamVizError(f"opacity must be from 0 to 1, not {opacity}")
    return method, layer, opacity, check_colormap(str(colormap or "jet").strip(), COLORMAPS)


def check_flag(name: str, value: object) -> bool:
    """An on/off option as a form, a JSON body or a query gives it (true/false, 1/0, empty for off)."""
    if value in (None, "", False, 0) or str(value).strip().lower() in ("false", "0", "no", "off"):
        return False
    if value is True or value == 1 or str(value).strip().lower() in ("true", "1", "yes", "on"):
        return True
    raise CbamVizError(f"{name} must be true or false, not {echo(value)}")


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
MAX_BOX_COORDINATE = MAX_PIXELS  # no image the app accepts has a side longer than this many pixels


def parse_box(text: object) -> tuple[float, float, float, float] | None:
    """'x0, y0, x1, y1' (any separators, brackets, exponents allowed) in pixels -> a tuple; None for an empty box."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        raw = str(text).strip()
        if not raw:
            return None
        values = re.findall(_NUMBER, raw)
        leftover = re.sub(_NUMBER, "", raw)
        if len(values) != 4 or re.search(r"[^\s,;()\[\]]", leftover):
            raise CbamVizError(f"the box must be four numbers 'x0, y0, x1, y1' in pixels, not {echo(raw)}")
    if len(values) != 4:
        raise CbamVizError("the box must be four numbers x0, y0, x1, y1 in pixels")
    box = []
    for value in values:
        try:
            number = float(value)
        except OverflowError:  # an int past float's range
            number = math.inf
        except (TypeError, ValueError):
            raise CbamVizError("the box must be four numbers x0, y0, x1, y1 in pixels") from None
        if math.isnan(number):
            raise CbamVizError("the box must be four numbers x0, y0, x1, y1 in pixels, not NaN")
        if abs(number) > MAX_BOX_COORDINATE:
            raise CbamVizError(
                f"the box coordinate {echo(value)} is out of range: x0, y0, x1, y1 are pixels of the uploaded image"
            )
        box.append(number)
    return tuple(box)  # type: ignore[return-value]


def format_box(box: Sequence[float]) -> str:
    """A box as the box field shows it: 'x0, y0, x1, y1' with no trailing zeros."""
    return ", ".join(f"{v:g}" for v in box)
