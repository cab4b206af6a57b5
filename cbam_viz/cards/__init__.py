"""Saliency cards (Boggust et al., 2023) for every CAM method the app offers, measured on each bundled model.

`python -m cbam_viz cards --data DIR` measures model dependence (cascading parameter randomisation, Adebayo et al.,
2018), faithfulness (ROAD, deletion, insertion), localization and cost, and writes one Markdown card per method and
model, a plot of the randomisation curves per model and a JSON of every figure; `verdict(method)` reads the
committed JSON's one-line verdicts for the app.
"""

from cbam_viz.cards.verdict import verdict, verdicts

__all__ = ["verdict", "verdicts"]
