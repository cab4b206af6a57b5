"""Batch export: Grad-CAM overlays (and raw CAMs) of both models for files, folders or globs, with a manifest.

    python -m cbam_viz export photos/ 'more/**/*.jpg' --out cams/ [--shard K/N] [--save-raw] ...

Outputs go to `<out>/<model>/<id>.png` (and `.npy` with --save-raw), where `<id>` is the image's path relative
to the common root of the inputs with every folder and file name sanitised (so nothing can leave --out), and a
short hash of the original relative path appended whenever sanitising changed a name or two names would
collide (same stem, case-insensitive file systems). Every file is written atomically; each finished image's
rows are appended, fsync'd, to this shard's journal `manifest.shard-K-of-N.jsonl`; `manifest.jsonl` and
`manifest.csv` are (re)generated from all journals at the end (see `cbam_viz.export.merge`). A rerun skips every
(image, model) whose row says it succeeded with the same settings and whose files exist, so a killed run
resumes where it stopped; unreadable images become error rows and are retried on the next run.

`--shard K/N` (or RANK/WORLD_SIZE under torchrun) exports images K, K+N, K+2N, ... of the sorted input list,
so a Slurm array, a Kubernetes indexed job or torchrun ranks each run the same command into one --out.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cbam_viz.cam.engine import LAYERS, METHODS, ModelResult, check_method_layer, resolve_target, run_models
from cbam_viz.cam.render import COLORMAPS, check_colormap, overlay
from cbam_viz.cli import standalone
from cbam_viz.devices import resolve_device
from cbam_viz.errors import CbamVizError
from cbam_viz.export.merge import (
    COLUMNS,
    collect_rows,
    done_name,
    merge,
    part_name,
    to_jsonl,
)
from cbam_viz.io.checkpoints import MODEL_KEYS, LoadedModel, load_checkpoint
from cbam_viz.io.fileio import atomic_path, atomic_write_bytes, is_within, sha256_file
from cbam_viz.io.images import load_image
from cbam_viz.io.weights import BUNDLED, WEIGHTS_ENV, weights_folders

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".mpo"}
)
DEFAULT_MAX_SIDE = 1024
# Overlays are encoded by OpenCV with one fixed PNG row filter (SUB) and Huffman-only zlib: several times faster
# than adaptive filters or PIL's default level at about the same size, since the PNG is the export's largest cost
# after the forwards.
PNG_PARAMS = (
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
)
_SAFE_CHARS = re.compile(r"[^\w\-. ]")  # \w: Unicode letters, digits and '_'
_MAX_COMPONENT_BYTES = 120
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})


# ---------------------------------------------------------------------------------------------- inputs and names


@dataclass
class Item:
    """One input image: where it is, how the manifest shows it, and its output name."""

    path: str  # what we open (undecodable bytes kept as surrogate escapes, as os.listdir returns them)
    image: str  # the path as shown in the manifest (undecodable bytes as \xNN)
    rel: bytes  # path relative to the common input root, '/'-separated, raw bytes
    id: str = ""  # sanitised, unique output name without extension ("sub/cat", "odd_name-1a2b3c4d")


def _show(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _glob_root(pattern: str) -> str:
    """The folder a glob pattern is anchored at: its components up to the first one with a wildcard."""
    parts = pattern.split(os.sep)
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = os.sep.join(fixed)
    if not root:
        return os.sep if pattern.startswith(os.sep) else "."
    return root


def _walk(top: str, exclude: str) -> Iterator[str]:
    """Image files under `top` (recursively, sorted, symlinked folders not followed), never inside `exclude`."""
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if os.path.abspath(os.path.join(folder, d)) != exclude)
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                yield os.path.join(folder, name)


def discover(inputs: Sequence[str], exclude: str | os.PathLike | None = None) -> list[Item]:
    """Expand files, folders (recursive) and globs (expanded here, so quoted globs work) into sorted Items.

    A literal path wins over a glob reading of the same string. Folders and glob-matched folders contribute
    files with an image extension; files named explicitly or matched by a glob are taken as they are (and
    become error rows if they are not images). The --out folder (`exclude`) is never scanned.
    """
    exclude_abs = os.path.abspath(exclude) if exclude is not None else "\0"
    found: list[tuple[str, str]] = []  # (path, root)
    roots: list[str] = []
    for arg in inputs:
        arg = os.fspath(arg)
        if os.path.isdir(arg):
            roots.append(arg)
            found += [(p, arg) for p in _walk(arg, exclude_abs)]
        elif os.path.lexists(arg):
            roots.append(os.path.dirname(arg) or ".")
            found.append((arg, roots[-1]))
        elif glob.has_magic(arg):
            root = _glob_root(arg)
            matches = sorted(glob.glob(arg, recursive=True))
            matches = [m for m in matches if not is_within(os.path.abspath(m), exclude_abs)]
            if not matches:
                raise CbamVizError(f"no files match {arg!r}")
            roots.append(root)
            for match in matches:
                if os.path.isdir(match):
                    found += [(p, root) for p in _walk(match, exclude_abs)]
                else:
                    found.append((match, root))
        else:
            raise CbamVizError(f"input not found: {_show(arg)}")
    if not found:
        raise CbamVizError(f"no images found in {', '.join(_show(a) for a in inputs)}")
    common = os.path.commonpath([os.path.abspath(r) for r in roots])
    items: dict[str, Item] = {}
    for path, _ in found:
        absolute = os.path.abspath(path)
        if absolute in items:
            continue
        rel = os.path.relpath(absolute, common)
        items[absolute] = Item(path=path, image=_show(path), rel=os.fsencode(rel).replace(os.sep.encode(), b"/"))
    ordered = sorted(items.values(), key=lambda it: it.rel)
    assign_ids(ordered)
    return ordered


def _clean(component: bytes) -> tuple[str, bool]:
    """A safe file or folder name for one raw path component, and whether it differs from the original."""
    try:
        text = component.decode("utf-8")
        altered = False
    except UnicodeDecodeError:
        text, altered = component.decode("utf-8", "replace"), True
    cleaned = _SAFE_CHARS.sub("_", unicodedata.normalize("NFC", text))
    cleaned = re.sub(r"^[. ]+", lambda m: "_" * len(m[0]), cleaned)  # no '.', '..', hidden or blank-led names
    cleaned = re.sub(r"[. ]+$", lambda m: "_" * len(m[0]), cleaned)
    if cleaned.split(".")[0].lower() in _RESERVED:
        cleaned = "_" + cleaned
    while len(cleaned.encode("utf-8")) > _MAX_COMPONENT_BYTES:
        cleaned = cleaned[:-1]
    cleaned = cleaned or "_"
    return cleaned, altered or cleaned != text


def _short_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:8]


def assign_ids(items: Sequence[Item]) -> None:
    """Give every item a unique, safe output id; a hash of its raw relative path marks altered or clashing names."""
    hashed = []
    for item in items:
        *folders, name = item.rel.split(b"/")
        stem = name.rsplit(b".", 1)[0] if b"." in name[1:] else name
        parts = [_clean(c) for c in (*folders, stem)]
        item.id = "/".join(p for p, _ in parts)
        if any(altered for _, altered in parts):
            item.id += "-" + _short_hash(item.rel)
            hashed.append(True)
        else:
            hashed.append(False)
    while True:  # clashes: same id up to case, or a file output named like a folder of another id
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.id.casefold(), []).append(index)
        folders = {
            "/".join(item.id.casefold().split("/")[:depth])
            for item in items
            for depth in range(1, item.id.count("/") + 1)
        }
        clashes = [i for group in groups.values() if len(group) > 1 for i in group if not hashed[i]]
        clashes += [
            i
            for i, item in enumerate(items)
            if not hashed[i] and any(item.id.casefold() + ext in folders for ext in (".png", ".npy"))
        ]
        if not clashes:
            return
        for index in set(clashes):
            items[index].id += "-" + _short_hash(items[index].rel)
            hashed[index] = True


# ---------------------------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Validated export options."""

    method: str = "gradcam"
    layer: str = "layer4"
    target: str = "top1"
    max_side: int = DEFAULT_MAX_SIDE
    opacity: float = 0.5
    colormap: str = "jet"
    save_raw: bool = False
    batch_size: int = 16
    workers: int = 2

    def fingerprint(self, model_key: str, checkpoint_sha: str) -> str:
        """What decides one model's output files: a rerun with another fingerprint redoes the image."""
        decisive = {
            "v": 1,
            "method": self.method,
            "layer": self.layer,
            "target": self.target.strip().lower(),
            "max_side": self.max_side,
            "opacity": round(self.opacity, 6),
            "colormap": self.colormap,
            "model": model_key,
            "checkpoint": checkpoint_sha,
        }
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:12]


def parse_shard(text: str | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """`K/N` -> (K, N); without it, torchrun's RANK/WORLD_SIZE; else (0, 1)."""
    environ = os.environ if environ is None else environ
    if text is None:
        if "WORLD_SIZE" in environ and "RANK" in environ:
            text, source = f"{environ['RANK']}/{environ['WORLD_SIZE']}", "RANK/WORLD_SIZE"
        else:
            return 0, 1
    else:
        source = "--shard"
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise CbamVizError(f"{source} must look like K/N (for example 0/4), not {text!r}")
    k, n = int(match[1]), int(match[2])
    if n < 1 or not 0 <= k < n:
        raise CbamVizError(f"{source} {k}/{n}: K must be between 0 and N-1, and N at least 1")
    return k, n


def parse_models(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODEL_KEYS]
    if not keys or unknown:
        raise CbamVizError(f"--models takes a comma-separated subset of {','.join(MODEL_KEYS)}, not {text!r}")
    return list(dict.fromkeys(keys))


@dataclass
class ExportModel:
    key: str
    loaded: LoadedModel
    sha: str
    settings: str  # fingerprint


def load_models(keys: Sequence[str], paths: dict[str, str | None], device: torch.device, settings: Settings):
    """Load the selected models and check the target against each of them."""
    models: dict[str, ExportModel] = {}
    for key in keys:
        path = paths.get(key) or BUNDLED[key].find()
        if path is None or not Path(path).is_file():
            missing = path or f"{BUNDLED[key].file_name} is in none of {', '.join(map(str, weights_folders()))}"
            raise CbamVizError(
                f"checkpoint for the {key} model not found: {missing} (pass --{key} PATH, or --models to export fewer)"
            )
        if not paths.get(key):
            BUNDLED[key].verify(Path(path))
        loaded = load_checkpoint(path, device)
        targets = resolve_target(settings.target, loaded.meta, np.zeros(loaded.meta.num_classes, dtype=np.float32))
        if len(targets) != 1:
            raise CbamVizError(f"--target {settings.target!r}: export explains one class; use top1, a name or an index")
        sha = sha256_file(path)[:16]
        models[key] = ExportModel(key, loaded, sha, settings.fingerprint(key, sha))
    return models


# ---------------------------------------------------------------------------------------------- rows and files


def _row(item: Item, model: ExportModel, settings: Settings, **values) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(
        id=item.id,
        image=item.image,
        model=model.key,
        arch=model.loaded.meta.arch,
        checkpoint_sha256=model.sha,
        method=settings.method,
        layer=settings.layer,
        settings=model.settings,
    )
    row.update(values)
    return row


def output_paths(item: Item, key: str) -> tuple[str, str]:
    """(overlay, raw) paths relative to --out."""
    return f"{key}/{item.id}.png", f"{key}/{item.id}.npy"


def is_done(row: dict | None, model: ExportModel, out: Path, save_raw: bool) -> bool:
    """A row counts as finished if it succeeded with these settings and its files are there."""
    if not row or row.get("error") or row.get("settings") != model.settings or not row.get("overlay"):
        return False
    if not (out / row["overlay"]).is_file():
        return False
    return not save_raw or bool(row.get("raw")) and (out / row["raw"]).is_file()


def _success_row(item: Item, model: ExportModel, settings: Settings, image: Image.Image, res: ModelResult, shown):
    values = {}
    for k, pred in enumerate(res.top5, start=1):
        values.update({f"top{k}_index": pred.index, f"top{k}_label": pred.label, f"top{k}_prob": round(pred.prob, 6)})
    target = res.target
    overlay_rel, raw_rel = output_paths(item, model.key)
    values.update(
        target_index=target.index,
        target_label=target.label,
        target_prob=round(target.prob, 6),
        **_familiarity_columns(res),
        image_width=image.width,
        image_height=image.height,
        overlay=overlay_rel,
        overlay_width=shown.width,
        overlay_height=shown.height,
        raw=raw_rel if settings.save_raw else None,
        error=None,
    )
    return _row(item, model, settings, **values)


def _familiarity_columns(res: ModelResult) -> dict:
    fam = res.familiarity
    if fam is None:
        return {}
    return {"familiarity_score": round(fam.score, 6), "familiarity_threshold": round(fam.threshold, 6),
            "unfamiliar": fam.unfamiliar, "familiarity_method": fam.method}


def write_outputs(out: Path, item: Item, key: str, shown: Image.Image, res: ModelResult, settings: Settings) -> None:
    """The overlay PNG (and raw CAM .npy), each written to a temp file, fsync'd and renamed into place."""
    overlay_rel, raw_rel = output_paths(item, key)
    picture = overlay(shown, res.heatmaps[0], settings.opacity, settings.colormap)
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.asarray(picture), cv2.COLOR_RGB2BGR), PNG_PARAMS)
    if not ok:
        raise CbamVizError(f"could not encode the overlay of {item.image} as PNG")
    with atomic_path(out / overlay_rel) as tmp, open(tmp, "wb") as f:
        f.write(png.tobytes())
    if settings.save_raw:
        with atomic_path(out / raw_rel) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(res.cams, dtype=np.float32))


class Journal:
    """This shard's append-only manifest part: one write + fsync per finished image."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "ab")  # noqa: SIM115 - closed in close()
        if self._file.tell() > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a killed writer left a torn line: start ours on a fresh one
                    self._file.write(b"\n")
        self._lock = threading.Lock()

    def append(self, rows: Sequence[dict]) -> None:
        data = to_jsonl(rows)
        with self._lock:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def remove_stale_parts(out: Path, items: Sequence[Item], keys: Sequence[str]) -> int:
    """Delete temp files a killed run left for these items' outputs (never another shard's: its items differ)."""
    wanted: dict[Path, set[str]] = {}
    for item in items:
        for key in keys:
            for rel in output_paths(item, key):
                target = out / rel
                wanted.setdefault(target.parent, set()).add(target.name)
    removed = 0
    for folder, names in wanted.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(".") and entry.endswith(".part"):
                base = entry[1:].rsplit(".", 2)[0]  # ".<name>.<random>.part"
                if base in names:
                    (folder / entry).unlink(missing_ok=True)
                    removed += 1
    return removed


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class ExportSummary:
    total: int = 0  # images in this shard
    skipped: int = 0  # already complete before this run
    exported: int = 0  # images processed now (rows written)
    errors: int = 0  # images that could not be read this run
    shard: tuple[int, int] = (0, 1)
    merged: bool = False
    warnings: list[str] = field(default_factory=list)


def _decode(item: Item) -> Image.Image | CbamVizError:
    try:
        return load_image(item.path)
    except CbamVizError as err:
        return err


def export(
    items: Sequence[Item],
    out: str | os.PathLike,
    models: dict[str, ExportModel],
    settings: Settings,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    background_writes: bool = True,
) -> ExportSummary:
    """Export this shard's slice of `items` (all inputs, from `discover`) into `out`; see the module docstring."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CbamVizError(f"--out {out} exists and is not a folder")
    k, n = shard
    mine = items[k::n]
    summary = ExportSummary(total=len(mine), shard=shard)
    previous = collect_rows(out)
    pending: list[tuple[Item, list[ExportModel]]] = []
    for item in mine:
        todo = [m for m in models.values() if not is_done(previous.get((item.id, m.key)), m, out, settings.save_raw)]
        if todo:
            pending.append((item, todo))
    summary.skipped = len(mine) - len(pending)
    remove_stale_parts(out, [item for item, _ in pending], list(models))
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / part_name(k, n))
    bar = tqdm(
        total=len(mine),
        initial=summary.skipped,
        unit="img",
        desc=f"export {k}/{n}" if n > 1 else "export",
        disable=not progress,
        dynamic_ncols=True,
    )
    batches = [pending[i : i + settings.batch_size] for i in range(0, len(pending), settings.batch_size)]
    writer = ThreadPoolExecutor(1, thread_name_prefix="export-write") if background_writes else None
    written: Future | None = None
    try:
        with ThreadPoolExecutor(max(1, settings.workers), thread_name_prefix="export-decode") as decoder:
            upcoming = [decoder.submit(_decode, item) for item, _ in batches[0]] if batches else []
            for index, batch in enumerate(batches):
                decoded = [f.result() for f in upcoming]
                if index + 1 < len(batches):  # decode the next batch while this one runs
                    upcoming = [decoder.submit(_decode, item) for item, _ in batches[index + 1]]
                results = _compute(batch, decoded, settings)
                if written is not None:
                    written.result()  # at most one batch of outputs in flight; re-raises write errors
                job = (out, batch, decoded, results, settings, journal, bar, summary)
                written = writer.submit(_write_batch, *job) if writer else None
                if writer is None:
                    _write_batch(*job)
            if written is not None:
                written.result()
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
        journal.close()
        bar.close()
    inputs = _inputs_fingerprint(items)
    atomic_write_bytes(out / done_name(k, n), json.dumps({"inputs": inputs}).encode())
    if n == 1 or _all_shards_done(out, n, inputs):
        merged = merge(out)
        summary.merged = True
        summary.warnings += merged.warnings
    return summary


def _compute(batch, decoded, settings: Settings) -> list[dict[str, tuple[Image.Image, ModelResult]]]:
    """Run each model once on the images of the batch that need it: per image, key -> (shown image, result)."""
    results: list[dict[str, tuple[Image.Image, ModelResult]]] = [{} for _ in batch]
    keys = {m.key: m for _, todo in batch for m in todo}
    for key, model in keys.items():
        chosen = [
            i
            for i, ((_, todo), image) in enumerate(zip(batch, decoded))
            if isinstance(image, Image.Image) and any(m.key == key for m in todo)
        ]
        if not chosen:
            continue
        comparisons = run_models(
            [decoded[i] for i in chosen],
            {key: model.loaded},
            target=settings.target,
            method=settings.method,
            layer=settings.layer,
            max_side=settings.max_side,
        )
        for i, comparison in zip(chosen, comparisons):
            results[i][key] = (comparison.image, comparison.results[key])
    return results


def _write_batch(out, batch, decoded, results, settings, journal: Journal, bar, summary: ExportSummary) -> None:
    for (item, todo), image, per_model in zip(batch, decoded, results):
        rows = []
        for model in todo:
            if isinstance(image, Image.Image):
                shown, res = per_model[model.key]
                write_outputs(out, item, model.key, shown, res, settings)
                rows.append(_success_row(item, model, settings, image, res, shown))
            else:
                rows.append(_row(item, model, settings, error=str(image)))
        journal.append(rows)
        summary.exported += 1
        summary.errors += not isinstance(image, Image.Image)
        bar.update(1)


def _inputs_fingerprint(items: Sequence[Item]) -> str:
    return hashlib.sha256(b"\0".join(item.rel for item in items)).hexdigest()[:16]


def _all_shards_done(out: Path, n: int, fingerprint: str) -> bool:
    for k in range(n):
        try:
            marker = json.loads((out / done_name(k, n)).read_text())
        except (OSError, ValueError):
            return False
        if marker.get("inputs") != fingerprint:
            return False
    return True


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reruns resume)")
    parser.add_argument("--method", default="gradcam", help=f"CAM method: {', '.join(METHODS)} (default gradcam)")
    parser.add_argument("--layer", default="layer4", help=f"layer to explain: {', '.join(LAYERS)} (default layer4)")
    parser.add_argument("--target", default="top1", help="class to explain: top1, a class name or an index")
    parser.add_argument("--models", default=",".join(MODEL_KEYS), help="which models: baseline,cbam (default both)")
    for key in MODEL_KEYS:
        bundled = f"the bundled {BUNDLED[key].file_name}, looked for in ${WEIGHTS_ENV}, then the checkout's weights/"
        parser.add_argument(f"--{key}", metavar="PATH", help=f"{key} checkpoint (default: {bundled})")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--size", type=int, help=f"overlays' max side (default: the image's, at most {DEFAULT_MAX_SIDE})"
    )
    parser.add_argument("--opacity", type=float, default=0.5, help="heatmap opacity 0..1 (default 0.5)")
    parser.add_argument("--colormap", default="jet", help=f"matplotlib colormap, e.g. {', '.join(COLORMAPS)}")
    parser.add_argument("--save-raw", action="store_true", help="also save each raw CAM as .npy (T, h, w) float32")
    parser.add_argument(
        "--shard", metavar="K/N", help="export only slice K of N (default: RANK/WORLD_SIZE under torchrun, else all)"
    )
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> Settings:
    method, layer = check_method_layer(args.method, args.layer)
    if args.batch_size < 1:
        raise CbamVizError("--batch-size must be at least 1")
    if args.workers < 1:
        raise CbamVizError("--workers must be at least 1")
    if args.size is not None and args.size < 1:
        raise CbamVizError("--size must be a positive number of pixels")
    if not 0.0 <= args.opacity <= 1.0:
        raise CbamVizError("--opacity must be between 0 and 1")
    check_colormap(args.colormap)
    return Settings(
        method=method,
        layer=layer,
        target=str(args.target),
        max_side=args.size or DEFAULT_MAX_SIDE,
        opacity=args.opacity,
        colormap=args.colormap,
        save_raw=args.save_raw,
        batch_size=args.batch_size,
        workers=args.workers,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    shard = parse_shard(args.shard)
    keys = parse_models(args.models)
    device = resolve_device(args.device)
    items = discover(args.inputs, exclude=args.out)  # bad inputs fail before the models load
    models = load_models(keys, {"baseline": args.baseline, "cbam": args.cbam}, device, settings)
    try:
        summary = export(items, args.out, models, settings, shard, progress=not args.no_progress)
    except OSError as err:  # disk full, read-only or vanished output folder: finished work stays, none half-written
        reason = err.strerror or str(err)
        raise CbamVizError(
            f"cannot write the export to {args.out}: {reason}. Images already finished are complete and kept; "
            "nothing half-written is left. Free space or fix the folder, then rerun the same command to continue."
        ) from None
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(
        f"{summary.exported - summary.errors} image(s) exported{where}, {summary.skipped} already done, "
        f"{summary.errors} unreadable (error rows in the manifest; retried on the next run) -> {Path(args.out)}"
    )
    if shard[1] > 1 and not summary.merged:
        print(f"when every shard has finished: python -m cbam_viz merge {Path(args.out)}")
    if summary.exported and summary.errors == summary.exported and not summary.skipped:
        print(
            f"error: none of the {summary.errors} input image(s) could be read; the manifest's error column says why",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`export` on its own, with the CLI's error handling (tests; `python -m cbam_viz.export.batch`)."""
    return standalone(sys.modules[__name__], argv, "python -m cbam_viz export")


if __name__ == "__main__":
    sys.exit(main())
