"""Attacks on split inference, one subpackage per family, one registry, one way to feed them.

* :mod:`.registry` - ``family/name`` -> class, the only list of attack names (``names("inversion")``);
  ``create("whitebox", iterations=2000)`` or ``create("inversion/whitebox", ...)`` builds one with its
  parameters validated up front.
* :mod:`.knowledge` - :class:`KnowledgeSource` (deployment, artifact store, capture store, edge,
  auxiliary data) and ``knowledge_for(attack, source)``: the knowledge object of the attack's threat
  model, and nothing more, built from whatever the caller has (the CLI, the lab and the suites).
* :mod:`.base` - what every attack shares (``Attack``, ``AttackParams``, ``AttackParameterError``).
* :mod:`.inversion` - He et al. 2019: ``reconstruct(features) -> images``.
* ``membership/`` - ``score(samples) -> scores`` (higher = member).

Names are re-exported here and imported on first use (PEP 562), so that naming attacks (CLI
choices, the lab's spec) does not load torch.
"""

from importlib import import_module

_INVERSION = "attacker.attacks.inversion"
_EXPORTS = {
    "Attack": "attacker.attacks.base", "AttackParameterError": "attacker.attacks.base",
    "AttackParams": "attacker.attacks.base",
    "ATTACKS": "attacker.attacks.registry", "attack_class": "attacker.attacks.registry",
    "create": "attacker.attacks.registry", "keys": "attacker.attacks.registry", "names": "attacker.attacks.registry",
    "KnowledgeError": "attacker.attacks.knowledge", "KnowledgeSource": "attacker.attacks.knowledge",
    "knowledge_for": "attacker.attacks.knowledge",
    "head_query": "attacker.attacks.queries", "onnx_query": "attacker.attacks.queries",
    "edge_query": "attacker.attacks.queries",
    "InversionAttack": f"{_INVERSION}.base",
    "WhiteBoxKnowledge": f"{_INVERSION}.knowledge", "BlackBoxKnowledge": f"{_INVERSION}.knowledge",
    "QueryFreeKnowledge": f"{_INVERSION}.knowledge", "noise_images": f"{_INVERSION}.knowledge",
    "BlackBoxAttack": f"{_INVERSION}.blackbox", "BlackBoxParams": f"{_INVERSION}.blackbox",
    "inverse_network": f"{_INVERSION}.blackbox",
    "QueryFreeAttack": f"{_INVERSION}.queryfree", "QueryFreeParams": f"{_INVERSION}.queryfree",
    "shadow_head": f"{_INVERSION}.queryfree",
    "SPLIT_DEFAULTS": f"{_INVERSION}.whitebox", "WhiteBoxAttack": f"{_INVERSION}.whitebox",
    "WhiteBoxParams": f"{_INVERSION}.whitebox", "rmle_invert": f"{_INVERSION}.whitebox",
    "total_variation": f"{_INVERSION}.whitebox",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attacker.attacks' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
