"""Defences against the testbed's attacks, one module each.

Training-time defences change the weights and are options of ``python -m models train``
(:class:`models.training.TrainOptions`), recorded in the model's manifest and spec (so each has its
own model id):

- :mod:`models.defences.dp`: DP-SGD through Opacus (Poisson sampling, per-sample clipping,
  Gaussian noise, the spent epsilon from its accountant), and the BatchNorm -> GroupNorm fix that
  makes an architecture trainable with it.
- :mod:`models.defences.regularisation`: L2 weight decay on every layer or on the output layer
  only (Giammarresi, ``../shared/papers/004``); dropout is an architecture option
  (:func:`models.zoo.build_model`).

Feature (deployment-time) defences are part of a deployment (``python -m models deploy --defence
SPEC``), exported in the head and recorded in ``deployment.json``:

- :mod:`models.defences.features`: Gaussian and Laplace noise, feature dropout, quantisation, a
  deeper head, an extra non-linear layer; the spec grammar, and the defended head's construction.
Submodules import Opacus only when used: it takes seconds to import.
"""
