"""The edge: runs a deployment's head (ONNX Runtime, or torch on CUDA) on private inputs and sends
the features to the cloud; also serves a small public REST endpoint ``/v1/infer``."""
