"""The lab service's budget limits, in a module of their own so that building the ``attacker`` CLI
(which shows them as ``serve``'s defaults) needs neither pydantic nor torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass
class Limits:
    """Budget limits of one service; flags ``--max-*``, env ``SPLITLAB_LAB_MAX_*``."""

    max_samples: int = 100          # private images sent per experiment
    max_train_images: int = 20000   # train.limit
    max_epochs: int = 20            # train.epochs and attack training epochs
    max_iterations: int = 5000      # optimisation iterations of an attack
    max_aux_images: int = 5000      # auxiliary images of a blackbox / queryfree attack
    max_split_points: int = 20
    max_attacks: int = 6
    # membership experiments
    max_membership_samples: int = 1000  # members evaluated per seed (and as many non-members)
    max_shadow_models: int = 16     # shadow_models / reference_models of a membership attack
    max_seeds: int = 5              # seeds (targets trained and attacked) per membership experiment
    max_attack_epochs: int = 500    # epochs of a membership attack network (shokri, nasr)
    # attribute and classifier-inversion experiments
    max_victims: int = 5000         # attribute: victims' images sent through the edge
    max_queries: int = 100000       # classifier inversion through the API: queries of the edge, all people

    @classmethod
    def from_env(cls, env=None) -> "Limits":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            key = "SPLITLAB_LAB_" + f.name.upper()
            if key in env:
                try:
                    values[f.name] = int(env[key])
                except ValueError:
                    raise ValueError(f"{key} must be an integer, got {env[key]!r}") from None
        return cls(**values)
