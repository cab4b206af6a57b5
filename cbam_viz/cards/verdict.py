"""The cards' one-line verdicts, read from the committed cards' JSON, for the app's method choice."""

from __future__ import annotations

import json
from pathlib import Path

CARDS_DIR = Path(__file__).resolve().parents[2] / "docs" / "cards"  # in the source checkout
CARDS_JSON = "cards.json"
VERDICTS = {
    "passes": "passes the model-randomisation check",
    "class-independent": "independent of the class",
    "fails": "fails the model-randomisation check",
    "inconclusive": "inconclusive in the model-randomisation check",
}


def verdicts(path: Path | None = None) -> dict[str, str]:
    """{method: one-line verdict} of every method the cards' JSON (default: docs/cards/cards.json) holds; empty
    where there is none (an installed package has no docs/)."""
    path = path or CARDS_DIR / CARDS_JSON
    if not path.is_file():
        return {}
    return {name: entry["verdict"] for name, entry in json.loads(path.read_text(encoding="utf-8"))["methods"].items()}


def verdict(method: str, path: Path | None = None) -> str:
    """The one-line verdict of `method`'s cards, e.g. "passes the model-randomisation check"; "" without a card."""
    return verdicts(path).get(method, "")
