"""A suite trial's target model: the trained model of its ``TrainOptions``, from the artifact store.

Every attack suite starts a trial the same way: the target's options (arch, dataset and the config's
``options``) with a seed and the trial's device, and :func:`models.reference.obtain_model`, which
trains it once and shares it through the artifact store with every later trial that asks.
"""

from __future__ import annotations


def obtain_target(target: dict, seed: int, device: str, ctx):
    """``(model, manifest, dataset, options)`` of a config target trained with ``seed``."""
    from models import ArtifactStore, load_dataset
    from models.reference import obtain_model
    from models.training import TrainOptions

    dataset = load_dataset(target["dataset"])
    options = TrainOptions(arch=target["arch"], dataset=target["dataset"],
                           **{**target["options"], "seed": seed, "device": device})
    model, manifest = obtain_model(ArtifactStore(ctx.artifacts), options, device, progress=ctx.progress,
                                   dataset=dataset)
    return model, manifest, dataset, options
