"""Export manifests: the row schema, the append-only journals, and `merge` (manifest + journals -> manifest.jsonl/.csv).

Every export run appends its finished rows to a journal, one fsync'd write per image: a sharded run to its own
`manifest.shard-K-of-N.jsonl`, a run without sharding to the hidden `.manifest.progress.jsonl`, which it removes
once its rows are in the manifest. Journals are never rewritten, so a killed run leaves at most a torn last line,
which readers skip. `merge` reads the current manifest and every journal in the folder (newer files and later lines
win for the same image and model), then writes `manifest.jsonl` and `manifest.csv` atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cbam_viz.cli import standalone
from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import atomic_write_bytes

MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
PART_RE = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.jsonl$")
PROGRESS_JOURNAL = ".manifest.progress.jsonl"  # the journal of a run without sharding, until it finishes

# One row per (image, model). Every row has every column; columns that do not apply are null (empty in CSV).
COLUMNS: tuple[str, ...] = (
    "id",  # the image's output name (relative, sanitised, unique): outputs are <model>/<id>.png / .npy
    "image",  # the input path as found (undecodable bytes shown as \xNN)
    "model",  # model key: baseline | cbam
    "arch",  # resnet50 | resnet50-cbam
    "checkpoint_sha256",  # first 16 hex digits of the checkpoint file's SHA-256
    "method",
    "layer",
    *(f"top{k}_{part}" for k in range(1, 6) for part in ("index", "label", "prob")),
    "target_index",
    "target_label",
    "target_prob",
    "familiarity_score",  # the checkpoint's familiarity detector (empty where it has none); higher = less familiar
    "familiarity_threshold",
    "unfamiliar",  # whether the score is above the threshold: the image looks unlike the training data
    "familiarity_method",
    "image_width",  # the decoded input's size
    "image_height",
    "overlay",  # path relative to the output folder
    "overlay_width",
    "overlay_height",
    "raw",  # the raw CAM (.npy, float32 (T, h, w)) relative to the output folder, with --save-raw
    "error",  # why this image has no outputs (unreadable file, ...); null when it succeeded
    "settings",  # fingerprint of what decides the outputs (method, layer, target, size, look, checkpoint)
)


def part_name(shard: int, count: int) -> str:
    """The journal file name of shard `shard` of `count`."""
    return f"manifest.shard-{shard}-of-{count}.jsonl"


def done_name(shard: int, count: int) -> str:
    """The marker a shard writes when it has finished every image of its slice."""
    return f"manifest.shard-{shard}-of-{count}.done"


def row_key(row: dict) -> tuple[str, str]:
    return (row["id"], row["model"])


def read_journal(path: Path) -> list[dict]:
    """The complete rows of one journal, in order; torn or foreign lines (a killed writer) are skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("model"), str):
            rows.append({column: row.get(column) for column in COLUMNS})
    return rows


def journals(out_dir: Path) -> list[tuple[int, int, Path]]:
    """(shard, count, path) of every journal in `out_dir`, oldest first (by modification time, then name)."""
    found = []
    if out_dir.is_dir():
        for entry in os.scandir(out_dir):
            match = PART_RE.match(entry.name)
            if match and entry.is_file():
                found.append((entry.stat().st_mtime_ns, entry.name, int(match[1]), int(match[2]), Path(entry.path)))
    return [(k, n, path) for _, _, k, n, path in sorted(found)]


def row_sources(out_dir: Path) -> list[Path]:
    """The manifest and every journal in `out_dir`, oldest first (by modification time; the manifest first on ties,
    since it only repeats what the journals held when it was written)."""
    found = [(path.stat().st_mtime_ns, 1, path.name, path) for _, _, path in journals(out_dir)]
    for rank, name in ((0, MANIFEST_JSONL), (1, PROGRESS_JOURNAL)):
        path = out_dir / name
        if path.is_file():
            found.append((path.stat().st_mtime_ns, rank, name, path))
    return [path for *_, path in sorted(found)]


def collect_rows(out_dir: Path) -> dict[tuple[str, str], dict]:
    """The current row of each (image id, model) over the manifest and all journals: the newest file's last row wins."""
    rows: dict[tuple[str, str], dict] = {}
    for path in row_sources(out_dir):
        for row in read_journal(path):
            rows[row_key(row)] = row
    return rows


def sorted_rows(rows: Iterable[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["image"] or "", r["id"], r["model"]))


def to_jsonl(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def csv_cell(value: object) -> object:
    """A manifest value as a CSV cell; text that a spreadsheet would run as a formula gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: Iterable[dict]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    return buffer.getvalue().encode("utf-8")


@dataclass
class MergeSummary:
    rows: int = 0
    images: int = 0
    errors: int = 0
    journals: int = 0
    warnings: list[str] = field(default_factory=list)


def merge(out_dir: str | Path, finish_progress: bool = False) -> MergeSummary:
    """Join the manifest and every journal in `out_dir` into manifest.jsonl and manifest.csv (both written atomically).

    `finish_progress` is for a run without sharding that has done all its images: its journal (and one of shard 0
    of 1, which such a run covers) is in the manifest now and is removed; otherwise it stays, with a warning.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise CbamVizError(f"{out_dir} is not a folder")
    if not row_sources(out_dir):
        raise CbamVizError(f"{out_dir} holds neither manifest.jsonl nor export journals: nothing to merge")
    rows = sorted_rows(collect_rows(out_dir).values())
    atomic_write_bytes(out_dir / MANIFEST_JSONL, to_jsonl(rows))
    atomic_write_bytes(out_dir / MANIFEST_CSV, to_csv(rows))
    progress = out_dir / PROGRESS_JOURNAL
    summary = MergeSummary(
        rows=len(rows),
        images=len({r["id"] for r in rows}),
        errors=sum(1 for r in rows if r["error"]),
        journals=len(journals(out_dir)) + progress.is_file(),
    )
    if finish_progress:
        for done in (progress, out_dir / part_name(0, 1), out_dir / done_name(0, 1)):
            done.unlink(missing_ok=True)
    elif progress.is_file():
        summary.warnings.append("an export run without --shard has not finished: rerun it to export the rest")
    summary.warnings += _shard_warnings(out_dir)
    return summary


def _shard_warnings(out_dir: Path) -> list[str]:
    """Which shards of each sharded run have no journal yet, or have not finished their slice."""
    by_count: dict[int, set[int]] = {}
    for k, n, _ in journals(out_dir):
        by_count.setdefault(n, set()).add(k)
    warnings = []
    for n, present in sorted(by_count.items()):
        missing = sorted(set(range(n)) - present)
        unfinished = sorted(k for k in present if not (out_dir / done_name(k, n)).exists())
        if missing:
            warnings.append(f"no journal yet from shard(s) {', '.join(map(str, missing))} of {n}")
        if unfinished:
            warnings.append(f"shard(s) {', '.join(map(str, unfinished))} of {n} have not finished")
    return warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the --out folder of the export runs (its manifest and journals)")


def run(args: argparse.Namespace) -> int:
    summary = merge(args.dir)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"merged {summary.journals} journal(s): {summary.rows} rows for {summary.images} images"
        f" ({summary.errors} with errors) -> {Path(args.dir) / MANIFEST_CSV}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`merge` on its own, with the CLI's error handling (used by tests and `python -m cbam_viz.export.merge`)."""
    return standalone(sys.modules[__name__], argv, "python -m cbam_viz merge")


if __name__ == "__main__":
    sys.exit(main())
