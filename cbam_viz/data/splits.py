"""The fixed val and test splits of stamp scenes, written to disk by `data build` and read back as Scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from cbam_viz.data.pack import AssetPack, check_split
from cbam_viz.data.progress import progress_bar
from cbam_viz.data.scenes import SCENE_VERSION, Scene, compose_scene
from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import atomic_dir


def materialize_split(
    pack: AssetPack,
    out_dir: str | Path,
    split: str,
    per_class: int,
    size: int = 224,
    seed: int = 0,
    image_format: str = "jpg",
    progress: bool = False,
) -> Path:
    """Write scenes 0 .. per_class * n_classes - 1 of `split` (balanced classes) to out_dir/<split>/.

    Files: images/NNNNNN.jpg|png, masks/NNNNNN.png (1-bit target mask), distractors/NNNNNN.png (L: 0 = none,
    k = visible pixels of distractor k, only for scenes with distractors), index.jsonl (one JSON object per scene)
    and split.json (pack hash, class names, size, seed). Replaces an existing folder; byte-identical for the
    same pack, seed, size and format.
    """
    check_split(split)
    if image_format not in ("jpg", "png"):
        raise CbamVizError(f"image format must be jpg or png, not {image_format!r}")
    if per_class < 1:
        raise CbamVizError(f"scenes per class must be at least 1 for the {split} split")
    out = Path(out_dir) / split
    n = per_class * pack.n_classes
    with atomic_dir(out) as tmp:
        for sub in ("images", "masks", "distractors"):
            (tmp / sub).mkdir()
        lines = []
        for i in progress_bar(range(n), progress, desc=f"writing {split} scenes", unit="scene"):
            record = _write_scene(pack, compose_scene(pack, split, i, size, seed), i, tmp, image_format)
            lines.append(json.dumps(record, sort_keys=True))
        (tmp / "index.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = {"split": split, "size": size, "seed": seed, "count": n, "per_class": per_class,
                "image_format": image_format, "pack_hash": pack.pack_hash, "pack_version": pack.version,
                "scene_version": SCENE_VERSION,
                "class_names": pack.class_names, "distractor_names": pack.distractor_names}
        (tmp / "split.json").write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    return out


def _write_scene(pack: AssetPack, scene: Scene, i: int, folder: Path, image_format: str) -> dict:
    """Write scene `i`'s image, target mask and distractor label map into `folder`; return its index record."""
    stem = f"{i:06d}"
    img_rel = f"images/{stem}.{image_format}"
    if image_format == "jpg":
        scene.image.save(folder / img_rel, format="JPEG", quality=92)
    else:
        scene.image.save(folder / img_rel, format="PNG", compress_level=6)
    mask_rel = f"masks/{stem}.png"
    Image.fromarray(scene.mask).convert("1").save(folder / mask_rel, format="PNG", optimize=True)
    dist_rel = None
    if scene.distractor_masks:
        lab = np.zeros(scene.mask.shape, np.uint8)
        for k, m in enumerate(scene.distractor_masks):
            lab[m] = k + 1
        dist_rel = f"distractors/{stem}.png"
        Image.fromarray(lab, "L").save(folder / dist_rel, format="PNG", optimize=True)
    return {
        "index": i, "file": img_rel, "mask": mask_rel, "distractor_mask": dist_rel, "label": scene.label,
        "class_name": pack.class_names[scene.label], "bbox": list(scene.bbox) if scene.bbox else None,
        "distractors": len(scene.distractor_masks),
        "distractor_names": [d["name"] for d in scene.info["distractors"]],
        "target_visible_px": scene.info["target"]["visible_px"], "background": scene.info["background"],
    }


class MaterializedSplit(Dataset):
    """A split written by `data build` (DIR/<split>/index.jsonl + images/masks); item i is a Scene."""

    def __init__(self, root: str | Path, split: str):
        check_split(split)
        self.root = Path(root).expanduser() / split
        index = self.root / "index.jsonl"
        meta_path = self.root / "split.json"
        if not index.exists() or not meta_path.exists():
            raise CbamVizError(
                f"no materialized {split} split at {self.root} (index.jsonl or split.json missing): run "
                f"`python -m cbam_viz data build --out {Path(root)}`"
            )
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            self.records = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise CbamVizError(f"materialized {split} split at {self.root} is corrupt ({err}); run `data build` again") from None
        self.split = split
        self.class_names: list[str] = list(self.meta["class_names"])
        self.pack_hash: str = self.meta["pack_hash"]
        self.size: int = int(self.meta["size"])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r["label"] for r in self.records]

    def __getitem__(self, i: int) -> Scene:
        rec = self.records[i]
        try:
            with Image.open(self.root / rec["file"]) as f:
                image = f.convert("RGB")
            with Image.open(self.root / rec["mask"]) as f:
                mask = np.asarray(f.convert("L")) > 127
            dmasks: list[np.ndarray] = []
            if rec.get("distractor_mask"):
                with Image.open(self.root / rec["distractor_mask"]) as f:
                    lab = np.asarray(f.convert("L"))
                dmasks = [lab == k + 1 for k in range(rec["distractors"])]
        except OSError as err:
            raise CbamVizError(f"materialized {self.split} split at {self.root}: cannot read scene {i} ({err})") from None
        return Scene(image, mask, int(rec["label"]), dmasks, tuple(rec["bbox"]) if rec.get("bbox") else None, dict(rec))
