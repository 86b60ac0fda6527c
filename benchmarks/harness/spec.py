"""Trials as plain data: what one run of one suite computes, and what it may use to compute it.

A trial is a target (the fields of a ``TrainOptions`` or a deployment id), an attack (its
``"family/name"`` and parameters), a seed and a device, nothing live. That is what lets any executor
run it: a local worker process or a Ray task on another machine gets the trial and a
:class:`Context` (paths and thread counts as strings and numbers), and builds everything else from
the artifact store. Its id is a hash of the canonical JSON of that spec, so the same trial has the
same id in every run, on every machine, and the results store recognises work already done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass

from models.errors import SplitlabError


def canonical_json(value) -> str:
    """JSON with sorted keys and no whitespace: equal specs give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Trial:
    """One unit of work. ``label`` is for people (progress bars, ``--only``) and not part of the id."""

    suite: str
    trial_id: str
    target: dict
    attack: dict
    seed: int
    device: str = "cpu"
    label: str = ""

    @classmethod
    def make(cls, suite: str, target: dict, attack: dict | None = None, seed: int = 0, device: str = "cpu",
             label: str = "") -> "Trial":
        attack = dict(attack or {})
        spec = {"suite": suite, "target": target, "attack": attack, "seed": int(seed), "device": device}
        trial_id = hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:16]
        return cls(suite, trial_id, dict(target), attack, int(seed), device, label or trial_id)

    def spec(self) -> dict:
        """The part that determines the result (everything but the label)."""
        return {"suite": self.suite, "target": self.target, "attack": self.attack, "seed": self.seed,
                "device": self.device}

    def on(self, device: str) -> "Trial":
        """The same trial on ``device`` (a different trial: timings and float results may differ)."""
        return self if device == self.device else Trial.make(self.suite, self.target, self.attack, self.seed, device,
                                                              self.label)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Trial":
        return cls(**data)


@dataclass(frozen=True)
class Context:
    """What a trial may use besides its spec; plain values so that it pickles to any worker.

    ``artifacts`` is the artifact store's path (absolute): on a cluster it must name the same
    (shared) folder on every node. ``fresh`` asks the trial to recompute what it would otherwise
    reuse from the artifact store (``--fresh``). Anything that changes a trial's metrics belongs in
    the trial, never here, or the results store would hand back results of a different trial.
    """

    artifacts: str
    device: str = "cpu"
    threads: int = 1
    out_dir: str = "."
    fresh: bool = False
    progress: bool = False


def expand(suite: str, targets: list[tuple[str, dict]], attacks: list[tuple[str, dict]] | None,
           seeds: list[int], device: str = "cpu") -> list[Trial]:
    """Every (target, attack, seed) combination, in config order; each pair is ``(label, spec)``."""
    attacks = attacks or [("", {})]
    trials = []
    for (t_label, target), (a_label, attack), seed in itertools.product(targets, attacks, seeds):
        label = " ".join(part for part in (t_label, a_label, f"seed {seed}") if part)
        trials.append(Trial.make(suite, target, attack, seed, device, label))
    return trials


def seeds_of(config: dict, default: tuple[int, ...] = (0,)) -> list[int]:
    """The config's ``seeds`` (a list, or a count ``n`` meaning ``0..n-1``), checked."""
    seeds = config.get("seeds", list(default))
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SplitlabError(f"'seeds' must be a non-empty list of integers or a count, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SplitlabError(f"'seeds' repeats a seed: {seeds}")
    return seeds


def checked_entry(kind: str, spec, required: set[str], known: set[str]) -> dict:
    """A config entry (a target, an attack) as a mapping with the ``required`` keys and no others
    than ``known``; the error names what is missing or unknown."""
    if not isinstance(spec, dict):
        raise SplitlabError(f"each {kind} must be a mapping, got {spec!r}")
    missing, unknown = required - set(spec), set(spec) - known
    if missing or unknown:
        raise SplitlabError(f"{kind} {spec!r}: " + "; ".join(
            ([f"missing {', '.join(sorted(missing))}"] if missing else []) +
            ([f"unknown {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"] if unknown else [])))
    return spec


def trial_options(kind: str, name: str, spec: dict) -> dict:
    """A target's training ``options`` (a mapping without ``seed``: the trial's seed is the seed)."""
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise SplitlabError(f"{kind} {name}: 'options' must be a mapping of TrainOptions fields, got {options!r}")
    if "seed" in options:
        raise SplitlabError(f"{kind} {name}: the seed comes from the config's 'seeds', not from options")
    return options


def config_attack(family: str, spec, known: set[str]) -> tuple[str, type, dict]:
    """A config's attack entry checked: ``(label, attack class, entry)``; the attack must be of
    ``family`` and its ``params`` valid, so a bad one fails before any trial runs."""
    from attacker.attacks.registry import attack_class

    spec = checked_entry(f"{family} attack", spec, {"name"}, known)
    cls = attack_class(spec["name"])
    if cls.family != family:
        raise SplitlabError(f"the {family} suite runs {family} attacks, not {spec['name']!r}")
    cls.Params.from_dict(spec.get("params", {}))
    return spec.get("label") or cls.name, cls, spec
