"""The model zoo: architectures with named split points, datasets, training, the artifact store
and head export to ONNX.

This package never imports a service; the cloud server, edge client, attacker and benchmarks all
build on it. Run ``python -m models --help`` for its command line (list, train, deploy).
"""

from importlib import import_module

# Names re-exported from the submodules, imported on first use (PEP 562): ``import models.env`` or
# ``models.errors`` stays light, and torch loads only when something that needs it is touched.
_EXPORTS = {
    "SplitNet": "architectures",
    "ArtifactStore": "artifacts", "deployment_id_for": "artifacts", "validate_id": "artifacts",
    "DATASET_NAMES": "datasets", "ImageDataset": "datasets", "load_dataset": "datasets",
    "to_images": "datasets", "to_tensor": "datasets",
    "SplitlabError": "errors",
    "split_model": "split",
    "architecture_names": "zoo", "build_model": "zoo", "feature_shapes": "zoo", "split_points": "zoo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
