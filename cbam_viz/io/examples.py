"""The bundled example scenes: the checkout's examples/ folder, each NAME.jpg/png with an optional object mask."""

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
MASK_SUFFIX = ".mask.png"  # NAME.mask.png beside NAME.png: white = object
