"""Batch export: outputs, manifest, skipped files, resume, kill -9, shards + merge, safe names, bad arguments."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import random_image
from PIL import Image

from cbam_viz.cam.engine import compare, fit_within
from cbam_viz.cli import COMMANDS
from cbam_viz.export import batch as export
from cbam_viz.export import cli as export_cli
from cbam_viz.export import merge as export_merge
from cbam_viz.export.discover import Item, assign_ids
from cbam_viz.io.images import load_image

ROOT = Path(__file__).resolve().parent.parent
# The real dispatcher once every subcommand module exists; until then the export/merge modules' own entry points,
# which parse the same arguments and handle errors exactly as cli.main does.
CLI_READY = all(importlib.util.find_spec(module) for module, _ in COMMANDS.values())


_LOADED: dict = {}


@pytest.fixture(autouse=True)
def quick_models(monkeypatch):
    """One torch thread (tiny models gain nothing from more on a shared 2-core box) and each checkpoint loaded once."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    real = export.load_checkpoint

    def cached(path, device="cpu", arch=None):
        key = (os.fspath(path), str(device))
        if key not in _LOADED:
            _LOADED[key] = real(path, device, arch)
        return _LOADED[key]

    monkeypatch.setattr(export, "load_checkpoint", cached)
    yield
    torch.set_num_threads(threads)


def run_export(*argv: str | os.PathLike) -> int:
    args = [os.fspath(a) for a in argv]
    if CLI_READY:
        from cbam_viz.cli import main

        return main(["export", *args])
    return export_cli.main(args)


def run_merge(folder: Path) -> int:
    if CLI_READY:
        from cbam_viz.cli import main

        return main(["merge", str(folder)])
    return export_merge.main([str(folder)])


def weights(ckpts) -> list[str]:
    return ["--baseline", str(ckpts["baseline"]), "--cbam", str(ckpts["cbam"]), "--no-progress"]


def make_images(folder: Path, names: list[str], size=(72, 56)) -> list[Path]:
    paths = []
    for seed, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        random_image(seed, (size[0] + 8 * seed, size[1])).save(path)
        paths.append(path)
    return paths


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()]


def journal_rows(out: Path) -> list[dict]:
    rows = export_merge.read_journal(out / export_merge.PROGRESS_JOURNAL)
    for _, _, path in export_merge.journals(out):
        rows += export_merge.read_journal(path)
    return rows


def all_files(out: Path) -> set[str]:
    """Every file under `out`, hidden ones included, relative and '/'-separated."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def record_appends(monkeypatch) -> list[tuple[str, str]]:
    """(id, model) of every row the export journals from now on, in order."""
    appended: list[tuple[str, str]] = []
    real = export.Journal.append

    def append(self, rows):
        real(self, rows)
        appended.extend((row["id"], row["model"]) for row in rows)

    monkeypatch.setattr(export.Journal, "append", append)
    return appended


def output_files(out: Path) -> dict[str, Path]:
    return {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file() and p.suffix in (".png", ".npy")}


def mtimes(out: Path) -> dict[str, int]:
    return {rel: p.stat().st_mtime_ns for rel, p in output_files(out).items()}


def test_export_end_to_end(tmp_path, tiny_checkpoints, tiny_models, capsys):
    src = tmp_path / "in"
    good = make_images(src, ["cats/1.jpg", "cats/2.png", "dogs/3.jpg"])
    (src / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (src / "notes.txt").write_text("not an image, skipped by the folder scan")
    out = tmp_path / "out"

    assert run_export(src, "--out", out, "--size", "64", "--save-raw", *weights(tiny_checkpoints)) == 0
    printed = capsys.readouterr().out
    assert "1 unreadable" in printed and "1 file(s) skipped (not images: notes.txt)" in printed

    rows = manifest(out)
    assert [(r["id"], r["model"]) for r in rows] == [
        (i, m) for i in ("cats/1", "cats/2", "dogs/3", "dogs/broken") for m in ("baseline", "cbam")
    ]
    csv_lines = (out / "manifest.csv").read_text("utf-8").splitlines()
    assert csv_lines[0].split(",") == list(export_merge.COLUMNS) and len(csv_lines) == len(rows) + 1
    for row in rows:
        assert set(row) == set(export_merge.COLUMNS)
        if row["id"] == "dogs/broken":
            assert row["error"].startswith("broken.jpg is not an image file") and row["overlay"] is None
            continue
        path = src / (row["id"] + (".png" if row["id"] == "cats/2" else ".jpg"))
        image = load_image(path)
        shown = fit_within(image, 64)
        assert row["error"] is None and row["image"] == str(path)
        assert (row["image_width"], row["image_height"]) == image.size
        assert (row["overlay_width"], row["overlay_height"]) == shown.size == (64, round(56 * 64 / image.width))
        assert row["overlay"] == f"{row['model']}/{row['id']}.png" and row["method"] == "gradcam"
        with Image.open(out / row["overlay"]) as png:
            assert png.format == "PNG" and png.size == shown.size and png.mode == "RGB"
            png.load()
        raw = np.load(out / row["raw"])
        assert raw.dtype == np.float32 and raw.shape == (1, 2, 2)  # 64 px input -> 2x2 layer4

        result = compare(image, tiny_models, max_side=64).results[row["model"]]
        assert row["arch"] == result.meta.arch
        assert [row[f"top{k}_label"] for k in range(1, 6)] == [p.label for p in result.top5]
        assert [row[f"top{k}_prob"] for k in range(1, 6)] == pytest.approx([p.prob for p in result.top5], abs=1e-5)
        assert (row["target_index"], row["target_label"]) == (result.top5[0].index, result.top5[0].label)
        assert np.allclose(raw, result.cams, atol=1e-4 * max(1.0, float(result.cams.max())))
    assert len(good) == 3
    assert not list(out.rglob("*.part"))


def test_resume_skips_finished_work_and_redoes_only_missing_outputs(tmp_path, tiny_checkpoints, capsys, monkeypatch):
    src = tmp_path / "in"
    make_images(src, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    out = tmp_path / "out"
    argv = [src, "--out", out, "--batch-size", "3", *weights(tiny_checkpoints)]
    appended = record_appends(monkeypatch)
    assert run_export(*argv) == 0
    before, rows_before = mtimes(out), manifest(out)
    assert len(before) == 8 and len(appended) == len(rows_before) == 8

    appended.clear()
    assert run_export(*argv) == 0  # nothing to do: the finished run's manifest says so
    assert "0 image(s) exported, 4 already done" in capsys.readouterr().out
    assert mtimes(out) == before and appended == [] and manifest(out) == rows_before

    (out / "cbam" / "c.png").unlink()
    assert run_export(*argv) == 0
    after = mtimes(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"cbam/c.png"}
    assert appended == [("c", "cbam")]
    assert len(manifest(out)) == 8

    # other settings make every row stale: a different colormap redoes everything
    assert run_export(*argv, "--colormap", "viridis") == 0
    assert "4 image(s) exported, 0 already done" in capsys.readouterr().out


def test_shards_together_equal_a_single_run(tmp_path, tiny_checkpoints):
    src = tmp_path / "in"
    make_images(src, ["x/1.jpg", "x/2.jpg", "y/1.jpg", "y/3.jpg", "z.png"])
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    # Batch size 1 on both sides: oneDNN's convolutions round differently for different batch compositions.
    common = ["--batch-size", "1", "--save-raw", *weights(tiny_checkpoints)]
    assert run_export(src, "--out", single, *common) == 0
    for k in range(3):
        assert run_export(src, "--out", sharded, "--shard", f"{k}/3", *common) == 0
    parts = sorted(p.name for p in sharded.glob("manifest.shard-*.jsonl"))
    assert parts == [f"manifest.shard-{k}-of-3.jsonl" for k in range(3)]
    assert sorted(len(export_merge.read_journal(sharded / p)) for p in parts) == [2, 4, 4]
    assert (sharded / "manifest.jsonl").exists()  # the last shard to finish merged
    (sharded / "manifest.jsonl").unlink()
    (sharded / "manifest.csv").unlink()
    assert run_merge(sharded) == 0

    assert manifest(sharded) == manifest(single)
    assert (sharded / "manifest.csv").read_bytes() == (single / "manifest.csv").read_bytes()
    files_a, files_b = output_files(single), output_files(sharded)
    assert sorted(files_a) == sorted(files_b) and len(files_a) == 20
    for rel, path in files_a.items():
        if rel.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(files_b[rel]))), rel
        else:
            assert np.array_equal(np.load(path), np.load(files_b[rel])), rel


def test_a_run_without_shard_leaves_only_its_results_and_the_manifest(tmp_path, tiny_checkpoints):
    src = tmp_path / "in"
    make_images(src, ["a.jpg", "sub/b.png"])
    out = tmp_path / "out"
    argv = [src, "--out", out, "--save-raw", *weights(tiny_checkpoints)]
    expected = {f"{m}/{i}.{ext}" for m in ("baseline", "cbam") for i in ("a", "sub/b") for ext in ("png", "npy")}
    expected |= {"manifest.jsonl", "manifest.csv"}
    assert run_export(*argv) == 0
    assert all_files(out) == expected  # no shard journal, no .done marker, no hidden progress file

    (out / "cbam" / "a.png").unlink()
    # a journal of shard 0 of 1 covers what a run without --shard does: its rows count, and the run removes it
    (out / export_merge.part_name(0, 1)).write_bytes((out / "manifest.jsonl").read_bytes())
    (out / export_merge.done_name(0, 1)).write_text("{}")
    assert run_export(*argv) == 0
    assert all_files(out) == expected and len(manifest(out)) == 4


def test_an_interrupted_run_without_shard_resumes_from_its_hidden_progress(tmp_path, tiny_checkpoints, monkeypatch):
    src = tmp_path / "in"
    make_images(src, ["a.jpg", "b.jpg", "c.jpg"])
    out = tmp_path / "out"
    argv = [src, "--out", out, "--batch-size", "1", *weights(tiny_checkpoints)]
    real_write, calls = export.write_outputs, {"n": 0}

    def interrupted_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # both models of the first image, then Ctrl-C
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(export, "write_outputs", interrupted_write)
    assert run_export(*argv) == 130
    progress = out / export_merge.PROGRESS_JOURNAL
    assert [(r["id"], r["model"]) for r in export_merge.read_journal(progress)] == [("a", "baseline"), ("a", "cbam")]
    assert all_files(out) == {"baseline/a.png", "cbam/a.png", export_merge.PROGRESS_JOURNAL}

    monkeypatch.setattr(export, "write_outputs", real_write)
    appended = record_appends(monkeypatch)
    assert run_export(*argv) == 0
    assert appended == [(i, m) for i in ("b", "c") for m in ("baseline", "cbam")]
    assert not progress.exists() and len(manifest(out)) == 6


def test_merge_of_an_unfinished_run_without_shard_keeps_its_progress_and_warns(tmp_path, capsys):
    row = dict.fromkeys(export_merge.COLUMNS) | {"id": "a", "model": "cbam", "image": "in/a.jpg"}
    (tmp_path / export_merge.PROGRESS_JOURNAL).write_bytes(export_merge.to_jsonl([row]))
    assert run_merge(tmp_path) == 0 and "export run without --shard has not finished" in capsys.readouterr().err
    assert manifest(tmp_path) == [row] and (tmp_path / export_merge.PROGRESS_JOURNAL).exists()


def test_summary_counts_and_names_the_files_it_skips(tmp_path, tiny_checkpoints, capsys):
    src = tmp_path / "in"
    make_images(src, ["a.jpg"])
    for name in ("data.csv", "notes.txt", "sub/readme.md", "sub/y.yaml", "sub/z.json"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("not an image")
    out = src / "cams"
    # notes.txt, named on its own, is taken as it is (an error row), so it is not among the skipped files
    argv = [src, src / "notes.txt", "--out", out, "--models", "cbam", *weights(tiny_checkpoints)]
    assert run_export(*argv) == 0
    printed = capsys.readouterr().out
    assert "1 image(s) exported, 0 already done, 1 unreadable" in printed
    assert "4 file(s) skipped (not images: data.csv, sub/readme.md, sub/y.yaml, …) -> " in printed
    assert [r["id"] for r in manifest(out)] == ["a", "notes"]
    assert run_export(*argv) == 0  # the manifests in --out are neither inputs nor skipped files
    assert "run), 4 file(s) skipped (not images: data.csv," in capsys.readouterr().out

    assert run_export(src / "sub", "--out", tmp_path / "none", *weights(tiny_checkpoints)) == 2
    assert "no images found in" in (err := capsys.readouterr().err)
    assert "3 file(s) skipped (not images: readme.md, y.yaml, z.json)" in err


def test_torchrun_rank_and_world_size_pick_the_shard():
    env = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}
    assert export.parse_shard(None, env) == (2, 4)
    assert export.parse_shard("1/3", env) == (1, 3)  # an explicit --shard wins
    assert export.parse_shard(None, {}) == (0, 1)


def test_output_names_are_safe_unique_and_inside_out(tmp_path, tiny_checkpoints):
    src = tmp_path / "in"
    names = ["one/a.jpg", "two/a.jpg", "..dots/b.jpg", ".../c.jpg", "same/d.jpg", "same/d.png", "sp ace/e f.jpg"]
    make_images(src, names)
    raw_name = os.fsencode(src) + b"/bytes_\xff\xfe.jpg"  # not valid UTF-8
    random_image(99).save(os.fsdecode(raw_name), format="JPEG")
    out = tmp_path / "out"
    assert run_export(src, "--out", out, "--models", "baseline", *weights(tiny_checkpoints)) == 0

    rows = manifest(out)
    assert len(rows) == len(names) + 1 and not any(r["error"] for r in rows)
    overlays = [r["overlay"] for r in rows]
    assert len(set(map(str.casefold, overlays))) == len(overlays)
    for rel in overlays:
        path = (out / rel).resolve()
        assert path.is_relative_to(out.resolve()) and path.is_file()
        assert not any(part.startswith(".") for part in Path(rel).parts)
    ids = {r["id"] for r in rows}
    assert {"one/a", "two/a"} <= ids  # plain names are kept as they are
    assert any(i.startswith("bytes__") for i in ids)
    assert any(r["image"].endswith("bytes_\\xff\\xfe.jpg") for r in rows)  # shown, never mangled into the id


def test_ids_never_escape_even_for_crafted_paths():
    crafted = (b"../../etc/passwd", b"/abs/x.jpg", b"a/./b.jpg", b"..", b"a\\..\\b.jpg", b"CON.jpg", b"x.jpg", b"X.jpg")
    items = [Item(path="", image="", rel=rel) for rel in crafted]
    assign_ids(items)
    ids = [it.id for it in items]
    assert len(set(i.casefold() for i in ids)) == len(ids)
    for i in ids:
        parts = i.split("/")
        assert all(p and not p.startswith(".") and p not in ("..", ".") and "\\" not in p for p in parts), i


def test_out_folder_inside_an_input_folder_is_not_scanned(tmp_path, tiny_checkpoints, capsys):
    src = tmp_path / "in"
    make_images(src, ["a.jpg", "b.jpg"])
    argv = [src, "--out", src / "cams", "--models", "cbam", *weights(tiny_checkpoints)]
    assert run_export(*argv) == 0 and run_export(*argv) == 0
    assert "0 image(s) exported, 2 already done" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "magic"], "unknown CAM method"),
        (["--layer", "layer9"], "unknown layer"),
        (["--target", "purple cow"], "unknown target class"),
        (["--target", "7"], "out of range"),
        (["--target", "top3"], "explains one class"),
        (["--shard", "3/3"], "--shard"),
        (["--shard", "half"], "K/N"),
        (["--models", "cbam,vgg"], "--models"),
        (["--opacity", "2"], "--opacity"),
        (["--colormap", "nope"], "unknown colormap"),
        (["--baseline", "missing.safetensors"], "checkpoint for the baseline model not found"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, tiny_checkpoints, capsys, extra, message):
    make_images(tmp_path / "in", ["a.jpg"])
    argv = [tmp_path / "in", "--out", tmp_path / "out", *weights(tiny_checkpoints)]
    assert run_export(*argv, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inputs", [["nowhere/*.jpg"], ["missing_folder"], ["empty_dir"]])
def test_no_inputs_exit_2(tmp_path, tiny_checkpoints, capsys, monkeypatch, inputs):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    assert run_export(*inputs, "--out", "out", *weights(tiny_checkpoints)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_every_input_unreadable_exits_1_with_a_summary(tmp_path, tiny_checkpoints, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"")
    (src / "b.png").write_bytes(b"plain text named .png")
    out = tmp_path / "out"
    for _ in range(2):  # and again on the rerun, which retries error rows
        assert run_export(src, "--out", out, *weights(tiny_checkpoints)) == 1
        captured = capsys.readouterr()
        assert "0 image(s) exported, 0 already done, 2 unreadable" in captured.out
        errors = captured.err.strip().splitlines()
        assert errors == ["error: none of the 2 input image(s) could be read; the manifest's error column says why"]
        assert sorted(row["error"].split(" is ")[0] for row in manifest(out)) == ["a.jpg"] * 2 + ["b.png"] * 2
    make_images(src, ["good.jpg"])  # one readable image among them: a partial export succeeds
    assert run_export(src, "--out", out, *weights(tiny_checkpoints)) == 0
    assert "1 image(s) exported, 0 already done, 2 unreadable" in capsys.readouterr().out


def test_cuda_request_without_a_gpu_is_a_clear_error(tmp_path, tiny_checkpoints, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    make_images(tmp_path / "in", ["a.jpg"])
    assert run_export(tmp_path / "in", "--out", tmp_path / "out", "--device", "cuda", *weights(tiny_checkpoints)) == 2
    assert "no usable CUDA GPU" in capsys.readouterr().err


def test_merge_of_a_folder_without_journals_exits_2(tmp_path, capsys):
    assert run_merge(tmp_path) == 2
    assert "nothing to merge" in capsys.readouterr().err


def test_glob_inputs_are_expanded_and_sorted(tmp_path, tiny_checkpoints, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "pics", ["b.jpg", "a.jpg", "sub/c.jpg", "skip.png"])
    assert run_export("pics/**/*.jpg", "--out", "out", "--models", "baseline", *weights(tiny_checkpoints)) == 0
    assert [r["id"] for r in manifest(tmp_path / "out")] == ["a", "b", "sub/c"]


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_exports_every_image_exactly_once(tmp_path, tiny_checkpoints, monkeypatch):
    src = tmp_path / "in"
    make_images(src, [f"{i:02d}.jpg" for i in range(20)], size=(96, 64))
    out = tmp_path / "out"
    entry = ["-m", "cbam_viz", "export"] if CLI_READY else ["-m", "cbam_viz.export.batch"]
    argv = [str(src), "--out", str(out), "--batch-size", "1", "--workers", "1", *weights(tiny_checkpoints)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, *entry, *argv], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    journal = out / export_merge.PROGRESS_JOURNAL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if journal.exists() and export_merge.read_journal(journal):
            break
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    done_before = {(r["id"], r["model"]) for r in export_merge.read_journal(journal)}
    assert 0 < len(done_before) < 40
    assert not [name for name in all_files(out) if name.startswith("manifest.shard-")]  # only the hidden journal
    # What a kill can leave in the worst case, planted so every run checks the cleanup: a torn journal line,
    # a temp file of an unfinished output, and a damaged file where an unfinished output goes.
    with open(journal, "ab") as f:
        f.write(b'{"id": "19", "model": "cba')
    (out / "cbam").mkdir(exist_ok=True)
    (out / "cbam" / ".19.png.k1ll3d.part").write_bytes(b"\x89PNG half")
    (out / "cbam" / "19.png").write_bytes(b"\x89PNG half")

    appended = record_appends(monkeypatch)
    assert run_export(*argv) == 0
    keys = sorted([*done_before, *appended])
    assert keys == sorted({(f"{i:02d}", m) for i in range(20) for m in ("baseline", "cbam")})  # once each
    assert len(manifest(out)) == 40 and not any(r["error"] for r in manifest(out))
    assert all_files(out) == {*output_files(out), "manifest.jsonl", "manifest.csv"}  # no journal, no .part left
    for path in output_files(out).values():
        with Image.open(path) as png:
            png.load()  # raises on a truncated file


def test_csv_cells_never_start_a_formula():
    from cbam_viz.export.merge import csv_cell

    assert csv_cell("=1+2.png is not an image") == "'=1+2.png is not an image"
    assert csv_cell("@SUM(A1)") == "'@SUM(A1)" and csv_cell("-rf.png") == "'-rf.png"
    assert csv_cell("photo.png") == "photo.png" and csv_cell(0.5) == 0.5 and csv_cell(None) == ""


@pytest.mark.parametrize(("code", "words"), [(28, "No space left on device"), (30, "Read-only file system")])
def test_disk_full_or_read_only_output(tmp_path, tiny_checkpoints, tiny_models, monkeypatch, capsys, code, words):
    """A write failure midway: exit 2 with a clear message, finished images intact, nothing half-written; a rerun
    completes the rest."""
    import cbam_viz.io.fileio as fileio

    src = tmp_path / "in"
    make_images(src, [f"{i}.png" for i in range(4)])
    out = tmp_path / "out"
    real_fsync, calls = fileio.os.fsync, {"n": 0}

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] > 3:  # the first image's two overlays go through, then the disk "fills"
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    assert run_export(src, "--out", out, "--size", "64", "--batch-size", "1", *weights(tiny_checkpoints)) == 2
    err = capsys.readouterr().err
    assert words in err and "rerun the same command" in err and "Traceback" not in err
    assert not list(out.rglob("*.part"))
    done = {row["overlay"] for row in journal_rows(out) if not row["error"]}
    for rel in done:
        Image.open(out / rel).verify()  # every file a manifest row points to is complete
    assert set(output_files(out)) >= done
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    assert run_export(src, "--out", out, "--size", "64", "--batch-size", "1", *weights(tiny_checkpoints)) == 0
    rows = manifest(out)
    assert len(rows) == 8 and not any(row["error"] for row in rows)
