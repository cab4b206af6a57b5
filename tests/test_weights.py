"""The bundled weights' table: its checksums are those of the files in weights/, and its search order holds."""

from __future__ import annotations

import hashlib

import pytest

from cbam_viz.errors import CbamVizError
from cbam_viz.io.checkpoints import MODEL_KEYS, load_pair
from cbam_viz.io.fileio import sha256_file
from cbam_viz.io.weights import BUNDLED, CHECKOUT_WEIGHTS, WEIGHTS_ENV, BundledWeights, weights_folders


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_the_tables_sha256_is_the_bundled_files(key):
    path = CHECKOUT_WEIGHTS / BUNDLED[key].file_name
    if not path.is_file():
        pytest.skip(f"{path.name} is not in this checkout")
    assert sha256_file(path) == BUNDLED[key].sha256
    assert BUNDLED[key].path({}) == path


def test_every_model_has_one_entry():
    assert set(BUNDLED) == set(MODEL_KEYS)
    assert all(entry.summary and "\n" not in entry.summary for entry in BUNDLED.values())


def test_the_folder_in_the_variable_comes_first_then_the_checkout(tmp_path):
    assert weights_folders({}) == [CHECKOUT_WEIGHTS]
    assert weights_folders({WEIGHTS_ENV: str(tmp_path)}) == [tmp_path, CHECKOUT_WEIGHTS]
    entry = BundledWeights(BUNDLED["cbam"].file_name, hashlib.sha256(b"x").hexdigest(), "test")
    (tmp_path / entry.file_name).write_bytes(b"x")
    assert entry.path({WEIGHTS_ENV: str(tmp_path)}) == tmp_path / entry.file_name


def test_an_altered_bundled_file_is_refused_by_name(tmp_path, monkeypatch):
    altered = tmp_path / BUNDLED["cbam"].file_name
    altered.write_bytes(b"not the bundled weights")
    with pytest.raises(CbamVizError, match=f"{altered} is not the bundled {altered.name}: its sha256 is "):
        BUNDLED["cbam"].path({WEIGHTS_ENV: str(tmp_path)})
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(CbamVizError, match="is not the bundled"):
        load_pair()


def test_a_missing_file_says_where_it_was_looked_for(tmp_path):
    entry = BundledWeights("nowhere.safetensors", "0" * 64, "test")
    assert entry.find({WEIGHTS_ENV: str(tmp_path)}) is None
    expected = f"checkpoint not found: the bundled nowhere.safetensors .*{tmp_path}.*set {WEIGHTS_ENV}"
    with pytest.raises(CbamVizError, match=expected):
        entry.path({WEIGHTS_ENV: str(tmp_path)})
