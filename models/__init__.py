"""The model zoo: architectures with named split points, datasets, training, the artifact store
and head export to ONNX.

This package never imports a service; the cloud server, edge client, attacker and benchmarks all
build on it. Run ``python -m models --help`` for its command line (list, train, deploy).
"""

from .architectures import SplitNet
from .artifacts import ArtifactStore, deployment_id_for, validate_id
from .datasets import DATASET_NAMES, ImageDataset, load_dataset, to_images, to_tensor
from .errors import SplitlabError
from .split import split_model
from .zoo import architecture_names, build_model, feature_shapes, split_points

__all__ = [
    "ArtifactStore", "DATASET_NAMES", "ImageDataset", "SplitNet", "SplitlabError",
    "architecture_names", "build_model", "deployment_id_for", "feature_shapes", "load_dataset",
    "split_model", "split_points", "to_images", "to_tensor", "validate_id",
]
