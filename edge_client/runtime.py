"""Run a deployment's head on the edge: ONNX Runtime (CPU, or its CUDA execution provider) or
torch (CPU or CUDA), with a clear message and a CPU fallback when CUDA is asked for but missing.

With ONNX Runtime the cast to a reduced-precision wire dtype is fused into the head's graph
(``Cast`` to float16, or ``QuantizeLinear`` to int8 with a per-tensor scale), so the edge never
pays numpy's slow float32 -> float16 conversion: the head directly outputs what goes on the wire.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from models import SplitlabError
from models.env import cuda_fallback_message, torch_cuda_status

RUNTIMES = ("onnxruntime", "torch")
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
DEVICES = ("cpu", "cuda")


@dataclass
class HeadOutput:
    features: np.ndarray          # float32, or already float16 / int8 when the cast is fused
    scale: float | None = None    # the int8 scale when ``features`` is int8


@dataclass
class HeadRunner:
    """``runner(x)`` runs the head on float32 (N, C, H, W) inputs."""

    runtime: str
    device: str
    wire: str
    run: object
    notes: list[str] = field(default_factory=list)

    def __call__(self, x: np.ndarray) -> HeadOutput:
        return self.run(np.ascontiguousarray(x, dtype=np.float32))

    @property
    def description(self) -> str:
        return f"{self.runtime} on {self.device}" + (" (" + "; ".join(self.notes) + ")" if self.notes else "")


def cuda_status() -> tuple[bool, bool, str]:
    """(torch has CUDA, ONNX Runtime has its CUDA provider, a sentence describing both)."""
    import onnxruntime as ort

    torch_cuda, torch_text = torch_cuda_status()
    providers = ort.get_available_providers()
    ort_cuda = "CUDAExecutionProvider" in providers
    return torch_cuda, ort_cuda, f"{torch_text}; ONNX Runtime execution providers: {', '.join(providers)}"


def fallback_message(runtime: str, detail: str) -> str:
    return cuda_fallback_message("edge-client", runtime, detail)


def fuse_wire_cast(onnx_bytes: bytes, wire: str) -> bytes:
    """The head with its output converted to the wire dtype inside the graph.

    float16: ``Cast``. int8: ``scale = max(|x|) / 127`` and ``QuantizeLinear(x, scale)``
    (round half to even, like :func:`protos.wire.encode`), with ``scale`` as a second output.
    Other wire dtypes are returned unchanged (encoded by numpy).
    """
    if wire not in ("float16", "int8"):
        return onnx_bytes
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    name = graph.output[0].name
    del graph.output[:]
    if wire == "float16":
        graph.node.append(helper.make_node("Cast", [name], ["wire"], to=TensorProto.FLOAT16))
        graph.output.append(helper.make_tensor_value_info("wire", TensorProto.FLOAT16, None))
    else:
        graph.initializer.extend([
            helper.make_tensor("wire_127", TensorProto.FLOAT, [], [127.0]),
            helper.make_tensor("wire_tiny", TensorProto.FLOAT, [], [1e-30]),
            helper.make_tensor("wire_zero", TensorProto.INT8, [], [0]),
        ])
        graph.node.extend([
            helper.make_node("Abs", [name], ["wire_abs"]),
            helper.make_node("ReduceMax", ["wire_abs"], ["wire_peak"], keepdims=0),
            helper.make_node("Div", ["wire_peak", "wire_127"], ["wire_ratio"]),
            helper.make_node("Max", ["wire_ratio", "wire_tiny"], ["wire_scale"]),
            helper.make_node("QuantizeLinear", [name, "wire_scale", "wire_zero"], ["wire"]),
        ])
        graph.output.extend([helper.make_tensor_value_info("wire", TensorProto.INT8, None),
                             helper.make_tensor_value_info("wire_scale", TensorProto.FLOAT, [])])
    return model.SerializeToString()


def onnxruntime_runner(onnx_bytes: bytes, device: str = "cpu", threads: int = 1, wire: str = "float32",
                       fuse_cast: bool = True) -> HeadRunner:
    from models.onnx_runtime import head_session

    notes = []
    providers = ["CPUExecutionProvider"]
    used = "cpu"
    if device == "cuda":
        _, ort_cuda, detail = cuda_status()
        if ort_cuda:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            used = "cuda"
        else:
            msg = fallback_message("ONNX Runtime", detail)
            print(msg, file=sys.stderr)
            notes.append("CUDA unavailable, fell back to CPU")
    model = fuse_wire_cast(onnx_bytes, wire) if fuse_cast else onnx_bytes
    sess = head_session(model, threads, providers)
    in_name = sess.get_inputs()[0].name
    if fuse_cast and wire == "int8":
        def run(x):
            q, scale = sess.run(None, {in_name: x})
            return HeadOutput(q, float(scale))
    else:
        def run(x):
            return HeadOutput(sess.run(None, {in_name: x})[0])
    return HeadRunner("onnxruntime", used, wire if fuse_cast else "float32", run, notes)


def torch_runner(onnx_bytes: bytes, head_meta: dict, device: str = "cpu", threads: int = 1) -> HeadRunner:
    """The head rebuilt in torch from the architecture (its DP-SGD variant, GroupNorm for BatchNorm,
    when ``head_meta`` says ``dp_compatible``: the cloud's ``GetHead`` reply carries it), the ONNX
    file's weights (by name) and the feature defences recorded in its metadata
    (:mod:`models.defences.features`).

    The rebuilt head is checked against ONNX Runtime on random inputs: its values when the head
    draws no randomness (to within one step of a quantize defence), only its output shape when it
    adds noise or dropout (the draws differ; the weights are still the ONNX file's own, loaded
    strictly). A head that torch cannot reproduce is refused with a message naming its defence.
    """
    import onnx
    import torch

    from models.defences import features as fdef
    from models.loading import architecture, load_onnx_weights
    from models.onnx_runtime import head_session, set_torch_threads

    notes = []
    used = "cpu"
    if device == "cuda":
        torch_cuda, _, detail = cuda_status()
        if torch_cuda:
            used = "cuda"
        else:
            print(fallback_message("torch", detail), file=sys.stderr)
            notes.append("CUDA unavailable, fell back to CPU")
    set_torch_threads(threads)
    input_shape = tuple(int(s) for s in head_meta["input_shape"])
    chain = fdef.onnx_defences(onnx_bytes)
    model = architecture(dict(head_meta, num_classes=int(head_meta["num_classes"]), input_shape=input_shape))
    defended = fdef.rebuild_head(model, head_meta["split"], chain, input_shape)
    head = defended.module
    graph = onnx.load_from_string(onnx_bytes).graph
    random_ops = sorted({n.op_type for n in graph.node} & RANDOM_OPS)
    if random_ops and not any(d.random for d in chain):
        raise SplitlabError(f"--runtime torch cannot rebuild this head: it draws random numbers ({', '.join(random_ops)}: "
                            "a feature defence) that its metadata does not describe; use --runtime onnxruntime")
    try:
        load_onnx_weights(head, graph)
    except SplitlabError as exc:
        raise SplitlabError(f"--runtime torch cannot rebuild this head from its ONNX weights ({exc}{_why_unnamed(head, graph, head_meta)}); "
                            "use --runtime onnxruntime") from None
    head = head.eval()
    probe = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
    expected = head_session(onnx_bytes, threads).run(None, {"input": probe})[0]
    with torch.inference_mode():
        got = head(torch.from_numpy(probe)).numpy()
    named = f" with its feature defence {fdef.label(chain)}" if chain else ""
    tolerance = fdef.comparison_tolerance(chain, 1e-4)
    if got.shape != expected.shape or (tolerance is not None and not np.allclose(got, expected, atol=tolerance,
                                                                                 rtol=1e-4)):
        raise SplitlabError(f"--runtime torch does not reproduce this head{named} (the ONNX graph holds more than "
                            "the architecture's layers and its recorded defences); use --runtime onnxruntime")
    if chain:
        notes.append(f"feature defence {fdef.label(chain)} rebuilt in torch")
    head = head.to(used)

    def run(x):
        with torch.inference_mode():
            return HeadOutput(head(torch.from_numpy(x).to(used)).float().cpu().numpy())

    return HeadRunner("torch", used, "float32", run, notes)


def _why_unnamed(head, graph, head_meta: dict) -> str:
    """What is likely wrong when a head with normalisation layers lacks their weights by name."""
    from torch import nn

    group_norm = any(n.op_type == "InstanceNormalization" for n in graph.node)  # how GroupNorm exports
    if group_norm and not head_meta.get("dp_compatible"):
        return ("; the head has GroupNorm layers (a model trained with DP-SGD) but its metadata does not say "
                "dp_compatible: the cloud that sent it predates that field, update it")
    if any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) for m in head.modules()):
        return ("; a head deployed before heads were exported unfolded (models.deploy.export_head_onnx) has "
                "its normalisation layers folded into other constants: deploy it again")
    return ""


def make_runner(onnx_bytes: bytes, head_meta: dict, runtime: str = "onnxruntime", device: str = "cpu",
                threads: int = 1, wire: str = "float32") -> HeadRunner:
    if runtime not in RUNTIMES:
        raise SplitlabError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if device not in DEVICES:
        raise SplitlabError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if runtime == "onnxruntime":
        return onnxruntime_runner(onnx_bytes, device, threads, wire)
    return torch_runner(onnx_bytes, head_meta, device, threads)
