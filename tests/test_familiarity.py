"""Familiarity: the detectors against hand computations, the threshold rule, fitting on a tiny synthetic pack, the
checkpoint round trip (with, without and with damaged statistics), the Qt resource reader, and where it shows."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.covariance import ledoit_wolf

from cbam_viz.app.studio import Studio
from cbam_viz.app.views import familiarity_banner, knowledge_markdown, model_info_markdown, scores_json
from cbam_viz.cam.engine import compare
from cbam_viz.cli import main as cli_main
from cbam_viz.data.pack import AssetPack
from cbam_viz.data.rcc import read_rcc
from cbam_viz.data.scenes import compose_unknown_scene
from cbam_viz.data.splits import MaterializedSplit, materialize_split
from cbam_viz.data.synthetic import make_synthetic_pack
from cbam_viz.familiarity.cli import extract
from cbam_viz.familiarity.detectors import (
    BANK_CELLS,
    NEAREST,
    PATCH_WEIGHT,
    PROJECTED,
    TOP_CELLS,
    Familiarity,
    Maps,
    auroc,
    detector_scores,
    evidence_patches,
    fit_tensors,
    fpr_at_tpr,
    pooling_matrix,
    principal_projection,
    threshold_at,
)
from cbam_viz.io.checkpoints import CheckpointError, FamiliarityWarning, load_checkpoint, store_familiarity
from tests.conftest import CLASS_NAMES, attach_knn_detector, make_checkpoint, random_image

RNG = np.random.default_rng(0)


def clusters(n_per_class: int = 60, classes: int = 3, dim: int = 16, spread: float = 0.3):
    centres = RNG.normal(0, 3, (classes, dim)) + 6  # positive, like post-ReLU features
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + RNG.normal(0, spread, (len(labels), dim)), labels, centres


def test_mahalanobis_matches_the_textbook_formula():
    x, labels, _ = clusters()
    tensors = fit_tensors("mahalanobis", x, labels, 3)
    means = np.stack([x[labels == c].mean(0) for c in range(3)])
    precision = np.linalg.inv(ledoit_wolf(x - means[labels], assume_centered=True)[0])
    query = RNG.normal(5, 2, (7, x.shape[1]))
    expected = np.sqrt(np.min([np.einsum("nk,kl,nl->n", query - m, precision, query - m) for m in means], axis=0))
    got = detector_scores("mahalanobis", tensors, torch.from_numpy(query).float())
    np.testing.assert_allclose(got, expected, rtol=2e-3)


def textbook_ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """Ledoit and Wolf (2004), written out: the shrinkage towards mu * I of the empirical covariance."""
    n, k = centred.shape
    emp = centred.T @ centred / n
    mu = np.trace(emp) / k
    delta = ((emp - mu * np.eye(k)) ** 2).sum() / k
    beta = min(((centred**2).T @ centred**2).sum() / n - (emp**2).sum(), k * n * delta) / (k * n)
    shrink = beta / delta
    return (1 - shrink) * emp + shrink * mu * np.eye(k)


@pytest.mark.parametrize("n", [12, 40, 20000])
def test_scikit_learns_ledoit_wolf_is_the_textbook_one(n):
    x = RNG.normal(0, [1.0, 2.0, 3.0, 0.5, 1.5, 1.0], (n, 6))
    centred = x - x.mean(0)
    np.testing.assert_allclose(ledoit_wolf(centred, assume_centered=True)[0], textbook_ledoit_wolf(centred), rtol=1e-10)
    if n == 20000:  # samples abound: the sample covariance
        np.testing.assert_allclose(np.diag(textbook_ledoit_wolf(centred))[:3], [1, 4, 9], rtol=0.05)


def test_knn_is_the_distance_to_the_kth_normalised_neighbour():
    bank = RNG.random((50, 8)) + 0.1
    tensors = fit_tensors("knn", bank, np.zeros(50, int), 1)
    query = RNG.random((4, 8))
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    distances = np.sort(np.linalg.norm(q[:, None] - unit[None], axis=2), axis=1)
    for k in (1, 5):
        got = detector_scores("knn", tensors, torch.from_numpy(query).float(), k=k)
        np.testing.assert_allclose(got, distances[:, k - 1], atol=2e-3)  # the bank is stored in float16


def test_msp_is_one_minus_the_top_probability():
    probs = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33]])
    np.testing.assert_allclose(detector_scores("msp", {}, torch.zeros(2, 1), probs), [0.3, 0.66])


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_detectors_separate_far_points(method):
    x, labels, centres = clusters()
    tensors = fit_tensors(method, x, labels, 3)
    near = torch.from_numpy(centres[labels[:30]] + RNG.normal(0, 0.3, (30, x.shape[1]))).float()
    far = torch.from_numpy(RNG.normal(6, 3, (30, x.shape[1]))).float()
    assert auroc(detector_scores(method, tensors, near), detector_scores(method, tensors, far)) > 0.99


def test_knn_plus_msp_is_the_sum_of_the_two_scores_standardised_on_validation():
    x, labels, centres = clusters()
    val = (centres[labels[:40]] + RNG.normal(0, 0.5, (40, x.shape[1]))).astype(np.float32)
    val_probs = RNG.dirichlet(np.ones(3), 40)
    with pytest.raises(ValueError, match="validation split"):
        fit_tensors("knn+msp", x, labels, 3)
    tensors = fit_tensors("knn+msp", x, labels, 3, val=(val, val_probs), k=5)
    knn_val = detector_scores("knn", tensors, torch.from_numpy(val), k=5)
    msp_val = 1 - val_probs.max(1)
    query, query_probs = RNG.normal(0, 3, (7, x.shape[1])).astype(np.float32), RNG.dirichlet(np.ones(3), 7)
    knn_q = detector_scores("knn", tensors, torch.from_numpy(query), k=5)
    expected = (knn_q - knn_val.mean()) / knn_val.std() + (1 - query_probs.max(1) - msp_val.mean()) / msp_val.std()
    got = detector_scores("knn+msp", tensors, torch.from_numpy(query), query_probs, k=5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    on_val = detector_scores("knn+msp", tensors, torch.from_numpy(val), val_probs, k=5)
    assert abs(on_val.mean()) < 1e-4  # both parts have mean 0 on the split they were standardised on


@pytest.mark.parametrize("size_in, size_out", [((14, 14), (7, 7)), ((13, 7), (7, 4)), ((5, 6), (3, 3))])
def test_pooling_matrix_averages_as_adaptive_pooling_does(size_in, size_out):
    maps = torch.rand(2, 3, *size_in, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.adaptive_avg_pool2d(maps, size_out).flatten(2)
    torch.testing.assert_close(maps.flatten(2) @ pooling_matrix(size_in, size_out).T, expected)


def test_patches_score_is_the_two_distances_by_hand_standardised_on_validation():
    gen = torch.Generator().manual_seed(3)
    k4, k3, classes = 6, 4, 3

    def maps(n: int) -> Maps:  # a 3x3 layer4 grid over a 6x6 layer3 map: each cell pools a 2x2 block
        return Maps(torch.rand(n, k3, 6, 6, generator=gen), torch.rand(n, k4, 3, 3, generator=gen))

    train, val, query = maps(20), maps(15), maps(4)
    labels = RNG.integers(0, classes, 20)
    classifier = torch.randn(classes, k4 + 1, generator=gen)
    weights, bias = classifier[:, :-1].numpy(), classifier[:, -1].numpy()

    def cells(m: Maps, i: int) -> tuple[np.ndarray, np.ndarray]:  # (9, K) layer4 cells, (9, K3) 2x2-pooled layer3
        pooled = m.layer3[i].reshape(k3, 3, 2, 3, 2).mean((2, 4)).reshape(k3, 9).numpy().T
        return m.layer4[i].reshape(k4, 9).numpy().T, pooled

    patches = evidence_patches(train, labels, classifier)
    assert patches.shape == (20, BANK_CELLS, k3)
    for i in range(20):
        layer4, layer3 = cells(train, i)
        evidence = np.argsort(-(layer4 @ weights[labels[i]] + bias[labels[i]]))[:BANK_CELLS]
        np.testing.assert_allclose(patches[i].numpy(), layer3[evidence], rtol=1e-5)
    tensors = fit_tensors("patches", None, labels, classes, (None, None, val), patches=patches, classifier=classifier)
    projection, bank = tensors["projection"].float().numpy(), tensors["patches"].float().numpy()
    assert projection.shape == (k3, k3) and bank.shape == (20 * BANK_CELLS, k3)
    np.testing.assert_allclose(projection.T @ projection, np.eye(k3), atol=2e-3)  # orthonormal directions

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def by_hand(m: Maps) -> np.ndarray:
        parts = []
        for i in range(len(m.layer4)):
            layer4, layer3 = cells(m, i)
            top = (layer4 @ weights.T + bias).max(1)  # each cell's highest class logit
            chosen = unit(unit(layer3[np.argsort(-top)[:TOP_CELLS]]) @ projection)
            per_cell = np.sqrt(np.maximum(0.0, 2 - 2 * (chosen @ bank.T).max(1)))  # each cell's closest bank patch
            parts.append((np.sort(per_cell)[:NEAREST].mean(), -top.max()))
        return np.array(parts)

    on_val, on_query = by_hand(val), by_hand(query)
    expected = ((on_query - on_val.mean(0)) / on_val.std(0)) @ np.array([PATCH_WEIGHT, 1.0])
    np.testing.assert_allclose(detector_scores("patches", tensors, query), expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="layer3 and layer4 maps"):
        detector_scores("patches", tensors, query.layer4)


def test_principal_projection_keeps_the_distances_of_patches_in_a_subspace():
    """Patches that span a few directions keep their pairwise similarities in that many principal columns."""
    gen = torch.Generator().manual_seed(4)
    basis = torch.linalg.qr(torch.randn(16, 3, generator=gen)).Q  # three orthonormal directions in 16 channels
    unit = torch.nn.functional.normalize(torch.randn(200, 3, generator=gen) @ basis.T, dim=1)
    projection = principal_projection(unit, 3)
    assert projection.shape == (16, 3)
    torch.testing.assert_close((unit @ projection) @ (unit @ projection).T, unit @ unit.T, atol=1e-4, rtol=0)
    assert principal_projection(unit, 64).shape == (16, 16)  # never more columns than channels


def test_threshold_keeps_95_percent_and_the_measures_by_hand():
    scores = np.arange(1, 101, dtype=float)  # 100 validation images
    threshold = threshold_at(scores)
    assert np.mean(scores <= threshold) == 0.95
    familiar, unfamiliar = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.5, 0.25])
    pairs = [(u > f) + 0.5 * (u == f) for u in unfamiliar for f in familiar]
    assert auroc(familiar, unfamiliar) == pytest.approx(np.mean(pairs))
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    # threshold keeping 95% of 4 familiar images = 0.4: two of three unfamiliar ones fall at or under it
    assert fpr_at_tpr(familiar, unfamiliar) == pytest.approx(2 / 3)


def test_unknown_scenes_are_deterministic_and_show_no_class(tmp_path):
    pack = AssetPack.load(make_synthetic_pack(tmp_path / "pack", n_classes=3, n_distractors=2))
    a = compose_unknown_scene(pack, "test", 4, 64)
    assert a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(compose_unknown_scene(pack, "test", 4, 64)))
    assert not np.array_equal(np.asarray(a), np.asarray(compose_unknown_scene(pack, "test", 5, 64)))
    # the synthetic classes are saturated non-green hues, the distractors green, the backgrounds red <= 80
    red = np.asarray(a)[..., 0].astype(int)
    assert red.max() <= 80 + 30  # background jitter aside, no red, yellow or white class object was drawn


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("famdata")
    pack = AssetPack.load(make_synthetic_pack(root / "pack", n_classes=5, n_distractors=2))
    materialize_split(pack, root, "val", per_class=4, size=64)
    materialize_split(pack, root, "test", per_class=4, size=64)
    return root


@pytest.mark.slow
def test_fit_command_stores_a_detector_that_flags_odd_images(data_dir, tmp_path, capsys):
    path = make_checkpoint(tmp_path / "c.safetensors", "resnet50-cbam", 3, class_names=AssetPack.load(
        data_dir).class_names)
    before = load_file(str(path))
    fit = ["familiarity", "fit", "--data", str(data_dir), "--checkpoint", str(path), "--images", "60",
           "--batch-size", "16", "--k", "3"]
    assert cli_main([*fit, "--method", "knn+msp"]) == 0, capsys.readouterr().err
    fam = load_checkpoint(path).familiarity
    assert fam is not None and fam.method == "knn+msp" and fam.tensors["standardise"].shape == (2, 2)
    # a random-weight model's softmax means nothing, so the separation below is measured on knn alone
    assert cli_main([*fit, "--method", "knn"]) == 0, capsys.readouterr().err
    after = load_file(str(path))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model's tensors are kept exactly
    loaded = load_checkpoint(path)
    fam = loaded.familiarity
    assert fam is not None and fam.method == "knn" and fam.info["train_images"] == 60 and fam.info["k"] == 3
    assert fam.tensors["bank"].shape == (60, 2048) and "standardise" not in fam.tensors
    val = MaterializedSplit(data_dir, "val")
    val_features = extract({"m": loaded}, [val[i].image for i in range(len(val))], len(val))["m"]
    val_scores = fam.scores(torch.from_numpy(val_features.pooled), val_features.probs)
    assert np.mean(val_scores <= fam.threshold) >= 0.95
    # the gauge's scale: the median and 80% quantile of these very scores
    quantiles = fam.info["val_quantiles"]
    assert np.mean(val_scores < quantiles["0.8"]) < 0.8 <= np.mean(val_scores <= quantiles["0.8"])
    assert quantiles["0.5"] <= quantiles["0.8"] <= fam.threshold
    checkers = (np.indices((64, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    odd = [Image.fromarray(np.full((64, 64, 3), v, np.uint8)) for v in (128, 255)] + [Image.fromarray(checkers).convert("RGB")]
    odd += [Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    odd_features = extract({"m": loaded}, odd, len(odd))["m"]
    odd_scores = fam.scores(torch.from_numpy(odd_features.pooled), odd_features.probs)
    assert auroc(val_scores, odd_scores) > 0.95
    result = compare(odd[1], {"cbam": loaded})
    assert result.results["cbam"].familiarity.unfamiliar


@pytest.mark.slow
def test_fit_command_stores_a_patches_detector_the_app_uses(data_dir, tmp_path, capsys):
    path = make_checkpoint(tmp_path / "c.safetensors", "resnet50", 3, class_names=AssetPack.load(data_dir).class_names)
    fit = ["familiarity", "fit", "--data", str(data_dir), "--checkpoint", str(path), "--images", "40",
           "--batch-size", "16"]  # fmt: skip
    assert cli_main(fit) == 0, capsys.readouterr().err  # the default method: patches
    loaded = load_checkpoint(path)
    fam = loaded.familiarity
    assert fam is not None and fam.method == "patches" and fam.info["feature"].startswith("layer3 patches")
    assert fam.tensors["patches"].shape == (40 * BANK_CELLS, PROJECTED) and fam.tensors["projection"].shape == (1024, PROJECTED)
    assert fam.tensors["classifier"].shape == (loaded.meta.num_classes, 2049)
    torch.testing.assert_close(fam.tensors["classifier"][:, :-1], loaded.model.fc.weight.float())
    val = MaterializedSplit(data_dir, "val")
    val_features = extract({"m": loaded}, [val[i].image for i in range(len(val))], len(val), maps=True)["m"]
    assert np.mean(fam.scores(val_features.maps, val_features.probs) <= fam.threshold) >= 0.95
    result = compare(random_image(4), {"baseline": loaded}).results["baseline"].familiarity
    assert result is not None and result.method == "patches" and result.threshold == fam.threshold
    _damage(path, lambda s, h: ({**s, "familiarity.projection": s["familiarity.projection"][:, :8].contiguous()}, h))
    with pytest.warns(FamiliarityWarning, match="differ in width"):
        assert load_checkpoint(path).familiarity is None
    _damage(path, lambda s, h: ({**s, "familiarity.classifier": s["familiarity.classifier"][:2]}, h))
    with pytest.warns(FamiliarityWarning, match="familiarity.classifier has shape"):
        assert load_checkpoint(path).familiarity is None


def test_checkpoints_without_familiarity_say_not_available(tiny_models):
    assert tiny_models["cbam"].familiarity is None
    assert "familiarity**: not available" in model_info_markdown(tiny_models["cbam"])
    assert "validation metrics" in model_info_markdown(tiny_models["cbam"])
    res = compare(random_image(0), tiny_models)
    assert all(r.familiarity is None for r in res.results.values())


def _damage(path: Path, change) -> None:
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    state, header = change(state, header)
    save_file(state, str(path), metadata=header)


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda s, h: ({k: v for k, v in s.items() if k != "familiarity.bank"}, h), "familiarity.bank"),
        (lambda s, h: ({**s, "familiarity.bank": s["familiarity.bank"][:, :7]}, h), "shape"),
        (lambda s, h: ({**s, "familiarity.bank": s["familiarity.bank"] * float("nan")}, h), "non-finite"),
        (lambda s, h: (s, {**h, "familiarity": "{not json"}), "familiarity statistics are unusable"),
        (lambda s, h: (s, {k: v for k, v in h.items() if k != "familiarity"}), "without their header entry"),
        (lambda s, h: (s, {**h, "familiarity": json.dumps({"method": "magic", "threshold": 1})}), "magic"),
    ],
)
def test_damaged_familiarity_loads_with_a_warning(tiny_checkpoints, tmp_path, change, named):
    path = tmp_path / "c.safetensors"
    path.write_bytes(tiny_checkpoints["cbam"].read_bytes())
    attach_knn_detector(path, [random_image(1)], threshold=0.1)
    assert load_checkpoint(path).familiarity is not None
    _damage(path, change)
    with pytest.warns(FamiliarityWarning, match=named):
        loaded = load_checkpoint(path)
    assert loaded.familiarity is None and loaded.meta.arch == "resnet50-cbam"


def test_store_familiarity_refuses_foreign_files(tmp_path):
    pth = tmp_path / "x.pth"
    torch.save({"fc.weight": torch.zeros(2, 2048)}, pth)
    with pytest.raises(CheckpointError, match="safetensors"):
        store_familiarity(pth, Familiarity("knn", 1.0, {"bank": torch.zeros(1, 2048)}))


@pytest.fixture(scope="module")
def familiar_pair(tiny_checkpoints, tmp_path_factory):
    """The tiny pair, each with a knn detector (k=1) to which random_image(5) is familiar and a grey image not."""
    root = tmp_path_factory.mktemp("familiar")
    paths = {}
    for key, src in tiny_checkpoints.items():
        paths[key] = root / src.name
        paths[key].write_bytes(src.read_bytes())
        attach_knn_detector(paths[key], [random_image(5)], unfamiliar=Image.new("RGB", (72, 56), (128, 128, 128)))
    return {key: load_checkpoint(path) for key, path in paths.items()}


def test_banner_and_json_name_the_unfamiliar_models(familiar_pair):
    studio = Studio(familiar_pair, examples_dir=None)
    known = studio.analyse(studio.open(random_image(5)))
    assert familiarity_banner(known) == ""
    entry = scores_json(known)["models"]["cbam"]["familiarity"]
    assert entry["unfamiliar"] is False and entry["method"] == "knn" and entry["score"] <= entry["threshold"]
    odd = studio.analyse(studio.open(Image.new("RGB", (72, 56), (128, 128, 128))))
    banner = familiarity_banner(odd)
    assert "ResNet50 and CBAM-ResNet50" in banner and f"the {len(CLASS_NAMES)} classes" in banner
    assert all(m["familiarity"]["unfamiliar"] for m in scores_json(odd)["models"].values())
    assert "knn (kNN distance), threshold" in model_info_markdown(familiar_pair["cbam"])


def test_knowledge_panel_names_the_training_data(tiny_models):
    text = knowledge_markdown(tiny_models)
    assert text.startswith(f"**ResNet50 and CBAM-ResNet50** know the {len(CLASS_NAMES)} classes")
    for loaded in tiny_models.values():
        loaded.meta.dataset["name"] = "stamp scenes"
    try:
        assert "stamp subjects, trained on photos of single objects" in knowledge_markdown(tiny_models)
    finally:
        for loaded in tiny_models.values():
            loaded.meta.dataset.pop("name")


# ------------------------------------------------------------------------------------- Qt resource bundles
def write_rcc(files: dict[str, bytes], version: int, compress: set[str]) -> bytes:
    """A Qt .rcc bundle of `files` (paths 'a/b.txt'), laid out as Qt's rcc tool does (breadth-first tree)."""
    tree: dict = {}
    for path, data in files.items():
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = path
    names, name_at, data_blob, data_at = b"", {}, b"", {}
    nodes: list[tuple[str, object]] = [("", tree)]
    i = 0
    while i < len(nodes):  # breadth-first: each directory's children are consecutive
        name, value = nodes[i]
        if name and name not in name_at:
            name_at[name] = len(names)
            names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        if isinstance(value, dict):
            nodes += sorted(value.items())
        i += 1
    node_size = 14 if version < 2 else 22
    first_child, k = {}, 1
    for idx, (_, value) in enumerate(nodes):
        if isinstance(value, dict):
            first_child[idx], k = k, k + len(value)
    table = b""
    for idx, (name, value) in enumerate(nodes):
        offset = name_at.get(name, 0)
        if isinstance(value, dict):
            entry = struct.pack(">IHII", offset, 2, len(value), first_child[idx])
        else:
            raw = files[value]
            packed = struct.pack(">I", len(raw)) + zlib.compress(raw) if value in compress else raw
            data_at[value] = len(data_blob)
            data_blob += struct.pack(">I", len(packed)) + packed
            entry = struct.pack(">IHHHI", offset, 1 if value in compress else 0, 0, 0, data_at[value])
        table += entry + (b"\0" * 8 if version >= 2 else b"")
        assert len(entry) + (8 if version >= 2 else 0) == node_size
    head = 20 + (4 if version >= 3 else 0)
    tree_at, data_off = head, head + len(table)
    names_off = data_off + len(data_blob)
    return b"qres" + struct.pack(">IIII", version, tree_at, data_off, names_off) + b"\0" * (head - 20) + table + \
        data_blob + names


@pytest.mark.parametrize("version", [1, 3])
def test_rcc_reader_reads_plain_and_zlib_files(tmp_path, version):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buffer, format="WEBP")
    files = {"gcompris/src/a/photo.webp": buffer.getvalue(), "gcompris/readme.txt": b"hello " * 50, "top.bin": b"x"}
    path = tmp_path / "bundle.rcc"
    path.write_bytes(write_rcc(files, version, compress={"gcompris/readme.txt"}))
    assert read_rcc(path) == files
    with Image.open(io.BytesIO(read_rcc(path)["gcompris/src/a/photo.webp"])) as im:
        assert im.size == (8, 6)


def test_rcc_reader_refuses_other_files(tmp_path):
    path = tmp_path / "not.rcc"
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(Exception, match="not a Qt resource bundle"):
        read_rcc(path)


def test_export_manifest_has_the_familiarity_columns(familiar_pair, tiny_checkpoints, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    random_image(5).save(src / "known.png")
    Image.new("RGB", (72, 56), (128, 128, 128)).save(src / "odd.png")
    out = tmp_path / "out"
    argv = ["export", str(src), "--out", str(out), "--size", "64", "--baseline",
            familiar_pair["baseline"].meta.source, "--cbam", familiar_pair["cbam"].meta.source]
    assert cli_main(argv) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    flags = {(Path(r["image"]).name, r["model"]): r["unfamiliar"] for r in rows}
    assert flags == {("known.png", "baseline"): False, ("known.png", "cbam"): False,
                     ("odd.png", "baseline"): True, ("odd.png", "cbam"): True}
    assert all(r["familiarity_method"] == "knn" and r["familiarity_threshold"] > 0 for r in rows)
    header = (out / "manifest.csv").read_text().splitlines()[0].split(",")
    assert {"familiarity_score", "familiarity_threshold", "unfamiliar", "familiarity_method"} <= set(header)
    plain = tmp_path / "plain"
    assert cli_main(["export", str(src), "--out", str(plain), "--size", "64", "--baseline",
                     str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"])]) == 0
    rows = [json.loads(line) for line in (plain / "manifest.jsonl").read_text().splitlines()]
    assert all(r["familiarity_score"] is None and r["unfamiliar"] is None for r in rows)


def test_eval_reports_the_score_distribution(familiar_pair):
    from cbam_viz.eval.scenes import familiarity_distribution, format_familiarity

    scenes = [{"baseline": {"familiarity": s}, "cbam": {"familiarity": 2 * s}} for s in np.linspace(0, 1, 21)]
    models = dict(familiar_pair)
    threshold = familiar_pair["cbam"].familiarity.threshold
    dist = familiarity_distribution(scenes, models)
    cbam_scores = 2 * np.linspace(0, 1, 21)
    assert dist["cbam"]["unfamiliar"] == pytest.approx(np.mean(cbam_scores > threshold))
    assert dist["cbam"]["percentiles"]["p50"] == pytest.approx(1.0)
    text = format_familiarity({**dist, "baseline": None}, {"baseline": "ResNet50", "cbam": "CBAM-ResNet50"})
    assert "ResNet50: not available" in text and "CBAM-ResNet50 (knn, threshold" in text


@pytest.mark.slow
def test_eval_command_measures_every_detector_on_every_set(data_dir, tmp_path, capsys):
    names = AssetPack.load(data_dir).class_names
    paths = [make_checkpoint(tmp_path / f"{arch}.safetensors", arch, seed, class_names=names)
             for seed, arch in enumerate(("resnet50", "resnet50-cbam"))]  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        random_image(10 + i).save(photos / f"p{i}.png")
    out = tmp_path / "eval"
    args = ["familiarity", "eval", "--data", str(data_dir), "--baseline", str(paths[0]), "--cbam", str(paths[1]),
            "--images", "40", "--unknown-scenes", "6", "--photos", str(photos), "--out", str(out), "--k", "3"]
    assert cli_main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "familiarity_eval.json").read_text())
    assert report["counts"] == {"test": 20, "unknown_scenes": 6, "photos": 4, "val": 20, "val_unknown_scenes": 6,
                                "examples": report["counts"]["examples"]}  # fmt: skip
    for entry in report["models"].values():
        assert set(entry["detectors"]) == {"mahalanobis", "knn", "msp", "knn+msp", "patches"}
        for row in entry["detectors"].values():
            for name in ("unknown_scenes", "photos", "val_unknown_scenes"):
                assert 0 <= row[name]["auroc"] <= 1 and 0 <= row[name]["fpr95"] <= 1
    printed = capsys.readouterr().out
    assert "val check: 20 val scenes against 6 unknown-subject scenes" in printed
    assert printed.count("patches") == 2
