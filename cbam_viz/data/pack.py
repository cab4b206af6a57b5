"""Asset packs: the versioned, hash-checked folder of objects, distractors and per-split backgrounds that
stamp scenes are composed from (written by `write_pack`, read by `AssetPack`)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import atomic_dir, sha256_file

PACK_FORMAT = "cbam_viz.stamp_pack"
PACK_VERSION = "1.1"
SPLITS = ("train", "val", "test")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

BACKGROUND_JPEG_QUALITY = 88


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slug(text: str) -> str:
    """A file-name-safe lower-case form of a name ("Red Anemone" -> "red-anemone")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def check_split(split: str) -> None:
    """Raise a clear error unless `split` is one of SPLITS."""
    if split not in SPLIT_IDS:
        raise CbamVizError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")

@dataclass
class PackObject:
    """One object of a pack being written: its name, image(s) and provenance."""

    name: str
    images: list[Image.Image]
    sources: list[str]
    description: str
    mirror_ok: bool = True
    package: str = ""


@dataclass
class PackBackground:
    """One background of a pack being written: its name, image and provenance."""

    name: str
    image: Image.Image
    source: str
    package: str = ""
    attribution: str = ""


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def manifest_bytes(manifest: dict) -> bytes:
    """The canonical serialization of a manifest; the pack hash is the sha256 of exactly these bytes."""
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_pack(
    out: Path,
    classes: list[PackObject],
    distractors: list[PackObject],
    backgrounds: dict[str, list[PackBackground]],
    attribution: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write an asset pack to `out` (replacing it) and return its pack hash.

    Layout: manifest.json, PACK_HASH, LICENSE-ATTRIBUTION.txt, objects/*.png (classes), distractors/*.png,
    backgrounds/<split>/*.jpg. The manifest lists every other file with its sha256.
    """
    out = Path(out)
    if not classes:
        raise CbamVizError("an asset pack needs at least one class")
    if not distractors:
        raise CbamVizError("an asset pack needs at least one distractor")
    for split in SPLITS:
        if not backgrounds.get(split):
            raise CbamVizError(f"an asset pack needs at least one {split} background")
    with atomic_dir(out) as tmp:
        return _write_pack_files(tmp, classes, distractors, backgrounds, attribution, extra)


def _write_pack_files(
    tmp: Path,
    classes: list[PackObject],
    distractors: list[PackObject],
    backgrounds: dict[str, list[PackBackground]],
    attribution: str,
    extra: dict[str, Any] | None,
) -> str:
    """Write the pack's files into the empty folder `tmp`; return the pack hash."""
    files: dict[str, str] = {}

    def put(rel: str, data: bytes) -> str:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = _sha256_bytes(data)
        return rel

    def objects_entry(objs: list[PackObject], folder: str, prefix: str) -> list[dict]:
        entries = []
        for i, obj in enumerate(objs):
            names = []
            for k, im in enumerate(obj.images):
                suffix = f"-{k + 1}" if len(obj.images) > 1 else ""
                names.append(put(f"{folder}/{prefix}{i:03d}-{slug(obj.name)}{suffix}.png", _png_bytes(im)))
            entries.append({"id": i, "name": obj.name, "files": names, "sources": obj.sources,
                            "description": obj.description, "mirror": obj.mirror_ok, "package": obj.package})
        return entries

    manifest: dict[str, Any] = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "classes": objects_entry(classes, "objects", "c"),
        "distractors": objects_entry(distractors, "distractors", "d"),
        "backgrounds": {},
    }
    for split in SPLITS:
        entries = []
        for bg in backgrounds[split]:
            rel = put(f"backgrounds/{split}/{slug(bg.name)}.jpg", _jpeg_bytes(bg.image, BACKGROUND_JPEG_QUALITY))
            entries.append({"name": bg.name, "file": rel, "source": bg.source, "package": bg.package,
                            "attribution": bg.attribution})
        manifest["backgrounds"][split] = entries
    put("LICENSE-ATTRIBUTION.txt", attribution.encode("utf-8"))
    manifest["files"] = dict(sorted(files.items()))
    manifest.update(extra or {})
    data = manifest_bytes(manifest)
    (tmp / "manifest.json").write_bytes(data)
    pack_hash = _sha256_bytes(data)
    (tmp / "PACK_HASH").write_text(pack_hash + "\n")
    return pack_hash


class AssetPack:
    """A loaded asset pack: manifest plus lazily decoded images, cached per process (not pickled)."""

    def __init__(self, root: Path, manifest: dict, pack_hash: str):
        self.root = Path(root)
        self.manifest = manifest
        self.pack_hash = pack_hash
        self.version = str(manifest.get("version", ""))
        self.class_names: list[str] = [c["name"] for c in manifest["classes"]]
        self.distractor_names: list[str] = [d["name"] for d in manifest["distractors"]]
        self.backgrounds: dict[str, list[str]] = {s: [b["file"] for b in manifest["backgrounds"][s]] for s in SPLITS}
        self._cache: dict[str, Image.Image] = {}

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> "AssetPack":
        """Load the pack at `root` (the pack folder, or a `data build --out` folder that holds `pack/`).

        With verify, every file's sha256 is checked against the manifest. Raises CbamVizError when the pack is
        missing, unreadable, of another format, or any file is missing or corrupt.
        """
        root = Path(root).expanduser()
        if not (root / "manifest.json").exists() and (root / "pack" / "manifest.json").exists():
            root = root / "pack"
        hint = "build one with `python -m cbam_viz data build --out DIR` and pass DIR or DIR/pack"
        mpath = root / "manifest.json"
        if not mpath.exists():
            raise CbamVizError(f"no asset pack at {root} (manifest.json missing): {hint}")
        data = mpath.read_bytes()
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CbamVizError(f"asset pack at {root} is corrupt: manifest.json is not valid JSON ({err}); {hint}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
            raise CbamVizError(f"{mpath} is not a cbam_viz stamp asset pack manifest; {hint}")
        major = str(manifest.get("version", "")).split(".")[0]
        if major != PACK_VERSION.split(".")[0]:
            raise CbamVizError(
                f"asset pack at {root} has format version {manifest.get('version')!r}, this code reads "
                f"{PACK_VERSION}: rebuild it with `python -m cbam_viz data build`"
            )
        try:
            for key in ("classes", "distractors", "files"):
                if not manifest[key]:
                    raise KeyError(key)
            for split in SPLITS:
                if not manifest["backgrounds"][split]:
                    raise KeyError(f"backgrounds.{split}")
        except (KeyError, TypeError) as err:
            raise CbamVizError(f"asset pack at {root} is corrupt: manifest has no {err}; {hint}") from None
        pack_hash = _sha256_bytes(data)
        hash_file = root / "PACK_HASH"
        if hash_file.exists() and hash_file.read_text().strip() != pack_hash:
            raise CbamVizError(f"asset pack at {root} is corrupt: PACK_HASH does not match manifest.json; {hint}")
        files: dict[str, str] = manifest["files"]
        needed = {f for c in manifest["classes"] + manifest["distractors"] for f in c["files"]}
        needed |= {b["file"] for s in SPLITS for b in manifest["backgrounds"][s]}
        for rel in sorted(needed | set(files)):
            path = root / rel
            if rel not in files:
                raise CbamVizError(f"asset pack at {root} is corrupt: {rel} is not listed in the manifest's files")
            if not path.is_file():
                raise CbamVizError(f"asset pack at {root} is incomplete: {rel} is missing; {hint}")
            if verify and sha256_file(path) != files[rel]:
                raise CbamVizError(f"asset pack at {root} is corrupt: {rel} does not match its sha256; {hint}")
        return cls(root, manifest, pack_hash)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = {}  # decoded images stay in the process that decoded them
        return state

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def _image(self, rel: str, mode: str) -> Image.Image:
        im = self._cache.get(rel)
        if im is None:
            try:
                with Image.open(self.root / rel) as f:
                    im = f.convert(mode)
            except OSError as err:
                raise CbamVizError(f"asset pack at {self.root}: cannot read {rel} ({err}); rebuild the pack") from None
            self._cache[rel] = im
        return im

    def object_images(self, label: int) -> list[Image.Image]:
        """Decoded RGBA image(s) of class `label`."""
        return [self._image(f, "RGBA") for f in self.manifest["classes"][label]["files"]]

    def distractor_images(self, i: int) -> list[Image.Image]:
        """Decoded RGBA image(s) of distractor `i`."""
        return [self._image(f, "RGBA") for f in self.manifest["distractors"][i]["files"]]

    def background_image(self, split: str, i: int) -> Image.Image:
        """Decoded RGB background `i` of `split`."""
        return self._image(self.backgrounds[split][i], "RGB")
