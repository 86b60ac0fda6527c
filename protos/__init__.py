"""The gRPC protocol between edge and cloud (``split_inference.proto``) and its generated stubs.

The stubs are committed; regenerate them with ``python -m protos.generate``.
"""
