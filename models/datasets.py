"""Image datasets, read from local files only (nothing is ever downloaded).

Every dataset is returned as an :class:`ImageDataset` of ``uint8`` arrays, channels last, with a
train and a test part. Models see images as float tensors in [0, 1], channels first
(:func:`to_tensor`); there is no per-dataset normalisation, so reconstructions and originals live
in the same [0, 1] range that PSNR and SSIM are computed in.

Where files are looked for, in order:

1. the ``root`` argument, else ``$SPLITLAB_DATA``;
2. ``./data``;
3. ``../shared/datasets`` next to the project (and next to the current directory);
4. for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).

In each root, the ``.npz`` archives of the shared dataset folder are tried first, then the
standard torchvision layouts (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SplitlabError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DATASET_NAMES = ["mnist", "fashion-mnist", "cifar10", "utkface", "olivetti", "digits"]


@dataclass
class ImageDataset:
    """A labelled image dataset: ``uint8`` images (N, H, W, C) and ``int64`` labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    source: str
    # Extra per-image attributes (e.g. UTKFace age and race), aligned with the images.
    attributes_train: dict[str, np.ndarray] = field(default_factory=dict)
    attributes_test: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x_train.shape[1:]
        return (c, h, w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise SplitlabError(f"dataset split must be 'train' or 'test', got {split!r}")


def to_tensor(images: np.ndarray):
    """uint8 images (N, H, W, C) -> float32 torch tensor (N, C, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def to_images(tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`, clipping to [0, 1]: float (N, H, W, C) numpy array."""
    return tensor.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()


def data_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for dataset files, in order."""
    first = root or os.environ.get("SPLITLAB_DATA")
    roots = [Path(first)] if first else []
    roots += [Path("data"), PROJECT_ROOT.parent / "shared" / "datasets", Path.cwd().parent / "shared" / "datasets"]
    unique: list[Path] = []
    for r in roots:
        if r.resolve() not in [u.resolve() for u in unique]:
            unique.append(r)
    return unique


def load_dataset(name: str, root: str | os.PathLike | None = None) -> ImageDataset:
    """Load dataset ``name`` from the first root that has it."""
    if name not in _LOADERS:
        raise SplitlabError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    ds = _LOADERS[name](data_roots(root))
    _check(ds)
    return ds


# --- checks -----------------------------------------------------------------------------------

def _check(ds: ImageDataset) -> None:
    for split in ("train", "test"):
        x, y = ds.part(split)
        if x.ndim != 4 or x.dtype != np.uint8:
            raise SplitlabError(f"{ds.name} ({ds.source}): {split} images must be uint8 (N, H, W, C), "
                                f"got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise SplitlabError(f"{ds.name} ({ds.source}): {split} has {len(x)} images but labels "
                                f"of shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= ds.num_classes):
            raise SplitlabError(f"{ds.name} ({ds.source}): {split} labels outside 0..{ds.num_classes - 1}")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise SplitlabError(f"{ds.name} ({ds.source}): train images {ds.x_train.shape[1:]} and test "
                            f"images {ds.x_test.shape[1:]} differ in shape")


def _npz(path: Path, *keys: str) -> list[np.ndarray]:
    try:
        with np.load(path) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise SplitlabError(f"{path}: missing arrays {missing} (has {archive.files})")
            return [archive[k] for k in keys]
    except (OSError, ValueError) as exc:
        raise SplitlabError(f"{path}: not a readable .npz archive ({exc})") from exc


def _channels_last(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        return x
    raise SplitlabError(f"{path}: images must be (N, H, W) or (N, H, W, C), got shape {x.shape}")


def _missing(name: str, looked: list[Path], how: str) -> SplitlabError:
    places = "\n  ".join(str(p) for p in looked)
    return SplitlabError(f"dataset {name!r} not found. Looked in:\n  {places}\n{how}")


def _holdout(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed train/test split for datasets that ship as one set."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - fraction)))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


# --- loaders ----------------------------------------------------------------------------------

DIGIT_CLASSES = [str(i) for i in range(10)]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise SplitlabError(f"{path}: idx header says {dims} but holds {arr.size} values")
    return arr.reshape(dims)


def _idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    for suffix in ("", ".gz"):
        img = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        lab = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if img.exists() and lab.exists():
            return _read_idx(img), _read_idx(lab).astype(np.int64)
    return None


def _mnist_like(name: str, npz_dir: str, raw_dir: str, extra: list[Path], roots: list[Path]):
    """Per root: the shared .npz pair, then torchvision's idx files; then the ``extra`` folders."""
    looked = []
    for root in roots:
        train, test = root / npz_dir / "train.npz", root / npz_dir / "test.npz"
        looked.append(train)
        if train.exists() and test.exists():
            xtr, ytr = _npz(train, "x_train", "y_train")
            xte, yte = _npz(test, "x_test", "y_test")
            return ImageDataset(name, _channels_last(xtr, train), ytr.astype(np.int64),
                                _channels_last(xte, test), yte.astype(np.int64), DIGIT_CLASSES, str(train.parent))
        folder = root / raw_dir / "raw"
        looked.append(folder)
        tr, te = _idx_pair(folder, "train"), _idx_pair(folder, "t10k")
        if tr and te:
            return ImageDataset(name, tr[0][..., None], tr[1], te[0][..., None], te[1], DIGIT_CLASSES, str(folder))
    for folder in extra:
        looked.append(folder)
        tr, te = _idx_pair(folder, "train"), _idx_pair(folder, "t10k")
        if tr and te:
            return ImageDataset(name, tr[0][..., None], tr[1], te[0][..., None], te[1], DIGIT_CLASSES, str(folder))
    return looked


def _load_mnist(roots):
    found = _mnist_like("mnist", "mnist", "MNIST", [], roots)
    if isinstance(found, ImageDataset):
        return found
    raise _missing("mnist", found, "Put mnist/train.npz and mnist/test.npz (see shared/datasets/README.md) "
                   "or torchvision's MNIST/raw idx files under a data root (--data-root or SPLITLAB_DATA).")


def _load_fashion(roots):
    found = _mnist_like("fashion-mnist", "fashion-mnist", "FashionMNIST", [DEBIAN_FASHION], roots)
    if isinstance(found, ImageDataset):
        found.classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
        return found
    raise _missing("fashion-mnist", found, "Install it with `apt-get install dataset-fashion-mnist`, "
                   "or put torchvision's FashionMNIST/raw idx files under a data root.")


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load_cifar10(roots):
    looked = []
    for root in roots:
        train, test = root / "cifar10" / "train.npz", root / "cifar10" / "test.npz"
        looked.append(train)
        if train.exists() and test.exists():
            xtr, ytr = _npz(train, "x_train", "y_train")
            xte, yte = _npz(test, "x_test", "y_test")
            return ImageDataset("cifar10", xtr, ytr.astype(np.int64), xte, yte.astype(np.int64),
                                CIFAR_CLASSES, str(train.parent))
        folder = root / "cifar-10-batches-py"
        looked.append(folder)
        if (folder / "data_batch_1").exists() and (folder / "test_batch").exists():
            from torchvision.datasets import CIFAR10

            tr, te = CIFAR10(str(root), train=True), CIFAR10(str(root), train=False)
            return ImageDataset("cifar10", tr.data, np.asarray(tr.targets, np.int64), te.data,
                                np.asarray(te.targets, np.int64), list(tr.classes), str(folder))
    raise _missing("cifar10", looked, "Put cifar10/train.npz and cifar10/test.npz (see shared/datasets/"
                   "README.md) or torchvision's cifar-10-batches-py folder under a data root.")


def load_cifar10_lossless(root=None) -> tuple[np.ndarray, np.ndarray]:
    """The exact (never JPEG-compressed) CIFAR-10 images of ``cifar10/lossless_subset.npz``."""
    looked = []
    for r in data_roots(root):
        path = r / "cifar10" / "lossless_subset.npz"
        looked.append(path)
        if path.exists():
            x, y = _npz(path, "x", "y")
            return x, y.astype(np.int64)
    raise _missing("cifar10 lossless subset", looked, "See shared/datasets/README.md.")


def _load_utkface(roots):
    looked = []
    for root in roots:
        path = root / "utkface" / "utkface_32px.npz"
        looked.append(path)
        if path.exists():
            x, age, gender, race = _npz(path, "images", "age", "gender", "race")
            tr, te = _holdout(len(x), 0.2)
            attrs = {"age": age, "gender": gender, "race": race}
            return ImageDataset("utkface", x[tr], gender[tr].astype(np.int64), x[te],
                                gender[te].astype(np.int64), ["male", "female"], str(path),
                                {k: v[tr] for k, v in attrs.items()}, {k: v[te] for k, v in attrs.items()})
    raise _missing("utkface", looked, "Put utkface/utkface_32px.npz (see shared/datasets/README.md) "
                   "under a data root. Labels are gender; age and race are attributes.")


def _load_olivetti(roots):
    looked = []
    for root in roots:
        path = root / "olivetti" / "att_faces_orl_92x112.npz"
        looked.append(path)
        if path.exists():
            x, pid, idx = _npz(path, "images", "person_id", "image_index")
            test = idx > 7  # images 8, 9 and 10 of each person are held out (7 train / 3 test)
            x = _channels_last(x, path)
            return ImageDataset("olivetti", x[~test], pid[~test].astype(np.int64), x[test],
                                pid[test].astype(np.int64), [f"person {i}" for i in range(40)], str(path))
    raise _missing("olivetti", looked, "Put olivetti/att_faces_orl_92x112.npz (AT&T faces, see "
                   "shared/datasets/README.md) under a data root.")


def _load_digits(roots):
    """scikit-learn's 8x8 digits, upsampled to 28x28 so that MNIST-sized models take them."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    x = (big.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    y = digits.target.astype(np.int64)
    tr, te = _holdout(len(x), 0.2)
    return ImageDataset("digits", x[tr], y[tr], x[te], y[te], DIGIT_CLASSES, "sklearn.datasets.load_digits")


_LOADERS = {
    "mnist": _load_mnist,
    "fashion-mnist": _load_fashion,
    "cifar10": _load_cifar10,
    "utkface": _load_utkface,
    "olivetti": _load_olivetti,
    "digits": _load_digits,
}
