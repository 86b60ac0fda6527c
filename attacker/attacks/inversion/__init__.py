"""Model inversion: reconstruct the edge's private inputs from the features it sent.

Three attacks of He, Zhang and Lee, "Model Inversion Attacks Against Collaborative Inference"
(ACSAC 2019), one per threat model, each with the calling shape of :mod:`.base`
(``reconstruct(features) -> (N, C, H, W)`` in [0, 1]):

=================== ================================ ===================================================
registry key        attack / params                  knowledge (:mod:`.knowledge`)
=================== ================================ ===================================================
inversion/whitebox  ``WhiteBoxAttack`` (rMLE)         ``WhiteBoxKnowledge``: the head
inversion/blackbox  ``BlackBoxAttack`` (inverse net)  ``BlackBoxKnowledge``: queries + auxiliary images
inversion/queryfree ``QueryFreeAttack`` (shadow head) ``QueryFreeKnowledge``: the tail + labelled aux data
=================== ================================ ===================================================

``heads.py`` turns a captured ONNX head into a differentiable module for the white-box attack.
"""
