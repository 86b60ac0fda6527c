"""Gradient inversion: the private batch behind a federated client's update.

===================================== =================================== ==============================
registry key                          attack                              what it optimises
===================================== =================================== ==============================
gradient/dlg                          :class:`DLGAttack`                  pixels + soft labels, L-BFGS, L2
gradient/idlg                         :class:`IDLGAttack`                 pixels (labels from iDLG), L-BFGS, L2
gradient/inverting_gradients          :class:`InvertingGradientsAttack`   pixels, signed Adam, cosine + TV
===================================== =================================== ==============================

All: ``create(key, **params).fit(GradientKnowledge) .reconstruct(gradients) -> (images, labels)``.
The knowledge (:mod:`.knowledge`) is the server's global model and the observed parameters
(:mod:`.layers`); the client's side is :func:`client_gradients`; scoring with Hungarian matching
is :mod:`.scoring`.
"""

from .base import GradientAttack, GradientParams
from .dlg import DLGAttack, DLGParams, IDLGAttack, IDLGParams
from .gradients import client_gradients
from .inverting import InvertingGradientsAttack, InvertingGradientsParams
from .knowledge import GradientKnowledge
from .labels import recover_labels
from .layers import GROUPS, observed_parameters, parameter_groups

__all__ = ["DLGAttack", "DLGParams", "GROUPS", "GradientAttack", "GradientKnowledge", "GradientParams", "IDLGAttack",
           "IDLGParams", "InvertingGradientsAttack", "InvertingGradientsParams", "client_gradients",
           "observed_parameters", "parameter_groups", "recover_labels"]
