"""Dataset loading from the shared .npz archives and the torchvision layouts; privacy splits."""

import gzip
import struct

import numpy as np
import pytest

from models import SplitlabError, load_dataset, to_tensor
from models.datasets import DEBIAN_FASHION
from models.splits import privacy_splits


def test_mnist_from_shared_npz(data_root):
    ds = load_dataset("mnist", data_root)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert set(np.unique(ds.y_test)) == set(range(10))


def test_cifar10_and_faces(data_root):
    cifar = load_dataset("cifar10", data_root)
    assert cifar.x_train.shape == (25000, 32, 32, 3) and cifar.classes[0] == "airplane"
    utk = load_dataset("utkface", data_root)
    assert utk.input_shape == (3, 32, 32) and set(utk.attributes_train) == {"age", "gender", "race"}
    assert len(utk.x_train) + len(utk.x_test) == 23707
    faces = load_dataset("olivetti", data_root)
    assert faces.input_shape == (1, 112, 92) and faces.num_classes == 40
    assert len(faces.x_train) == 280 and len(faces.x_test) == 120


def test_digits_needs_no_files(tmp_path):
    ds = load_dataset("digits", tmp_path)
    assert ds.input_shape == (1, 28, 28) and len(ds.x_train) + len(ds.x_test) == 1797
    x = to_tensor(ds.x_train[:2])
    assert x.shape == (2, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0


def _write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_torchvision_idx_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.source == str(raw)


@pytest.mark.system(str(DEBIAN_FASHION), "dataset-fashion-mnist")
def test_fashion_mnist_from_debian(tmp_path):
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.classes[-1] == "Ankle boot"


def test_missing_dataset_names_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("models.datasets.PROJECT_ROOT", tmp_path / "nowhere" / "project")
    with pytest.raises(SplitlabError) as err:
        load_dataset("cifar10", tmp_path / "empty")
    assert "not found" in str(err.value) and str(tmp_path / "empty") in str(err.value)


def test_wrong_shapes_are_rejected(tmp_path):
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "train.npz", x_train=np.zeros((5, 28, 28), np.uint8), y_train=np.zeros(4, np.int64))
    np.savez(tmp_path / "mnist" / "test.npz", x_test=np.zeros((5, 28, 28), np.uint8), y_test=np.zeros(5, np.int64))
    with pytest.raises(SplitlabError, match="5 images but labels of shape"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(SplitlabError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_privacy_splits_are_disjoint_deterministic_and_complete():
    a = privacy_splits(1000, seed=3)
    b = privacy_splits(1000, seed=3)
    c = privacy_splits(1000, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["target_train"], c["target_train"])
    together = np.concatenate(list(a.values()))
    assert len(together) == 1000 and len(np.unique(together)) == 1000
    assert set(a) == {"target_train", "target_out", "shadow_train", "shadow_out", "aux"}
    assert len(a["target_train"]) == len(a["target_out"]) == 250
