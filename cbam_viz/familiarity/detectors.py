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
* ``patches``: two scores of the maps, each standardised on the validation split and summed, the first with
  twice the weight. First, the layer3 patches under the layer4 cells with the highest class logits (the layer3
  map average-pooled onto layer4's grid) are compared with a bank holding, per training image, the patches under
  its cells of most evidence for its true class; each image cell gets the distance to its closest bank patch (a
  nearest-patch distance, as in PatchCore, Roth et al. 2022) and the score is the mean of the two smallest.
  Second, minus the highest class logit of any single layer4 cell. The pooled features mix the subject with its
  background, a patch need not: an image of no known subject has no patch that looks like a known subject,
  whatever its background, and a known subject usually shows in more than one cell. Layer3 keeps what the subject
  looks like at a finer grain than layer4, whose cells in the bundled CBAM-ResNet50 mostly carry layer3's features
  through the shortcut. Patches are compared in the bank's principal directions (the top eigenvectors of the
  training patches' second moments, uncentred): a few dozen columns keep their similarities, so each comparison
  reads a small fraction of the memory that comparing whole patches would.

Every score grows as an image looks less familiar. The threshold keeps 95% of the validation images familiar.
The statistics of one detector live inside the checkpoint (safetensors tensors ``familiarity.*`` plus a JSON
header entry), so a checkpoint carries its own familiarity model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

METHODS = ("mahalanobis", "knn", "msp", "knn+msp", "patches")
STORED_METHODS = ("mahalanobis", "knn", "knn+msp", "patches")  # msp needs no statistics: it is measured, never stored
MAP_METHODS = frozenset({"patches"})  # scored on the layer3 and layer4 maps, not on the pooled features
TENSOR_PREFIX = "familiarity."
SCORE_NAMES = {  # what each method's score is, for people
    "mahalanobis": "Mahalanobis distance",
    "knn": "kNN distance",
    "msp": "1 - max softmax",
    "knn+msp": "kNN distance + (1 - max softmax), standardised",
    "patches": "2 x nearest-patch distance - top cell logit, standardised",
}
KEEP = 0.95  # share of validation images that stay familiar at the threshold
DEFAULT_K = 20
DEFAULT_TRAIN_IMAGES = 3200  # training images a detector is fit on
FEATURE = "layer4 global average pool"
MAP_FEATURE = "layer3 patches under the layer4 cells of most class evidence; the cells' class logits"
TOP_CELLS = 8  # layer4 cells whose layer3 patches an image is judged by
NEAREST = 2  # the image's cells closest to the bank, whose distances the patch score averages
BANK_CELLS = 3  # evidence patches per training image in the bank
PROJECTED = 64  # principal directions patches are compared in (at most their channels)
PATCH_WEIGHT = 2.0  # weight of the standardised nearest-patch distance beside the standardised top cell logit


class Maps(NamedTuple):
    """What the MAP_METHODS score: the layer3 map (N, K3, H, W), whole or already pooled onto layer4's grid, and
    the layer4 map (N, K, h, w)."""

    layer3: torch.Tensor
    layer4: torch.Tensor


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

    def scores(self, features: Maps | torch.Tensor, probs: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Raw scores (N,) of the maps or, for methods outside MAP_METHODS, of layer4 maps (N, K, h, w) or pooled
        features (N, K); higher = less familiar."""
        return detector_scores(self.method, self.tensors, features, probs, int(self.info.get("k", DEFAULT_K)))

    def judge(self, features: Maps, probs: torch.Tensor | np.ndarray | None = None) -> list[FamiliarityScore]:
        """One FamiliarityScore per image of the maps."""
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
    features: Maps | torch.Tensor,
    probs: torch.Tensor | np.ndarray | None = None,
    k: int = DEFAULT_K,
) -> np.ndarray:
    """Scores (N,) of `method` given its fitted tensors, on the maps, or for methods outside MAP_METHODS also on
    layer4 maps (N, K, h, w) or pooled features (N, K); higher = less familiar."""
    if method in MAP_METHODS:
        if not isinstance(features, Maps):
            raise ValueError(f"the {method} score needs the layer3 and layer4 maps, got one tensor")
        return _standardised_sum(tensors["standardise"], _patch_parts(tensors, features))
    if isinstance(features, Maps):
        features = features.layer4
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


def _patch_parts(tensors: dict[str, torch.Tensor], maps: Maps, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The two unstandardised scores of `patches`: nearest-patch distance and minus the top cell logit (images in
    chunks, so that a large split never holds all its similarities at once)."""
    best = cell_logits(tensors["classifier"], maps.layer4).amax(dim=2)  # (N, h*w): each cell's top logit
    index = best.topk(min(TOP_CELLS, best.shape[1]), dim=1).indices
    bank, distances = tensors["patches"].float(), []
    for i in range(0, len(index), chunk):
        part = Maps(maps.layer3[i : i + chunk], maps.layer4[i : i + chunk])
        query = project(tensors["projection"], layer3_patches(part, index[i : i + chunk]))  # (n, T, D) unit rows
        per_cell = (2 - 2 * (query @ bank.T).amax(dim=2)).clamp_min(0).sqrt()  # (n, T): each cell's closest patch
        distances.append(per_cell.topk(min(NEAREST, per_cell.shape[1]), dim=1, largest=False).values.mean(dim=1))
    nearest = torch.cat(distances) if distances else torch.zeros(0)
    return nearest.numpy(), -best.amax(dim=1).numpy()


def _standardised_sum(scale: torch.Tensor, parts: tuple[np.ndarray, ...]) -> np.ndarray:
    """The weighted sum of scores, each less its validation mean over its validation spread (rows of `scale`:
    mean, spread and, where there is a third column, the score's weight, else 1)."""
    rows = scale.double().numpy()
    weights = rows[:, 2] if rows.shape[1] > 2 else np.ones(len(rows))
    return sum(w * (part - row[0]) / row[1] for part, row, w in zip(parts, rows, weights)).astype(np.float32)


def _cells(maps: torch.Tensor) -> torch.Tensor:
    """Layer4 maps (N, K, h, w) -> their cells (N, h*w, K), in float32."""
    return maps.float().flatten(2).transpose(1, 2)


def cell_logits(classifier: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Each cell's class logits (N, h*w, C) under the linear classifier (C, K + 1: weights, then bias) whose mean
    over the cells is the image's logits."""
    classifier = classifier.float()
    return _cells(maps) @ classifier[:, :-1].T + classifier[:, -1]


@functools.lru_cache(maxsize=16)
def pooling_matrix(size_in: tuple[int, int], size_out: tuple[int, int]) -> torch.Tensor:
    """Weights (h*w, H*W) that average a map of `size_in` (H, W) over each cell of `size_out` (h, w), with the
    bins of adaptive average pooling; built once per pair of sizes (callers index it, never change it)."""

    def axis(n_in: int, n_out: int) -> torch.Tensor:
        weights = torch.zeros(n_out, n_in)
        for i in range(n_out):
            weights[i, i * n_in // n_out : -(-(i + 1) * n_in // n_out)] = 1
        return weights / weights.sum(1, keepdim=True)

    return torch.kron(axis(size_in[0], size_out[0]), axis(size_in[1], size_out[1]))


def layer3_patches(maps: Maps, index: torch.Tensor) -> torch.Tensor:
    """The layer3 map averaged over the layer4 cells `index` (N, T) -> (N, T, K3), in float32: adaptive average
    pooling onto layer4's grid, computed at those cells only."""
    layer3 = maps.layer3.float()
    weights = pooling_matrix(tuple(layer3.shape[-2:]), tuple(maps.layer4.shape[-2:]))[index]  # (N, T, H*W)
    return weights @ layer3.flatten(2).transpose(1, 2)


def project(projection: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Patches (..., K3) -> unit rows (..., D) in the detector's projection of unit patches."""
    unit = torch.nn.functional.normalize(patches.float(), dim=-1)
    return torch.nn.functional.normalize(unit @ projection.float(), dim=-1)


def principal_projection(unit: torch.Tensor, columns: int = PROJECTED) -> torch.Tensor:
    """The top `columns` eigenvectors (K3, D) of the second-moment matrix of unit patches (N, K3): the directions
    that hold most of the patches' energy, so that few columns keep their similarities."""
    x = unit.double()
    _, vectors = torch.linalg.eigh(x.T @ x / max(len(x), 1))
    return vectors[:, -min(columns, x.shape[1]) :].flip(1).float()


def classifier_tensor(fc: torch.nn.Linear) -> torch.Tensor:
    """The final linear layer as one (C, K + 1) float32 tensor: weights, then bias."""
    return torch.cat([fc.weight, fc.bias[:, None]], dim=1).detach().float().cpu()


def evidence_patches(
    maps: Maps, labels: np.ndarray, classifier: torch.Tensor, count: int = BANK_CELLS
) -> torch.Tensor:
    """Per image, the layer3 patches (N, count, K3) under its `count` layer4 cells with the highest logits of its
    true class: what the model sees where it sees that class."""
    rows = torch.arange(len(maps.layer4))
    evidence = cell_logits(classifier, maps.layer4)[rows, :, torch.as_tensor(labels, dtype=torch.long)]
    return layer3_patches(maps, evidence.topk(min(count, evidence.shape[1]), dim=1).indices)


# ------------------------------------------------------------------------------------------------ fitting
def fit_tensors(
    method: str,
    pooled: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    val: tuple[np.ndarray, ...] | None = None,
    k: int = DEFAULT_K,
    patches: torch.Tensor | None = None,
    classifier: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The statistics of `method` from training features (N, K) and their labels. `knn+msp` also needs the
    validation split's pooled features and softmax (`val`), on which its scores are standardised; `patches` needs
    the training images' evidence patches (N, BANK_CELLS, K3), the classifier (C, K + 1) and, third in `val`, the
    validation Maps."""
    if method == "patches":
        if patches is None or classifier is None or val is None or len(val) < 3:
            raise ValueError("patches needs the training evidence patches, the classifier and the validation maps")
        unit = torch.nn.functional.normalize(patches.float().flatten(0, -2), dim=1)
        projection = principal_projection(unit).to(torch.float16)
        tensors = {
            "patches": project(projection, unit).to(torch.float16),
            "projection": projection,
            "classifier": classifier.detach().float().cpu(),
        }
        return {**tensors, "standardise": _scale(_patch_parts(tensors, val[2]), (PATCH_WEIGHT, 1.0))}
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
        from sklearn.covariance import ledoit_wolf  # shrunk: well conditioned even when N is near K

        cov = ledoit_wolf(pooled - means[labels], assume_centered=True)[0]
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


def _scale(parts: tuple[np.ndarray, ...], weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Rows (mean, standard deviation[, weight]) of each validation score, for `_standardised_sum`."""
    rows = [[float(np.mean(p)), max(float(np.std(p)), 1e-6)] for p in parts]
    if weights is not None:
        rows = [row + [float(w)] for row, w in zip(rows, weights)]
    return torch.tensor(rows, dtype=torch.float32)


def threshold_at(val_scores: np.ndarray, keep: float = KEEP) -> float:
    """The score below which `keep` of the validation images lie: they stay familiar, the rest do not."""
    if len(val_scores) == 0:
        raise ValueError("no validation scores to set the threshold on")
    return float(np.quantile(np.asarray(val_scores, dtype=np.float64), keep, method="inverted_cdf"))


GAUGE_QUANTILES = (0.5, 0.8)  # validation quantiles a detector records: the page's gauge scale and borderline band


def val_quantiles(val_scores: np.ndarray) -> dict[str, float]:
    """The validation scores' GAUGE_QUANTILES, keyed by the quantile as text (they go into the JSON header)."""
    scores = np.asarray(val_scores, dtype=np.float64)
    return {f"{q:g}": float(np.quantile(scores, q, method="inverted_cdf")) for q in GAUGE_QUANTILES}


# ---------------------------------------------------------------------------------------------- measuring
def auroc(familiar: np.ndarray, unfamiliar: np.ndarray) -> float:
    """Area under the ROC curve for telling unfamiliar (positive, higher score) from familiar images; ties count half."""
    from sklearn.metrics import roc_auc_score

    familiar, unfamiliar = np.asarray(familiar, float), np.asarray(unfamiliar, float)
    truth = np.r_[np.zeros(len(familiar)), np.ones(len(unfamiliar))]
    return float(roc_auc_score(truth, np.r_[familiar, unfamiliar]))


def fpr_at_tpr(familiar: np.ndarray, unfamiliar: np.ndarray, tpr: float = KEEP) -> float:
    """Share of unfamiliar images still called familiar when the threshold keeps `tpr` of the familiar ones."""
    threshold = threshold_at(familiar, tpr)
    return float(np.mean(np.asarray(unfamiliar) <= threshold))
