"""What a gradient-inversion attacker knows: the server's side of federated learning, no more.

In DLG (Zhu et al. 2019), iDLG (Zhao et al. 2020) and Inverting Gradients (Geiping et al. 2020)
the attacker is the server (or anyone reading the updates): it holds the global model it sent to
the clients (architecture and weights: the *whole* model, unlike the split-inference attackers),
and it receives a client's update, the gradient of the client's loss on a private batch. It also
knows the batch size the client trained with (the FedSGD protocol fixes it). It never sees the
batch. :class:`GradientKnowledge` holds exactly that, plus which parameters' gradients the
attacker observes (``observe``: a group such as ``"stem"`` or ``"head"``, or name patterns; see
:mod:`.layers`): the partial-gradient setting of the paper's Table 6. The update itself is not
knowledge but the attack's input, ``reconstruct(gradients)``.

The model comes from the artifact store, by model id or deployment id (the deployed model's full
weights: the model provider is the FL server): ``GradientKnowledge.from_store(store, model_id=...)``
or ``knowledge_for(attack, KnowledgeSource(deployment_id, artifacts=store))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from ..base import AttackParameterError, check_positive_int
from ..knowledge import Knowledge, KnowledgeError, KnowledgeSource
from .layers import observed_parameters


@dataclass
class GradientKnowledge(Knowledge):
    """The global model, its input shape and classes, the observed parameters and the batch size."""

    THREAT_MODEL: ClassVar[str] = "gradient inversion"

    model: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    observe: str | tuple[str, ...] = "all"
    batch_size: int = 1
    arch: str = "the model"
    origin: str = "a model in hand"
    observed: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise AttackParameterError(f"model must be a torch module, got {type(self.model).__name__}")
        self.input_shape = tuple(int(v) for v in self.input_shape)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise AttackParameterError(f"input_shape must be (C, H, W), got {self.input_shape}")
        check_positive_int("num_classes", self.num_classes, 2)
        check_positive_int("batch_size", self.batch_size)
        self.model = self.model.eval()
        self.observed = observed_parameters(self.model, self.observe, self.arch)

    @classmethod
    def from_store(cls, store, model_id: str | None = None, deployment_id: str | None = None, *,
                   observe="all", batch_size: int = 1) -> "GradientKnowledge":
        """The stored model (``model_id``, or the model a deployment was cut from)."""
        from models.loading import load_model

        if (model_id is None) == (deployment_id is None):
            raise KnowledgeError("give exactly one of model_id and deployment_id")
        if model_id is None:
            model_id = store.deployment(deployment_id).get("model_id")
            if not model_id:
                raise KnowledgeError(f"the deployment record of {deployment_id!r} names no model")
        model, manifest = load_model(store, model_id)
        return cls(model, manifest["input_shape"], manifest["num_classes"], observe, batch_size,
                   manifest.get("arch", model_id), f"model {model_id} from the artifact store")

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        if source.artifacts is None:
            return "a gradient-inversion attack needs the artifact store (the global model's weights)"
        if not source.deployment_id and not (source.record or {}).get("model_id"):
            return "a gradient-inversion attack needs a deployment id (or a record naming its model_id)"
        return None

    @classmethod
    def from_source(cls, source: KnowledgeSource, *, observe="all", batch_size: int = 1) -> "GradientKnowledge":
        model_id = (source.record or {}).get("model_id")
        if model_id:
            return cls.from_store(source.artifacts, model_id=model_id, observe=observe, batch_size=batch_size)
        return cls.from_store(source.artifacts, deployment_id=source.deployment_id, observe=observe,
                              batch_size=batch_size)
