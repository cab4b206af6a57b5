"""The bundled checkpoints, in one table: each one's file name, the sha256 of that file and what it is.

A bundled file is looked for, in this order, in the folder that $CBAM_VIZ_WEIGHTS names, then in the `weights/`
folder of the source checkout (which an installed package does not have: set the variable there).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import sha256_file

WEIGHTS_ENV = "CBAM_VIZ_WEIGHTS"
CHECKOUT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@dataclass(frozen=True)
class BundledWeights:
    """One bundled checkpoint: its file name, the sha256 of that file, and a one-line summary of the model."""

    file_name: str
    sha256: str
    summary: str

    def find(self, environ: Mapping[str, str] | None = None) -> Path | None:
        """The file in the first folder of `weights_folders` that holds it, or None."""
        for folder in weights_folders(environ):
            path = folder / self.file_name
            if path.is_file():
                return path
        return None

    def verify(self, path: Path) -> Path:
        """`path`, once its sha256 is the table's; CbamVizError names the file when it was altered or replaced."""
        digest = sha256_file(path)
        if digest != self.sha256:
            raise CbamVizError(
                f"{path} is not the bundled {self.file_name}: its sha256 is {digest[:16]}..., the table in "
                f"cbam_viz/io/weights.py has {self.sha256[:16]}...; restore the file, or pass its path as a checkpoint "
                "to load it as it is"
            )
        return path

    def path(self, environ: Mapping[str, str] | None = None) -> Path:
        """The file, as `find` finds it, checked by `verify`; CbamVizError says where it was looked for and what
        to do."""
        found = self.find(environ)
        if found is None:
            where = ", ".join(str(folder) for folder in weights_folders(environ))
            raise CbamVizError(
                f"checkpoint not found: the bundled {self.file_name} is in none of the weights folders ({where}); "
                f"set {WEIGHTS_ENV} to the folder that holds it, or pass the checkpoint's path"
            )
        return self.verify(found)


BUNDLED: dict[str, BundledWeights] = {
    "baseline": BundledWeights(
        "resnet50_baseline.safetensors",
        "ee34026fc7687cb9f3c45cfce3833baf60774eb5d4c1c7906ceeb4e45244c366",
        "ResNet50 trained on the 32-class stamp scenes at 224 px",
    ),
    "cbam": BundledWeights(
        "resnet50_cbam.safetensors",
        "0653509ea1fc678c682401c6bd277b42b91bc4f11718eec4399b6ff8ad8c810b",
        "CBAM-ResNet50 (the paper's design) trained on the 32-class stamp scenes at 224 px, same recipe",
    ),
}


def weights_folders(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where bundled files are looked for, in order: the folder $CBAM_VIZ_WEIGHTS names (when set), the checkout's."""
    environ = os.environ if environ is None else environ
    named = environ.get(WEIGHTS_ENV)
    return [*([Path(named).expanduser()] if named else []), CHECKOUT_WEIGHTS]
