from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "scale")
    class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DTYPE_UNSPECIFIED: _ClassVar[Tensor.DType]
        FLOAT32: _ClassVar[Tensor.DType]
        FLOAT16: _ClassVar[Tensor.DType]
        BFLOAT16: _ClassVar[Tensor.DType]
        INT8: _ClassVar[Tensor.DType]
        UINT8: _ClassVar[Tensor.DType]
    DTYPE_UNSPECIFIED: Tensor.DType
    FLOAT32: Tensor.DType
    FLOAT16: Tensor.DType
    BFLOAT16: Tensor.DType
    INT8: Tensor.DType
    UINT8: Tensor.DType
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    dtype: Tensor.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scale: float
    def __init__(self, dtype: _Optional[_Union[Tensor.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("deployment_id", "request_id", "features")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    features: Tensor
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class InferReply(_message.Message):
    __slots__ = ("request_id", "logits", "top1", "server_seconds")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    SERVER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    logits: Tensor
    top1: _containers.RepeatedScalarFieldContainer[int]
    server_seconds: float
    def __init__(self, request_id: _Optional[str] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., top1: _Optional[_Iterable[int]] = ..., server_seconds: _Optional[float] = ...) -> None: ...

class StreamReply(_message.Message):
    __slots__ = ("request_id", "reply", "error_code", "error_message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reply: InferReply
    error_code: int
    error_message: str
    def __init__(self, request_id: _Optional[str] = ..., reply: _Optional[_Union[InferReply, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class GetHeadRequest(_message.Message):
    __slots__ = ("deployment_id", "known_sha256")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_SHA256_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    known_sha256: str
    def __init__(self, deployment_id: _Optional[str] = ..., known_sha256: _Optional[str] = ...) -> None: ...

class HeadReply(_message.Message):
    __slots__ = ("deployment_id", "onnx_model", "input_shape", "feature_shape", "preprocessing", "sha256", "split", "arch", "num_classes", "not_modified", "dataset", "dp_compatible")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ONNX_MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    NOT_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DP_COMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    onnx_model: bytes
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    preprocessing: str
    sha256: str
    split: str
    arch: str
    num_classes: int
    not_modified: bool
    dataset: str
    dp_compatible: bool
    def __init__(self, deployment_id: _Optional[str] = ..., onnx_model: _Optional[bytes] = ..., input_shape: _Optional[_Iterable[int]] = ..., feature_shape: _Optional[_Iterable[int]] = ..., preprocessing: _Optional[str] = ..., sha256: _Optional[str] = ..., split: _Optional[str] = ..., arch: _Optional[str] = ..., num_classes: _Optional[int] = ..., not_modified: _Optional[bool] = ..., dataset: _Optional[str] = ..., dp_compatible: _Optional[bool] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeploymentInfo(_message.Message):
    __slots__ = ("deployment_id", "model_id", "arch", "split", "input_shape", "feature_shape", "num_classes", "dataset")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    model_id: str
    arch: str
    split: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    dataset: str
    def __init__(self, deployment_id: _Optional[str] = ..., model_id: _Optional[str] = ..., arch: _Optional[str] = ..., split: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., feature_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., dataset: _Optional[str] = ...) -> None: ...

class ListDeploymentsReply(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentInfo]
    def __init__(self, deployments: _Optional[_Iterable[_Union[DeploymentInfo, _Mapping]]] = ...) -> None: ...
