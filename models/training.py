"""Train a zoo architecture on a dataset and store it, with its membership ground truth.

Training is :func:`models.fit.fit` (mini-batch Adam, cosine learning-rate decay) with optional
(for colour images) random-crop + flip augmentation, on the scheme's target members or on any given
index set (``members``: shadow and reference models), and the training-time defences of
:mod:`models.defences`: dropout, L2 weight decay on every layer or on the output layer only
(``weight_decay_scope``), and DP-SGD to a target epsilon (``dp_epsilon``, ``dp_delta``,
``dp_max_grad_norm``; the manifest's ``dp`` holds the epsilon the accountant says was spent), and
early stopping (``early_stopping``: the patience in epochs). Early stopping watches the accuracy on
``VALIDATION_IMAGES`` test images (:func:`validation_indices`) after every epoch, ends training once it has not
improved for that many epochs, and keeps the weights of the best epoch (the manifest's
``early_stopping`` says which). Why: the course project's regularised models (003, Table 2) were
trained with dropout and early stopping, and dropout alone left our CIFAR-10 target far more
overfit (attack 0.60 against their 0.51). In the ``privacy`` scheme the test split is never a
member nor a non-member of the target; in the ``full`` scheme it is the non-members. It
is deterministic for a fixed seed on the CPU: every random draw comes from generators seeded from
``seed``.

A model is identified by its *training spec* (:func:`training_spec`): every option that changes the
weights, the members as a digest. The manifest stores it, :func:`default_model_id` hashes it (so
a changed option gives a new id instead of an old model), and :func:`spec_differences` tells a
caller that found a stored model whether it is the one asked for.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .datasets import ImageDataset, load_dataset, to_tensor
from .defences.regularisation import decayed_parameters, validate_scope
from .env import DEVICES, resolve_device
from .errors import SplitlabError
from .fit import FitResult, fit
from .splits import privacy_splits
from .zoo import build_model


@dataclass
class TrainOptions:
    arch: str
    dataset: str
    epochs: int = 5
    limit: int | None = None
    dropout: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    augment: bool = False
    scheme: str = "privacy"
    eval_each_epoch: bool = False
    members: tuple[int, ...] | None = None  # indices into the train split; None: the scheme's target members
    device: str = "cpu"
    weight_decay_scope: str = "all"          # "all" layers, or the "output" layer only (paper 004)
    dp_epsilon: float | None = None          # DP-SGD to this epsilon (None: no DP)
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0            # per-sample gradient clipping bound
    early_stopping: int | None = None        # patience in epochs (None: train every epoch)

    def __post_init__(self) -> None:
        # one spelling per value, so that equal specs hash equally (0 and 0.0, a list and a tuple)
        self.dropout, self.weight_decay, self.lr = float(self.dropout), float(self.weight_decay), float(self.lr)
        if self.members is not None:
            self.members = tuple(sorted(int(i) for i in self.members))
        if self.dp_epsilon is not None:
            self.dp_epsilon = float(self.dp_epsilon)
        self.dp_delta, self.dp_max_grad_norm = float(self.dp_delta), float(self.dp_max_grad_norm)

    def validate(self) -> None:
        if self.epochs < 1:
            raise SplitlabError(f"--epochs must be at least 1, got {self.epochs}")
        if self.limit is not None and self.limit < 1:
            raise SplitlabError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise SplitlabError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SplitlabError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise SplitlabError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.device not in DEVICES:
            raise SplitlabError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        validate_scope(self.weight_decay_scope, self.weight_decay)
        if self.early_stopping is not None:
            if self.early_stopping < 1:
                raise SplitlabError(f"--early-stopping (patience in epochs) must be at least 1, got {self.early_stopping}")
            if self.dp_epsilon is not None:
                raise SplitlabError("early stopping with DP-SGD is not supported: the privacy accountant plans "
                                    "for every epoch; give --early-stopping or --dp-epsilon")
        if self.dp_epsilon is not None:
            from .defences.dp import validate_budget

            validate_budget(self.dp_epsilon, self.dp_delta, self.dp_max_grad_norm)
        else:
            unused = [f"--dp-{flag} {value:g}" for flag, name, value in
                      (("delta", "dp_delta", self.dp_delta), ("clip", "dp_max_grad_norm", self.dp_max_grad_norm))
                      if value != _DEFAULTS[name]]
            if unused:
                raise SplitlabError(f"{' and '.join(unused)} only apply to DP-SGD; give --dp-epsilon too")
        if self.members is not None:
            if not self.members:
                raise SplitlabError("members is empty: a model needs at least one training image")
            if self.members[0] < 0:
                raise SplitlabError(f"member indices must be >= 0, got {self.members[0]}")
            if len(set(self.members)) != len(self.members):
                raise SplitlabError("member indices must be distinct (an index is repeated)")


# Options that do not change the weights: an accuracy curve is only measured, and the device
# changes float rounding, not what is trained.
NOT_WEIGHTS = ("eval_each_epoch", "device")
_DEFAULTS = {f.name: f.default for f in fields(TrainOptions)}
# Defence options added after models were stored: in a spec only when they are used, so that the
# spec (and id) of every model trained without them stays what it was.
_DP_OPTIONS = ("dp_epsilon", "dp_delta", "dp_max_grad_norm")
VALIDATION_IMAGES = 2000  # early stopping watches this many test images, drawn once (validation_indices)


def validation_indices(n_test: int) -> np.ndarray:
    """The test images early stopping watches: a fixed draw (seed 0) of ``VALIDATION_IMAGES``, the
    same for every model. Not the first or last ones: a test split may be sorted by class (the
    shared CIFAR-10's last 2,000 are all ships and trucks)."""
    return np.sort(np.random.default_rng(0).permutation(n_test)[:VALIDATION_IMAGES])


def defence_tags(opts: TrainOptions) -> list[str]:
    """Short names of the training-time defences ``opts`` uses (``do0.5``, ``wd0.001``, ``l2out``,
    ``dp2``): the readable part of a default id, and the manifest's ``defences``."""
    tags = []
    if opts.dropout:
        tags.append(f"do{opts.dropout:g}")
    if opts.weight_decay:
        tags.append(f"wd{opts.weight_decay:g}")
    if opts.weight_decay_scope == "output":
        tags.append("l2out")
    if opts.dp_epsilon is not None:
        tags.append(f"dp{opts.dp_epsilon:g}")
    if opts.early_stopping is not None:
        tags.append(f"es{opts.early_stopping}")
    return tags


def members_digest(members) -> str:
    """``"<count>:<sha256>"`` of a member index list: what a spec and an id hold instead of the list."""
    text = ",".join(str(int(i)) for i in members)
    return f"{len(members)}:{hashlib.sha256(text.encode()).hexdigest()}"


def training_spec(opts: TrainOptions) -> dict:
    """Every option that changes the trained weights (members as their digest): the key a stored
    model is found and checked by."""
    spec = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in NOT_WEIGHTS}
    if opts.dp_epsilon is None:
        for name in _DP_OPTIONS:
            spec.pop(name)
    if opts.weight_decay_scope == _DEFAULTS["weight_decay_scope"]:
        spec.pop("weight_decay_scope")
    if opts.early_stopping is None:
        spec.pop("early_stopping")
    if opts.members is not None:
        spec["members"] = members_digest(opts.members)
    return spec


def spec_hash(opts: TrainOptions) -> str:
    return hashlib.sha256(json.dumps(training_spec(opts), sort_keys=True).encode()).hexdigest()[:10]


def default_model_id(opts: TrainOptions) -> str:
    """``ARCH-DATASET-sSEED`` for the all-defaults spec (the id compose, the README and earlier stores
    use), otherwise that prefix, readable defence tags and a hash of the whole spec: two specs that
    train different weights never share a default id."""
    parts = [opts.arch, opts.dataset, f"s{opts.seed}", *defence_tags(opts)]
    if training_spec(opts) != training_spec(TrainOptions(opts.arch, opts.dataset, seed=opts.seed)):
        parts.append(spec_hash(opts))
    return "-".join(parts)


def stored_spec(manifest: dict) -> dict:
    """The training spec of a stored model; rebuilt from its options for models stored before
    manifests carried one (they had no explicit members)."""
    if "spec" in manifest:
        return manifest["spec"]
    options = manifest.get("options", {})
    known = {f.name for f in fields(TrainOptions)}
    try:
        return training_spec(TrainOptions(**{k: v for k, v in options.items() if k in known}))
    except (TypeError, SplitlabError):
        return options


def spec_differences(manifest: dict, opts: TrainOptions) -> list[str]:
    """``"epochs: stored 1, asked 5"`` for each weight-changing option where a stored model and
    ``opts`` differ; empty when the stored model is the one ``opts`` would train."""
    have, want = stored_spec(manifest), training_spec(opts)
    return [f"{k}: stored {have.get(k)!r}, asked {want.get(k)!r}"
            for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]

def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (after zero padding by ``pad``) and horizontal flip, per image.

    One gather for the whole batch (a flip is a reversed column index), not a loop over images:
    on a GPU the loop was one small copy kernel per image, more launches than the model's own.
    The random draws (offsets, then flips, from ``gen``) are those of the loop it replaced."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).to(x.device)
    flips = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(0), cols) + offs[:, 1:]           # (n, w)
    rows = torch.arange(h, device=x.device) + offs[:, :1]                             # (n, h)
    picked = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()                                   # (n, h, w, c) -> NCHW


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy, computed on the device the model is on."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i:i + batch].to(device)).argmax(1).cpu() == y[i:i + batch]).sum().item()
    return correct / max(1, len(x))


@dataclass
class Job:
    """A model about to be trained: its seeded initial weights and its exact members."""

    opts: TrainOptions
    dataset: ImageDataset
    model: nn.Module
    members: np.ndarray
    non_members: dict
    splits: dict
    replaced: list[str] = field(default_factory=list)  # layers DP-SGD compatibility replaced

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensor(self.dataset.x_train[self.members]), torch.from_numpy(self.dataset.y_train[self.members])


def prepare(opts: TrainOptions, dataset: ImageDataset) -> Job:
    """Seed, build the initial model and resolve the members of ``opts`` (explicit, or the scheme's
    target members); the non-members are the complement in the train split for explicit members."""
    opts.validate()
    ds = dataset
    torch.manual_seed(opts.seed)
    model = build_model(opts.arch, ds.num_classes, ds.input_shape, opts.dropout)
    replaced = []
    if opts.dp_epsilon is not None:
        from .defences.dp import make_compatible

        model, replaced = make_compatible(model)
    n = len(ds.x_train)
    if opts.members is None:
        parts = privacy_splits(n, opts.seed, opts.scheme)
        members = parts["target_train"]
        if opts.limit is not None:
            members = members[: opts.limit]
        if opts.scheme == "full":
            non_members = {"split": "test", "indices": list(range(len(ds.x_test)))}
        else:
            non_members = {"split": "train", "indices": parts["target_out"][: len(members)].tolist()}
        splits = {k: v.tolist() for k, v in parts.items() if k != "target_train"}
    else:
        members = np.asarray(opts.members, dtype=np.int64)
        if len(members) and members[-1] >= n:
            raise SplitlabError(f"member index {int(members[-1])} is outside {opts.dataset}'s train split "
                                f"({n} images)")
        if opts.limit is not None:
            members = members[: opts.limit]
        non_members = {"split": "train", "indices": np.setdiff1d(np.arange(n), members).tolist()}
        splits = {}
    return Job(opts, ds, model, members, non_members, splits, replaced)


def train(opts: TrainOptions, data_root=None, progress: bool = True, dataset: ImageDataset | None = None):
    """Train per ``opts``; returns ``(model, manifest)`` (the manifest is ready to store)."""
    job = prepare(opts, dataset or load_dataset(opts.dataset, data_root))
    ds = job.dataset
    device = resolve_device(opts.device, "models train")
    x_test, y_test = to_tensor(ds.x_test), torch.from_numpy(ds.y_test)
    curve = []

    stopper = None
    if opts.early_stopping is not None:
        val = torch.from_numpy(validation_indices(len(y_test)))
        stopper = EarlyStopping(opts.early_stopping, x_test[val], y_test[val])

    def measure(epoch: int, model: nn.Module) -> bool:
        if opts.eval_each_epoch and epoch < opts.epochs:
            curve.append(accuracy(model, x_test, y_test))
            tqdm.write(f"epoch {epoch}: test accuracy {curve[-1]:.4f}")
        return stopper is not None and stopper.stop(epoch, model)  # True ends fit

    privacy = None
    if opts.dp_epsilon is not None:
        from .defences.dp import DPSGD

        privacy = DPSGD(opts.dp_epsilon, opts.dp_delta, opts.dp_max_grad_norm)
    started = time.time()
    # Image batches in channels-last order: oneDNN's convolutions run about 25 % faster that way
    # on this CPU (same results up to float rounding).
    result = fit(job.model, *job.train_tensors(), epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr,
                 weight_decay=opts.weight_decay, decay_only=decayed_parameters(job.model, opts.weight_decay_scope),
                 privacy=privacy, seed=opts.seed, device=device, augment=augment_batch if opts.augment else None,
                 channels_last=len(ds.input_shape) == 3, progress=progress,
                 desc=f"train {opts.arch} on {opts.dataset}",
                 on_epoch=measure if opts.eval_each_epoch or stopper is not None else None)
    manifest_extra = {}
    if stopper is not None:
        manifest_extra["early_stopping"] = stopper.restore_best(job.model)
    manifest = finish(job, result, device, time.time() - started, curve, privacy)
    return job.model, manifest | manifest_extra


class EarlyStopping:
    """Keeps the weights of the epoch with the best validation accuracy; says to stop once
    ``patience`` epochs have passed without a better one."""

    def __init__(self, patience: int, x_val: torch.Tensor, y_val: torch.Tensor):
        self.patience, self.x_val, self.y_val = patience, x_val, y_val
        self.best_accuracy, self.best_epoch, self.last_epoch = -1.0, 0, 0
        self.best_state: dict | None = None

    def stop(self, epoch: int, model: nn.Module) -> bool:
        self.last_epoch = epoch
        acc = accuracy(model, self.x_val, self.y_val)
        if acc > self.best_accuracy:
            self.best_accuracy, self.best_epoch = acc, epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def restore_best(self, model: nn.Module) -> dict:
        """Load the best epoch's weights into ``model``; what the manifest records."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return {"patience": self.patience, "best_epoch": self.best_epoch, "stopped_after": self.last_epoch,
                "validation_accuracy": round(self.best_accuracy, 4),
                "validation": f"{len(self.y_val)} images of the test split (models.training.validation_indices)"}


def finish(job: Job, result: FitResult, device: str, seconds: float, curve: list[float] | None = None,
           privacy=None) -> dict:
    """Measure the trained model (which ends on the CPU, in eval mode) and describe it: the manifest.
    ``privacy`` (a :class:`models.defences.dp.DPSGD` after training) adds the ``dp`` record."""
    opts, ds = job.opts, job.dataset
    model = job.model.eval()
    train_acc = accuracy(model, *job.train_tensors())
    test_acc = accuracy(model, to_tensor(ds.x_test), torch.from_numpy(ds.y_test))
    model.cpu()
    options = asdict(opts)
    spec = training_spec(opts)
    options["members"] = spec.get("members")
    manifest = {
        "arch": opts.arch,
        "dataset": opts.dataset,
        "dataset_source": ds.source,
        "seed": opts.seed,
        "options": options,
        "spec": spec,
        "device": device,
        "num_classes": ds.num_classes,
        "input_shape": list(ds.input_shape),
        "preprocessing": "uint8 HWC image -> float32 CHW, divided by 255 (range [0, 1])",
        "members": {"split": "train", "indices": job.members.tolist()},
        "non_members": job.non_members,
        "splits": job.splits,
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "train_seconds": seconds,
        "epoch_seconds": result.epoch_seconds,
        "epoch_losses": result.losses,
        "epoch_test_accuracy": (curve or []) + [test_acc] if opts.eval_each_epoch else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "defences": defence_tags(opts),
    }
    if privacy is not None:
        manifest["dp"] = {**privacy.record(), "steps": result.steps, "replaced_layers": job.replaced}
        manifest["dp_compatible"] = True  # the stored weights are those of build_model(..., dp_compatible=True)
    return manifest

def versions() -> dict:
    import onnxruntime
    import sklearn

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "scikit-learn": sklearn.__version__}
