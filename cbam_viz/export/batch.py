"""The export itself: settings and their fingerprint, the models, each (image, model)'s files and journal rows, and
the run over a shard of the inputs (`export`); the command line is `cbam_viz.export.cli`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cbam_viz.cam.engine import ModelResult, resolve_target, run_models
from cbam_viz.cam.render import overlay
from cbam_viz.errors import CbamVizError
from cbam_viz.export.discover import Item
from cbam_viz.export.merge import (
    COLUMNS,
    PROGRESS_JOURNAL,
    collect_rows,
    done_name,
    merge,
    part_name,
    to_jsonl,
)
from cbam_viz.io.checkpoints import MODEL_KEYS, LoadedModel, load_checkpoint
from cbam_viz.io.fileio import atomic_path, atomic_write_bytes, sha256_file
from cbam_viz.io.images import load_image
from cbam_viz.io.weights import BUNDLED, weights_folders

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
    """This run's append-only manifest journal: one write + fsync per finished image."""

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
    journal = Journal(out / (part_name(k, n) if n > 1 else PROGRESS_JOURNAL))
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
    _finish(out, items, summary)
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


def _finish(out: Path, items: Sequence[Item], summary: ExportSummary) -> None:
    """Write the manifest once every image is done: now without sharding, else when the last shard finishes."""
    k, n = summary.shard
    if n == 1:
        merged = merge(out, finish_progress=True)
    else:
        inputs = _inputs_fingerprint(items)
        atomic_write_bytes(out / done_name(k, n), json.dumps({"inputs": inputs}).encode())
        if not _all_shards_done(out, n, inputs):
            return
        merged = merge(out)
    summary.merged = True
    summary.warnings += merged.warnings


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
