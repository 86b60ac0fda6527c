"""The kinds of experiment the lab runs, behind one ``POST /v1/experiments``.

The body's ``kind`` picks the spec: ``"inversion"`` (the default, so the split-point specs written
before there were kinds keep working), ``"membership"``, ``"attribute"`` or
``"classifier-inversion"``. A pydantic discriminated union makes the OpenAPI document state each
kind's fields exactly, and a body of one kind is never validated against another's fields (its 422
names the fields of the kind it asked for).
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Discriminator, Tag

from .attribute_spec import AttributeExperimentSpec, check_attribute_spec
from .classifier_inversion_spec import ClassifierInversionSpec, check_classifier_inversion_spec
from .membership_spec import MembershipExperimentSpec, check_membership_spec
from .spec import ExperimentSpec, check_spec

KINDS = ("inversion", "membership", "attribute", "classifier-inversion")


def _kind(value) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "inversion")
        return kind if isinstance(kind, str) else "inversion"  # the inversion spec refuses it, naming kind
    return getattr(value, "kind", None)


ExperimentRequest = Annotated[
    Union[Annotated[ExperimentSpec, Tag("inversion")], Annotated[MembershipExperimentSpec, Tag("membership")],
          Annotated[AttributeExperimentSpec, Tag("attribute")],
          Annotated[ClassifierInversionSpec, Tag("classifier-inversion")]],
    Discriminator(_kind, custom_error_type="invalid_kind",
                  custom_error_message=f"kind must be one of {', '.join(KINDS)} (default inversion)")]


def kind_of(spec: dict) -> str:
    """The kind of a stored spec (specs stored before kinds existed are inversion experiments)."""
    return spec.get("kind") or "inversion"


def check_experiment(spec, config) -> dict:
    """The kind's semantic checks against the service (``config``: a :class:`.app.LabConfig`)."""
    if isinstance(spec, MembershipExperimentSpec):
        return check_membership_spec(spec, config.limits, config.artifacts, config.data_root, config.edge_url)
    if isinstance(spec, AttributeExperimentSpec):
        return check_attribute_spec(spec, config.limits, config.artifacts, config.data_root)
    if isinstance(spec, ClassifierInversionSpec):
        return check_classifier_inversion_spec(spec, config.limits, config.artifacts, config.data_root)
    return check_spec(spec, config.limits, config.artifacts, config.data_root)
