"""The training loop: a `Trainer` owns one run's model, optimiser, schedule and run folder, and `train` drives it."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from cbam_viz.data.imagefolder import unreadable_line
from cbam_viz.data.source import DataSource, open_data
from cbam_viz.io.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedModel,
    ModelMeta,
    preview_names,
    save_checkpoint,
)
from cbam_viz.io.fileio import atomic_path
from cbam_viz.nn.resnet import DISPLAY_NAMES, build_model
from cbam_viz.train.config import (
    BEST,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CURVES_PNG,
    FINAL,
    LAST,
    METRICS_CSV,
    MOMENTUM,
    Config,
    TrainError,
    resolve_config,
)
from cbam_viz.train.data import StepBatches, worker_init
from cbam_viz.train.distributed import Dist, all_reduce, broadcast_flag, gather_notes, setup_distributed
from cbam_viz.train.evaluation import VAL_BATCH, autocast, evaluate, prepare
from cbam_viz.train.optim import lr_factor, param_groups
from cbam_viz.train.provenance import init_summary, load_init, recipe
from cbam_viz.train.run_files import load_last, write_curves, write_metrics_csv
from cbam_viz.train.stop import StopRequest


@dataclass
class TrainResult:
    """What `train` leaves behind (the model is the trained module itself, without a DDP wrapper)."""

    model: nn.Module
    config: Config
    step: int
    completed: bool
    history: list[dict] = field(default_factory=list)
    unreadable: dict[str, list[str]] = field(default_factory=dict)  # split -> notes of its unreadable files, all ranks


def run(args: argparse.Namespace) -> int:
    """CLI entry point: train, returning 0 when the run is complete and 130 when it was stopped by a signal."""
    result = train(args)
    return 0 if result.completed else 130


def train(args: argparse.Namespace, data: DataSource | None = None, stop_after: int | None = None) -> TrainResult:
    """Train (or continue) the run in `args.out`. `data` replaces the folder in `args.data` (tests);
    `stop_after` stops once this many steps were done in this call, as if stopped by a signal (tests)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    ctx, device = setup_distributed(args.device)
    try:
        return Trainer(args, data, ctx, device).fit(stop_after)
    finally:
        if ctx.owned and dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """One run: builds or restores its state from RUN_DIR/last.pt, steps, validates, saves."""

    def __init__(self, args: argparse.Namespace, data: DataSource | None, ctx: Dist, device: torch.device) -> None:
        self.ctx, self.device = ctx, device
        self.out = Path(args.out)
        self.last_path = self.out / LAST
        saved = load_last(self.last_path) if args.resume and self.last_path.is_file() else None
        init = None
        if saved is None and getattr(args, "init", None):
            init = load_init(Path(args.init), args.arch)
            args = argparse.Namespace(**{**vars(args), "arch": args.arch or init.meta.arch})
        self.cfg = cfg = resolve_config(
            args, saved["config"] if saved else None, device.type, ctx.world, init.meta.cbam if init else None
        )
        self.data = data = data if data is not None else open_data(cfg.data, cfg.augment)
        if getattr(args, "target_scale", None) and "pack_hash" not in data.info:
            raise TrainError(f"--target-scale sizes the targets of stamp scenes; {cfg.data} holds photos")
        self._check_data(saved, init)
        self._prepare_folder(fresh=not saved)

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, len(data.class_names), zero_init_residual=cfg.zero_init_residual, cbam=cfg.cbam)
        self.init_info = saved.get("init", {}) if saved else {}
        if init is not None:
            model.load_state_dict(init.model.state_dict())
            self.init_info = init_summary(init)
            del init
        self.model = model.to(device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=MOMENTUM, nesterov=True
        )
        steps, warmup_steps = cfg.steps, cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, steps, warmup_steps))
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.step, self.elapsed, self.history = 0, 0.0, []
        self.acc = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "steps": 0.0, "data_s": 0.0, "train_s": 0.0}
        self.best = {"val_top1": -1.0}
        if saved:
            self._restore(saved)
            del saved
        self.net = self._wrap(self.model)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.val_loader: DataLoader | None = None  # made at the first validation, its workers kept for the next
        self.unreadable: dict[str, dict[str, None]] = {"train": {}, "val": {}}  # split -> notes met (ordered set)
        self.reported: dict[str, list[str]] = {"train": [], "val": []}  # as last reported, over all ranks
        self.running = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct (flushed into acc)
        self.started = time.monotonic()
        self.bar = None

    def _check_data(self, saved: dict | None, init: LoadedModel | None) -> None:
        cfg, data = self.cfg, self.data
        if init is not None and init.meta.class_names != list(data.class_names):
            raise TrainError(
                f"--init {Path(cfg.init).name} was trained on {init.meta.num_classes} classes "
                f"({preview_names(init.meta.class_names)}), but {cfg.data} has {len(data.class_names)} "
                f"({preview_names(data.class_names)}): --init needs the same classes in the same order"
            )
        for key in ("pack_hash", "files_hash"):  # stamp scenes: the asset pack; photo folders: the file lists
            if saved and saved.get("dataset", {}).get(key) != data.info.get(key):
                raise TrainError(
                    f"{self.last_path} was trained on data with {key} {saved.get('dataset', {}).get(key)}, but "
                    f"{cfg.data} has {data.info.get(key)}: point --data at the original data or start a new run"
                )

    def _prepare_folder(self, fresh: bool) -> None:
        if not self.ctx.main:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrainError(f"cannot create the run folder {self.out}: {err}") from None
        if fresh:  # a fresh run replaces any earlier one in this folder
            for name in (LAST, METRICS_CSV, CURVES_PNG, BEST, FINAL):
                (self.out / name).unlink(missing_ok=True)

    def _restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        if self.device.type == "cuda" and saved["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"][: torch.cuda.device_count()])
        self.step, self.elapsed, self.history = saved["step"], saved["elapsed"], list(saved["history"])
        self.acc.update(saved["interval"])
        self.best.update(saved["best"])

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop steps: DDP under torchrun, compiled with --compile (validation stays eager)."""
        net = model
        if self.ctx.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.cfg.compile:
            net = torch.compile(net)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return net

    def run_seconds(self) -> float:
        return self.elapsed + (time.monotonic() - self.started)

    def snapshot(self) -> dict:
        """Everything last.pt holds: tensors and primitive containers only."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": asdict(self.cfg),
            "dataset": dict(self.data.info),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            },
            "history": self.history,
            "init": self.init_info,
            "interval": dict(self.acc),
            "best": dict(self.best),
            "elapsed": self.run_seconds(),
        }

    def flush(self) -> None:
        """Move the on-device loss/accuracy sums into `acc` (one sync) and stop on a non-finite loss."""
        loss_sum, correct = self.running.tolist()
        self.running.zero_()
        if not math.isfinite(loss_sum):
            raise TrainError(f"the loss became {loss_sum} by step {self.step}: lower --lr or use --precision fp32")
        self.acc["loss"] += loss_sum
        self.acc["correct"] += correct

    def save_last(self) -> None:
        self.flush()
        if self.ctx.main:
            with atomic_path(self.last_path) as tmp:
                torch.save(self.snapshot(), tmp)

    def recipe(self, row: dict) -> dict:
        """The checkpoint's `recipe` metadata at the evaluation `row`."""
        return recipe(self.cfg, self.init_info, self.data.augmentation, self.device, self.ctx.world, row)

    def meta(self, row: dict) -> ModelMeta:
        """The metadata a checkpoint saved at the evaluation `row` carries."""
        metrics = {key: row[key] for key in ("val_top1", "val_top5", "val_images", "train_loss", "train_acc")}
        return ModelMeta(
            arch=self.cfg.arch,
            class_names=list(self.data.class_names),
            input_size=self.cfg.size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            recipe=self.recipe(row),
            metrics=metrics,
            dataset=dict(self.data.info),
            cbam=self.cfg.cbam,
        )

    def curves_title(self) -> str:
        return f"{DISPLAY_NAMES[self.cfg.arch]} on {self.data.info.get('name', 'stamp scenes')}, {self.cfg.size} px"

    def eval_and_log(self, lr: float) -> dict:
        """Validate, append a metrics row, keep the best checkpoint and rewrite the metrics table and curves."""
        self.flush()
        ctx, acc, batch = self.ctx, self.acc, self.cfg.batch_size
        if ctx.enabled:  # each rank updated its BN running stats on its own batch last: use rank 0's everywhere
            for buffer in self.model.buffers():
                dist.broadcast(buffer, 0)
        top1, top5, n_val, notes = evaluate(
            self.model, self.validation_batches(), self.cfg.precision, self.device, self.mean, self.std
        )
        self.note_unreadable("val", notes)
        self.report_unreadable()
        loss_sum, correct, seen, n_steps = all_reduce(
            [acc["loss"], acc["correct"], acc["seen"], acc["steps"]], self.device
        )
        row = {
            "images": self.step * batch,
            "step": self.step,
            "lr": lr,
            "train_loss": loss_sum / n_steps if n_steps else float("nan"),
            "train_acc": 100.0 * correct / seen if seen else float("nan"),
            "val_top1": top1,
            "val_top5": top5,
            "val_images": n_val,
            "img_per_s": acc["steps"] * batch / acc["train_s"] if acc["train_s"] else float("nan"),
            "data_frac": acc["data_s"] / acc["train_s"] if acc["train_s"] else float("nan"),
            "elapsed_s": self.run_seconds(),
        }
        self.history.append(row)
        acc.update(loss=0.0, correct=0.0, seen=0.0, steps=0.0, data_s=0.0, train_s=0.0)
        if ctx.main:
            if top1 > self.best["val_top1"]:
                self.best.update(val_top1=top1, images=row["images"])
                save_checkpoint(self.out / BEST, self.model, self.meta(row), dtype=torch.float16)
            write_metrics_csv(self.out / METRICS_CSV, self.history)
            write_curves(self.out / CURVES_PNG, self.history, self.curves_title())
            self.bar.write(
                f"[{row['images']:,} images] loss {row['train_loss']:.3f}  train-batch {row['train_acc']:.1f}%  "
                f"val top-1 {top1:.1f}%  top-5 {top5:.1f}%  {row['img_per_s']:.1f} img/s  "
                f"data {100 * row['data_frac']:.0f}%"
            )
        return row

    def loader(self, completed: bool) -> DataLoader:
        """This rank's batches for the remaining steps, in the step-indexed order that makes resume exact."""
        cfg, workers = self.cfg, 0 if completed else self.cfg.workers
        return DataLoader(
            self.data.train_dataset(cfg.size, cfg.total_images, cfg.seed, cfg.target_scale),
            batch_sampler=StepBatches(self.step, cfg.steps, cfg.batch_size, self.ctx.rank, self.ctx.world),
            **self._loader_options(workers),
        )

    def validation_batches(self) -> DataLoader:
        """This rank's share of the validation split, read anew each time (never held in memory as a whole)."""
        if self.val_loader is None:
            self.val_loader = DataLoader(
                self.data.val_split(self.cfg.size, self.ctx.rank, self.ctx.world),
                batch_size=VAL_BATCH,
                **self._loader_options(self.cfg.workers),
            )
        return self.val_loader

    def _loader_options(self, workers: int) -> dict:
        return {
            "num_workers": workers,
            "pin_memory": self.device.type == "cuda",
            "worker_init_fn": partial(worker_init, idle=self.device.type == "cpu") if workers else None,
            "prefetch_factor": 4 if workers else None,
            "persistent_workers": workers > 0,
        }

    def note_unreadable(self, split: str, notes: Iterable[str]) -> None:
        """Remember the unreadable files named by a batch's notes ("" = none)."""
        self.unreadable[split].update((note, None) for note in notes if note)

    def report_unreadable(self) -> None:
        """One line per split whose count of unreadable files (over all ranks) grew since the last report."""
        for split, what in (("train", "replaced by the next readable image of their class"),
                            ("val", "left out of validation")):
            notes = gather_notes(list(self.unreadable[split])) if self.ctx.enabled else list(self.unreadable[split])
            if len(notes) > len(self.reported[split]) and self.ctx.main:
                self.bar.write(unreadable_line(str(Path(self.cfg.data) / split), notes, what))
            self.reported[split] = notes

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One optimiser step on a batch; returns the (on-device) loss and the learning rate it used."""
        x = prepare(images, self.device, self.mean, self.std)
        y = labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.cfg.precision):
            logits = self.net(x)
        loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.running[0] += loss.detach()
        self.running[1] += (logits.detach().argmax(1) == y).sum()
        self.acc["seen"] += len(y)
        self.acc["steps"] += 1
        return loss, lr

    def _progress_bar(self):
        from tqdm import tqdm

        cfg = self.cfg
        return tqdm(
            total=cfg.total_images,
            initial=self.step * cfg.batch_size,
            unit="img",
            unit_scale=True,
            dynamic_ncols=True,
            disable=not self.ctx.main,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            desc=DISPLAY_NAMES[cfg.arch],
        )

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Step until the run is complete or a stop is requested, then write the final files."""
        cfg = self.cfg
        completed = self.step >= cfg.steps
        loader = self.loader(completed)
        self.bar = self._progress_bar()
        if self.ctx.main and self.step:
            self.bar.write(
                f"resuming {self.last_path} at step {self.step:,} of {cfg.steps:,} "
                f"({self.step * cfg.batch_size:,} images)"
            )
        self.started = time.monotonic()
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            with StopRequest() as stop:
                self.net.train()
                done_here, lr, completed = self._loop(iter(loader), stop, stop_after, lr, completed)
            self.bar.close()
            if completed:
                self._finish(lr, done_here)
        finally:  # the loaders' workers stop here, even after an error, not at interpreter exit
            del loader
            self.val_loader = None
        if self.ctx.enabled:
            dist.barrier()
        return TrainResult(self.model, cfg, self.step, completed, self.history, dict(self.reported))

    def _loop(self, batches, stop: StopRequest, stop_after: int | None, lr: float, completed: bool):
        cfg, ctx = self.cfg, self.ctx
        flush_every = 1 if self.device.type == "cpu" else 10  # host syncs (loss check, stop agreement) are rarer on GPUs
        last_save = time.monotonic()
        done_here = 0
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            batch = next(batches)
            t_data = time.perf_counter()
            images, labels = batch[0], batch[1]
            if len(batch) > 2:  # photo folders: notes of unreadable files the items replaced
                self.note_unreadable("train", batch[2])
            loss, lr = self.train_step(images, labels)
            done_here += 1
            if done_here % flush_every == 0:
                last_loss = float(loss.detach())
                self.flush()
                if ctx.main:
                    self.bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.4f}", refresh=False)
            self.acc["data_s"] += t_data - t0
            self.acc["train_s"] += time.perf_counter() - t0
            self.bar.update(cfg.batch_size)

            finished = self.step >= cfg.steps
            images_now, images_before = self.step * cfg.batch_size, (self.step - 1) * cfg.batch_size
            if images_now // cfg.eval_every > images_before // cfg.eval_every or finished:
                self.eval_and_log(lr)
                self.save_last()
                last_save = time.monotonic()
            elif ctx.main and time.monotonic() - last_save >= cfg.checkpoint_every:
                self.save_last()
                last_save = time.monotonic()
            if finished:
                return done_here, lr, True
            halt = stop_after is not None and done_here >= stop_after
            if ctx.enabled:
                if done_here % flush_every == 0:
                    halt = halt or broadcast_flag(stop.requested, self.device)
            else:
                halt = halt or stop.requested
            if halt:
                self.save_last()
                self._report_stop()
                return done_here, lr, False
        return done_here, lr, completed

    def _report_stop(self) -> None:
        if not self.ctx.main:
            return
        acc, speed = self.acc, ""
        if acc["train_s"]:
            speed = (
                f" ({acc['steps'] * self.cfg.batch_size / acc['train_s']:.1f} img/s, data loading "
                f"{100 * acc['data_s'] / acc['train_s']:.0f}% of the step time since the last evaluation)"
            )
        self.bar.write(f"stopped at step {self.step:,}{speed}; rerun the same command to continue from {self.last_path}")

    def _finish(self, lr: float, done_here: int) -> None:
        """The last evaluation and the final files (a rerun of a finished run only restores missing ones)."""
        if not self.history or self.history[-1]["step"] != self.step:
            self.eval_and_log(lr)
            self.save_last()
        if not self.ctx.main:
            return
        out, row = self.out, self.history[-1]
        if done_here or not (out / FINAL).is_file():
            save_checkpoint(out / FINAL, self.model, self.meta(row), dtype=torch.float16)
        if not (out / BEST).is_file():
            save_checkpoint(out / BEST, self.model, self.meta(row), dtype=torch.float16)
        if not (out / METRICS_CSV).is_file():
            write_metrics_csv(out / METRICS_CSV, self.history)
        if not (out / CURVES_PNG).is_file():
            write_curves(out / CURVES_PNG, self.history, self.curves_title())
        print(
            f"done: {row['images']:,} images, val top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% "
            f"(best top-1 {self.best['val_top1']:.2f}%); wrote {out / FINAL} and {out / BEST}",
            file=sys.stderr,
        )


