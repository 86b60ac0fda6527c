"""Shadow and reference models: trained once, stored under their full training spec, shared.

Membership attacks need many models besides the target: Shokri et al.'s shadow models, LiRA's
reference models on random halves of the data. Every attack and every trial that needs the model
of a spec asks :func:`obtain_models` for it; the first caller trains it and stores it in the
artifact store under :func:`models.training.default_model_id` (a hash of every option that
changes the weights, members included), every later caller loads it. A stored model is only
reused after its stored spec has been compared with the one asked for: a mismatch (an explicit id
reused for other options, or a model stored before specs existed) is an error naming the
differences, never a silent reuse.

Two processes asking for the same spec at once: each model id has a lock file
(``<store>/.locks/model-<id>.lock``, ``fcntl.flock``); the second waits, then finds the model
stored and loads it instead of training it again.

Many small models of one architecture and budget are trained together (:func:`models.fit.fit_many`,
``torch.func`` ``stack_module_state`` + ``vmap``) on CUDA, where one launch of K-times larger
kernels replaces K launches of small ones. On the CPU they are trained one by one
(:data:`VMAP_ON_CPU`), which measured faster: 16 ``lenet5`` on 2000 MNIST images each, one epoch,
one thread, one by one 6.9 s, vmapped 11.6 s (best of 3 on a loaded 2-core machine); the batched
convolutions lose oneDNN's channels-last kernels. ``python -m benchmarks.reference_training``
measures it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import time
from pathlib import Path

import torch
from torch import nn

from .artifacts import ArtifactStore
from .datasets import ImageDataset, load_dataset, to_tensor
from .env import resolve_device
from .errors import SplitlabError
from .fit import fit_many
from .loading import load_model
from .training import (Job, TrainOptions, augment_batch, default_model_id, finish, prepare, spec_differences,
                       train, training_spec)

# Whether obtain_models trains groups of models together on the CPU too (measured slower; see above).
VMAP_ON_CPU = False


def obtain_model(store: ArtifactStore, spec: TrainOptions, device: str | None = "cpu", progress: bool = True,
                 dataset: ImageDataset | None = None, model_id: str | None = None,
                 data_root=None) -> tuple[nn.Module, dict]:
    """The model of ``spec`` (eval mode, on the device) and its manifest: loaded when stored under
    ``model_id`` (default: the spec's default id) with this spec, else trained and stored."""
    return obtain_models(store, [spec], device, progress, dataset, [model_id] if model_id else None, data_root)[0]


def obtain_models(store: ArtifactStore, specs: list[TrainOptions], device: str | None = "cpu",
                  progress: bool = True, dataset: ImageDataset | None = None, model_ids: list[str] | None = None,
                  data_root=None, together: bool | None = None) -> list[tuple[nn.Module, dict]]:
    """One ``(model, manifest)`` per spec, in order: stored ones loaded, missing ones trained
    (grouped and vmapped where :func:`trains_together` says so, or as ``together`` forces) and
    stored. ``dataset`` serves every spec on that dataset (else each is loaded from ``data_root``).
    Identical specs are trained once. ``device`` None reads ``$SPLITLAB_DEVICE``."""
    device = resolve_device(device, "models")
    if model_ids is not None and len(model_ids) != len(specs):
        raise SplitlabError(f"{len(model_ids)} model ids for {len(specs)} specs")
    for spec in specs:
        spec.validate()
    ids = list(model_ids) if model_ids else [default_model_id(s) for s in specs]
    wanted: dict[str, TrainOptions] = {}
    for model_id, spec in zip(ids, specs):
        if model_id in wanted and spec_differences({"spec": training_spec(wanted[model_id])}, spec):
            raise SplitlabError(f"model id {model_id!r} is given to two different specs")
        wanted.setdefault(model_id, spec)
    missing = [i for i in wanted if not _stored(store, i, wanted[i])]
    if missing:
        with _locked(store, missing):
            missing = [i for i in missing if not _stored(store, i, wanted[i])]  # stored meanwhile?
            _train(store, [(i, wanted[i]) for i in missing], device, progress, dataset, data_root,
                   trains_together(device) if together is None else together)
    loaded = {i: load_model(store, i) for i in wanted}
    return [(loaded[i][0].to(device), loaded[i][1]) for i in ids]


def trains_together(device: str) -> bool:
    """Whether groups of same-budget models are vmapped on ``device`` by default."""
    return device == "cuda" or VMAP_ON_CPU


def _stored(store: ArtifactStore, model_id: str, spec: TrainOptions) -> bool:
    """True when ``model_id`` is stored with ``spec``; an error when it is stored with another."""
    if not (store.model_dir(model_id) / "manifest.json").is_file():
        return False
    diff = spec_differences(store.manifest(model_id), spec)
    if diff:
        raise SplitlabError(f"model {model_id!r} in {store.root} was trained with a different spec "
                            f"({'; '.join(diff)}); remove it, or give this spec another id")
    return True


@contextlib.contextmanager
def _locked(store: ArtifactStore, model_ids: list[str]):
    """Exclusive locks on the ids, taken in sorted order (two callers never wait on each other)."""
    folder = Path(store.root) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        for model_id in sorted(model_ids):
            store.model_dir(model_id)  # validates the id before it names a file
            handle = stack.enter_context(open(folder / f"model-{model_id}.lock", "w"))
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def group_key(spec: TrainOptions, n_members: int) -> tuple:
    """Specs with one key can be trained together: one architecture, data and budget, equally many
    members (every step needs one batch shape)."""
    return (spec.arch, spec.dataset, spec.epochs, spec.batch_size, spec.lr, spec.weight_decay, spec.dropout,
            spec.augment, n_members)


def vmappable(spec: TrainOptions) -> bool:
    """Whether fit_many can train ``spec`` with others: not with DP-SGD (per-sample clipping and
    accounting are per model), with weight decay on some layers only, or with early stopping (each
    model stops at its own epoch)."""
    return spec.dp_epsilon is None and spec.weight_decay_scope == "all" and spec.early_stopping is None


def _train(store: ArtifactStore, todo: list[tuple[str, TrainOptions]], device: str, progress: bool,
           dataset: ImageDataset | None, data_root, together: bool) -> None:
    datasets: dict[str, ImageDataset] = {}

    def data(name: str) -> ImageDataset:
        if name not in datasets:
            datasets[name] = dataset if dataset is not None and dataset.name == name else load_dataset(name, data_root)
        return datasets[name]

    groups: dict[tuple, list[tuple[str, Job]]] = {}
    for model_id, spec in todo:
        if not together or spec.eval_each_epoch or not vmappable(spec):
            model, manifest = train(_on(spec, device), progress=progress, dataset=data(spec.dataset))
            _save(store, model_id, model, manifest)
            continue
        job = prepare(_on(spec, device), data(spec.dataset))
        groups.setdefault(group_key(spec, len(job.members)), []).append((model_id, job))
    for group in groups.values():
        jobs = [job for _, job in group]
        first, ds = jobs[0].opts, jobs[0].dataset
        started = time.time()
        results = fit_many([j.model for j in jobs], to_tensor(ds.x_train), torch.from_numpy(ds.y_train), [j.members for j in jobs],
                           [j.opts.seed for j in jobs], epochs=first.epochs, batch_size=first.batch_size,
                           lr=first.lr, weight_decay=first.weight_decay, device=device,
                           augment=augment_batch if first.augment else None, progress=progress,
                           desc=f"train {len(jobs)} x {first.arch} on {first.dataset} together")
        seconds = time.time() - started
        for (model_id, job), result in zip(group, results):
            manifest = finish(job, result, device, seconds)
            manifest["trained_together"] = len(jobs)
            _save(store, model_id, job.model, manifest)


def _on(spec: TrainOptions, device: str) -> TrainOptions:
    return dataclasses.replace(spec, device=device)


def _save(store: ArtifactStore, model_id: str, model: nn.Module, manifest: dict) -> None:
    manifest["model_id"] = model_id
    store.save_model(model_id, model.state_dict(), manifest)
