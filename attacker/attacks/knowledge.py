"""Where an attacker's knowledge comes from, and one call that turns it into an attack's knowledge.

A threat model says what the attacker knows; the testbed says where that can be found: a captured
``GetHead`` payload or a feature stream in the tap's capture store, the artifact store (the model
provider or the cloud attacks), the edge's public REST endpoint (queries), auxiliary data. The
caller - the ``attacker invert`` CLI, the lab's runner, a benchmark suite - puts what it has into
one :class:`KnowledgeSource`, and ``knowledge_for(attack, source)`` asks the attack's own knowledge
class to take from it only what its threat model allows (``Knowledge.from_source``). A source that
lacks what the threat model needs is refused with a :class:`KnowledgeError` naming what is missing,
so no caller branches on attack names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from models.errors import SplitlabError

from .base import Attack

if TYPE_CHECKING:
    from models.artifacts import ArtifactStore

    from ..captures.store import CaptureStore

HEAD_SOURCES = ("auto", "capture", "artifacts")
AUX_KINDS = ("none", "images", "labelled")


class KnowledgeError(SplitlabError, ValueError):
    """The source lacks what the attack's threat model needs; the message names what is missing."""


def record_layout(record: dict | None) -> str:
    """The layout of a deployment's features (``nchw``, ``nhwc``, ``tokens``): the record's
    ``feature_layout``; for a record without one (written before layouts, or seen at the tap) the
    public architecture's at the recorded split; ``nchw`` when neither is known."""
    record = record or {}
    if record.get("feature_layout"):
        return str(record["feature_layout"])
    from models import zoo

    arch, split = record.get("arch"), record.get("split")
    if arch in zoo.BUILDERS and split:
        try:
            return zoo.feature_layout(arch, split)
        except SplitlabError:  # a split the architecture does not have: nothing known
            pass
    return "nchw"


@dataclass
class KnowledgeSource:
    """Everything an attacker might draw on; each knowledge class takes only what its threat model allows.

    ``record`` is the deployment record (``deployment.json``: input and feature shape and layout,
    arch, split, model id, ...); when it is not given it is read from the artifact store, else from what the tap
    saw (``ListDeployments`` / ``GetHead``). ``head`` / ``tail`` are modules already in hand (a
    benchmark that holds the target). ``query`` is a query function ``images -> features`` with
    ``query_label`` saying what it goes through; without one, queries go to ``edge_url`` (features
    read back in ``captures``), else through ``head`` or the artifact store's ``head.onnx``.
    ``head_from`` picks where the white-box head comes from (``auto``: a head in hand, else the one
    the tap captured, else the artifact store).

    ``adaptive``: the attacker knows the deployment's feature defence (its spec in the record) and
    attacks through it (:mod:`attacker.attacks.inversion.known_defence`); ``clean_queries``: the
    query function or head in hand returns undefended features (the model provider's own head), so
    an adaptive black-box attacker applies the defence to them itself.
    """

    deployment_id: str | None = None
    artifacts: ArtifactStore | None = None
    captures: CaptureStore | None = None
    edge_url: str | None = None
    record: dict | None = None
    head: Any = None
    tail: Any = None
    query: Callable | None = None
    query_label: str = "the given query function"
    aux_images: Any = None
    aux_labels: Any = None
    aux_setting: str | None = None
    aux_name: str | None = None
    head_from: str = "auto"
    query_timeout: float = 10.0
    threads: int = 1
    progress: bool = False
    adaptive: bool = False
    clean_queries: bool = False

    def __post_init__(self) -> None:
        if self.head_from not in HEAD_SOURCES:
            raise KnowledgeError(f"head_from must be one of {', '.join(HEAD_SOURCES)}, got {self.head_from!r}")
        if self.query is not None and not callable(self.query):
            raise KnowledgeError(f"query must be callable (images -> features), got {type(self.query).__name__}")
        for name in ("adaptive", "clean_queries"):
            if not isinstance(getattr(self, name), bool):
                raise KnowledgeError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def require_deployment(self, what: str) -> str:
        if not self.deployment_id:
            raise KnowledgeError(f"{what} needs a deployment id to look it up")
        return self.deployment_id

    def deployment_record(self) -> dict | None:
        """The deployment record: given, from the artifact store, or what the tap saw; None if nowhere."""
        if self.record is not None:
            return self.record
        dep = self.deployment_id
        if dep and self.artifacts is not None and (self.artifacts.deployment_dir(dep) / "deployment.json").is_file():
            self.record = self.artifacts.deployment(dep)
        elif dep and self.captures is not None:
            info = dict(self.captures.deployment_info(dep) or {})
            for head in self.captures.heads(dep):
                for key in ("arch", "split", "input_shape", "feature_shape", "num_classes"):
                    if not info.get(key) and getattr(head, key, None):
                        info[key] = getattr(head, key)
            self.record = info or None
        return self.record

    def feature_layout(self) -> str:
        """The layout of the deployment's features (:func:`record_layout` of its record)."""
        return record_layout(self.deployment_record())

    def input_shape(self) -> tuple[int, ...]:
        shape = (self.deployment_record() or {}).get("input_shape")
        if not shape:
            raise KnowledgeError(f"the input shape of {self.deployment_id!r} is unknown (no deployment record, and "
                                 "no ListDeployments or GetHead captured); give the artifact store")
        return tuple(shape)


class Knowledge:
    """Base of every knowledge class: what it needs from a :class:`KnowledgeSource` and how it takes it.

    ``AUX`` says what auxiliary data the threat model includes (``none``, ``images``, ``labelled``
    images) so that a caller loads it only when needed; :meth:`missing` checks the rest of the
    source without loading anything heavy, so a CLI can refuse a run before it starts.
    """

    AUX: ClassVar[str] = "none"
    THREAT_MODEL: ClassVar[str] = ""

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        """What the source lacks for this threat model (auxiliary data aside), or None."""
        return None

    @classmethod
    def check_source(cls, source: KnowledgeSource) -> None:
        """Refuse a source that lacks anything this threat model needs, auxiliary data included."""
        problem = cls.missing(source)
        if problem is None and cls.AUX != "none" and source.aux_images is None:
            problem = f"the {cls.THREAT_MODEL} attack needs auxiliary images (aux_images)"
        if problem is None and cls.AUX == "labelled" and source.aux_labels is None:
            problem = f"the {cls.THREAT_MODEL} attack needs labelled auxiliary images (aux_labels), not unlabelled ones"
        if problem is not None:
            raise KnowledgeError(problem)

    @classmethod
    def from_source(cls, source: KnowledgeSource, **options) -> "Knowledge":  # pragma: no cover - abstract
        raise NotImplementedError


def knowledge_class(attack: Attack | type[Attack] | str) -> type[Knowledge]:
    """The knowledge class of an attack (an instance, a class or a registry name)."""
    if isinstance(attack, str):
        from .registry import attack_class

        attack = attack_class(attack)
    cls = attack if isinstance(attack, type) else type(attack)
    if not (issubclass(cls, Attack) and isinstance(cls.Knowledge, type) and issubclass(cls.Knowledge, Knowledge)):
        raise TypeError(f"{cls.__name__} is not an attack with a Knowledge class built from a source")
    return cls.Knowledge


def knowledge_for(attack: Attack | type[Attack] | str, source: KnowledgeSource, **options) -> Knowledge:
    """The knowledge object of ``attack``'s threat model, taken from ``source``."""
    kcls = knowledge_class(attack)
    kcls.check_source(source)
    return kcls.from_source(source, **options)
