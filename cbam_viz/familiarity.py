"""Familiarity: does an image look like the data a checkpoint was trained on?

A classifier gives confident answers on any photo; these detectors say when that answer means nothing. Each works
on the layer4 activations the forward pass computes anyway (pooled, or per cell of the map), so scoring costs no
extra pass:

* ``mahalanobis`` (Lee et al., 2018): class-conditional Gaussians with one shared covariance (Ledoit-Wolf shrunk);
  the score is the Mahalanobis distance to the nearest class mean.
* ``knn`` (Sun et al., 2022): the distance from the L2-normalised feature to its k-th nearest neighbour among the
  normalised training features.
* ``msp`` (Hendrycks & Gimpel, 2017): one minus the maximum softmax probability, the baseline every paper reports.
* ``knn+msp``: the sum of the two scores, each standardised by its mean and spread on the validation split. The
  kNN distance sees how unlike the training features an image is, MSP how unsure the classifier is: an image of
  no known subject can be close in feature space yet without any confident class, or the other way round.
* ``cells``: three scores of the layer4 map, each standardised on the validation split and summed: the distance
  from the image's best L2-normalised cell to the nearest entry of a bank holding, per training image, the cell
  with the most evidence for its true class; the kNN distance of the pooled features; and minus the highest class
  logit of any single cell. The pooled features mix the subject with its background, a cell need not: an image
  of no known subject has no cell that looks like a known subject, whatever its background.

Every score grows as an image looks less familiar. The threshold keeps 95% of the validation images familiar.
The statistics of one detector live inside the checkpoint (safetensors tensors ``familiarity.*`` plus a JSON
header entry), so a checkpoint carries its own familiarity model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

METHODS = ("mahalanobis", "knn", "msp", "knn+msp", "cells")
STORED_METHODS = ("mahalanobis", "knn", "knn+msp", "cells")  # msp needs no statistics: it is measured, never stored
MAP_METHODS = frozenset({"cells"})  # scored on the layer4 map itself, not on its pooled features
TENSOR_PREFIX = "familiarity."
SCORE_NAMES = {  # what each method's score is, for people
    "mahalanobis": "Mahalanobis distance",
    "knn": "kNN distance",
    "msp": "1 - max softmax",
    "knn+msp": "kNN distance + (1 - max softmax), standardised",
    "cells": "best-cell distance + kNN distance - top cell logit, standardised",
}
KEEP = 0.95  # share of validation images that stay familiar at the threshold
DEFAULT_K = 20
DEFAULT_TRAIN_IMAGES = 3200  # training images a detector is fit on
FEATURE = "layer4 global average pool"
MAP_FEATURE = "layer4 map: its cells and their global average pool"


@dataclass
class FamiliarityScore:
    """One image's familiarity under one checkpoint's detector."""

    score: float
    threshold: float
    unfamiliar: bool
    method: str

    def as_json(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), "threshold": round(self.threshold, 6), "unfamiliar": self.unfamiliar,
                "method": self.method}


@dataclass
class Familiarity:
    """A fitted detector: its tensors, its threshold and where it was fit (`info`, stored in the checkpoint)."""

    method: str
    threshold: float
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    def scores(self, features: torch.Tensor, probs: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Raw scores (N,) of layer4 maps (N, K, h, w) or, for methods outside MAP_METHODS, pooled features (N, K);
        higher = less familiar."""
        return detector_scores(self.method, self.tensors, features, probs, int(self.info.get("k", DEFAULT_K)))

    def judge(self, features: torch.Tensor, probs: torch.Tensor | np.ndarray | None = None) -> list[FamiliarityScore]:
        """One FamiliarityScore per image of layer4 maps (N, K, h, w)."""
        return [
            FamiliarityScore(float(s), self.threshold, bool(s > self.threshold), self.method)
            for s in self.scores(features, probs)
        ]

    def header(self) -> dict[str, Any]:
        """What goes into the checkpoint's JSON header beside the tensors."""
        return {"method": self.method, "threshold": self.threshold, **self.info}


def pool(features: torch.Tensor) -> torch.Tensor:
    """Layer4 activations (N, K, h, w) -> the pooled features (N, K) the classifier sees, in float32."""
    return features.float().mean(dim=(2, 3))


def detector_scores(
    method: str,
    tensors: dict[str, torch.Tensor],
    features: torch.Tensor,
    probs: torch.Tensor | np.ndarray | None = None,
    k: int = DEFAULT_K,
) -> np.ndarray:
    """Scores (N,) of `method` given its fitted tensors, on layer4 maps (N, K, h, w) or pooled features (N, K)
    (MAP_METHODS need the maps); higher = less familiar."""
    if method in MAP_METHODS:
        if features.ndim != 4:
            raise ValueError(f"the {method} score needs the layer4 map (N, K, h, w), got shape {tuple(features.shape)}")
        return _standardised_sum(tensors["standardise"], _cell_parts(tensors, features, k))
    x = pool(features) if features.ndim == 4 else features.float()
    if method == "mahalanobis":
        y = x @ tensors["whitening"].float().T  # (N, K): whitened features
        means = tensors["means"].float()  # (C, K): whitened class means
        sq = (y * y).sum(1, keepdim=True) - 2 * y @ means.T + (means * means).sum(1)[None]
        return sq.min(dim=1).values.clamp_min(0).sqrt().numpy()
    if method == "knn":
        bank = tensors["bank"].float()  # (M, K), unit rows
        z = torch.nn.functional.normalize(x, dim=1)
        sim = z @ bank.T
        kth = sim.topk(min(k, bank.shape[0]), dim=1).values[:, -1]
        return (2 - 2 * kth).clamp_min(0).sqrt().numpy()
    if method == "msp":
        if probs is None:
            raise ValueError("the msp score needs the softmax probabilities")
        p = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
        return (1 - p.max(dim=1).values).numpy()
    if method == "knn+msp":
        parts = (detector_scores("knn", tensors, x, k=k), detector_scores("msp", tensors, x, probs))
        return _standardised_sum(tensors["standardise"], parts)
    raise ValueError(f"unknown familiarity method {method!r}; choose one of {', '.join(METHODS)}")


def _cell_parts(tensors: dict[str, torch.Tensor], maps: torch.Tensor, k: int) -> tuple[np.ndarray, ...]:
    """The three unstandardised scores of `cells` on layer4 maps: best-cell distance, pooled kNN, -top cell logit."""
    return (
        best_cell_distance(tensors["cells"], maps),
        detector_scores("knn", tensors, maps, k=k),
        -cell_logits(tensors["classifier"], maps).amax(dim=(1, 2)).numpy(),
    )


def _standardised_sum(scale: torch.Tensor, parts: tuple[np.ndarray, ...]) -> np.ndarray:
    """The sum of scores, each less its validation mean over its validation spread (rows of `scale`)."""
    rows = scale.double().numpy()
    return sum((part - mean) / std for part, (mean, std) in zip(parts, rows)).astype(np.float32)


def _cells(maps: torch.Tensor) -> torch.Tensor:
    """Layer4 maps (N, K, h, w) -> their cells (N, h*w, K), in float32."""
    return maps.float().flatten(2).transpose(1, 2)


def cell_logits(classifier: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Each cell's class logits (N, h*w, C) under the linear classifier (C, K + 1: weights, then bias) whose mean
    over the cells is the image's logits."""
    classifier = classifier.float()
    return _cells(maps) @ classifier[:, :-1].T + classifier[:, -1]


def best_cell_distance(bank: torch.Tensor, maps: torch.Tensor, chunk: int = 64) -> np.ndarray:
    """Per image, the smallest distance between one of its L2-normalised cells and a bank entry (unit rows)."""
    bank = bank.float()
    out = []
    for start in range(0, len(maps), chunk):
        z = torch.nn.functional.normalize(_cells(maps[start : start + chunk]), dim=2)
        out.append((2 - 2 * (z @ bank.T).amax(dim=(1, 2))).clamp_min(0).sqrt())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def classifier_tensor(fc: torch.nn.Linear) -> torch.Tensor:
    """The final linear layer as one (C, K + 1) float32 tensor: weights, then bias."""
    return torch.cat([fc.weight, fc.bias[:, None]], dim=1).detach().float().cpu()


def evidence_cells(maps: torch.Tensor, labels: np.ndarray, classifier: torch.Tensor) -> torch.Tensor:
    """Per image, its cell (N, K) with the highest logit of its true class: where the model sees that class."""
    rows = torch.arange(len(maps))
    best = cell_logits(classifier, maps)[rows, :, torch.as_tensor(labels)].argmax(dim=1)
    return _cells(maps)[rows, best]


# ------------------------------------------------------------------------------------------------ fitting
def ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of centred samples (N, K): well conditioned even when N is near K."""
    n, k = centred.shape
    emp = centred.T @ centred / n
    mu = np.trace(emp) / k
    delta = ((emp - mu * np.eye(k)) ** 2).sum() / k
    x2 = centred**2
    beta = min(((x2.T @ x2).sum() / n - (emp**2).sum()) / (k * n), delta)
    shrink = beta / delta if delta > 0 else 1.0
    cov = (1 - shrink) * emp
    cov[np.diag_indices(k)] += shrink * mu
    return cov


def fit_tensors(
    method: str,
    pooled: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    val: tuple[np.ndarray, ...] | None = None,
    k: int = DEFAULT_K,
    cells: torch.Tensor | None = None,
    classifier: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The statistics of `method` from training features (N, K) and their labels. `knn+msp` also needs the
    validation split's pooled features and softmax (`val`), on which its scores are standardised; `cells` needs
    the training images' evidence cells (N, K), the classifier (C, K + 1) and, third in `val`, the validation maps."""
    if method == "cells":
        if cells is None or classifier is None or val is None or len(val) < 3:
            raise ValueError("cells needs the training evidence cells, the classifier and the validation maps")
        tensors = {
            **fit_tensors("knn", pooled, labels, num_classes),
            "cells": torch.nn.functional.normalize(torch.as_tensor(cells).float(), dim=1).to(torch.float16),
            "classifier": classifier.detach().float().cpu(),
        }
        return {**tensors, "standardise": _scale(_cell_parts(tensors, torch.as_tensor(val[2]), k))}
    if method == "knn+msp":
        if val is None:
            raise ValueError("knn+msp is standardised on the validation split: pass its features and softmax")
        tensors = fit_tensors("knn", pooled, labels, num_classes)
        val_pooled, val_probs = torch.from_numpy(val[0]), val[1]
        parts = (detector_scores("knn", tensors, val_pooled, k=k), detector_scores("msp", tensors, val_pooled, val_probs))
        return {**tensors, "standardise": _scale(parts)}
    pooled = pooled.astype(np.float64)
    if method == "mahalanobis":
        present = np.unique(labels)
        if len(present) < num_classes:
            missing = sorted(set(range(num_classes)) - set(present.tolist()))
            raise ValueError(f"no training image of class(es) {missing[:5]}: cannot fit class means")
        means = np.stack([pooled[labels == c].mean(0) for c in range(num_classes)])
        cov = ledoit_wolf(pooled - means[labels])
        eigval, eigvec = np.linalg.eigh(cov)
        whitening = (eigvec / np.sqrt(np.maximum(eigval, eigval.max() * 1e-9))).T  # W with W^T W = cov^-1
        return {
            "whitening": torch.from_numpy(whitening.astype(np.float32)),
            "means": torch.from_numpy((means @ whitening.T).astype(np.float32)),
        }
    if method == "knn":
        bank = torch.nn.functional.normalize(torch.from_numpy(pooled.astype(np.float32)), dim=1)
        return {"bank": bank.to(torch.float16)}
    if method == "msp":
        return {}
    raise ValueError(f"unknown familiarity method {method!r}; choose one of {', '.join(METHODS)}")


def _scale(parts: tuple[np.ndarray, ...]) -> torch.Tensor:
    """Rows (mean, standard deviation) of each validation score, for `_standardised_sum`."""
    return torch.tensor([[float(np.mean(p)), max(float(np.std(p)), 1e-6)] for p in parts], dtype=torch.float32)


def threshold_at(val_scores: np.ndarray, keep: float = KEEP) -> float:
    """The score below which `keep` of the validation images lie: they stay familiar, the rest do not."""
    if len(val_scores) == 0:
        raise ValueError("no validation scores to set the threshold on")
    return float(np.quantile(np.asarray(val_scores, dtype=np.float64), keep, method="inverted_cdf"))


# ---------------------------------------------------------------------------------------------- measuring
def auroc(familiar: np.ndarray, unfamiliar: np.ndarray) -> float:
    """Area under the ROC curve for telling unfamiliar (positive, higher score) from familiar images; ties count half."""
    familiar, unfamiliar = np.asarray(familiar, float), np.asarray(unfamiliar, float)
    both = np.concatenate([familiar, unfamiliar])
    ranks = _average_ranks(both)
    n_pos, n_neg = len(unfamiliar), len(familiar)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # 1-based average rank of the tie group
            start = end
    return ranks


def fpr_at_tpr(familiar: np.ndarray, unfamiliar: np.ndarray, tpr: float = KEEP) -> float:
    """Share of unfamiliar images still called familiar when the threshold keeps `tpr` of the familiar ones."""
    threshold = threshold_at(familiar, tpr)
    return float(np.mean(np.asarray(unfamiliar) <= threshold))
