"""Where the cloud's tails run: which runtime on which device, decided once at start-up.

``cloud-server --device cuda`` asks for the GPU. With ``--runtime onnxruntime`` the tails run on
ONNX Runtime's CUDA execution provider when this onnxruntime has one that works (a tiny session is
made to find out: a provider can be listed and still fail to load its libraries), else on torch's
CUDA (the tails' ``tail.pt``), else on the CPU with :func:`models.env.cuda_fallback_message` on
stderr. With ``--runtime torch`` they run on torch's CUDA, else on the CPU with that message.
Batching is the same on every device: one compute thread, requests that queue up merged into one
batch. Nothing here imports torch unless the answer depends on it (CUDA asked for and ONNX
Runtime unable to give it), so a CPU cloud on ONNX Runtime stays torch-free.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from models.env import DEVICES, cuda_fallback_message, torch_cuda_status
from models.errors import SplitlabError

from .tail_runtime import CPU, RUNTIMES

ORT_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@dataclass(frozen=True)
class Placement:
    runtime: str                 # what runs tails: "onnxruntime" or "torch"
    device: str                  # "cpu" or "cuda"
    providers: list[str] = field(default_factory=lambda: list(CPU))  # ONNX Runtime's, in order
    note: str = ""               # why it differs from what was asked, if it does


def ort_cuda_status() -> tuple[bool, str]:
    """(ONNX Runtime can run a graph on CUDA here, a sentence saying why or why not)."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    listed = f"ONNX Runtime execution providers: {', '.join(providers)}"
    if "CUDAExecutionProvider" not in providers:
        return False, listed
    from onnx import TensorProto, helper

    from models.onnx_runtime import head_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        got = head_session(model.SerializeToString(), 1, ORT_CUDA).get_providers()
    except Exception as exc:  # noqa: BLE001 - a provider whose libraries do not load
        return False, f"{listed}; a CUDA session failed: {exc}"
    if "CUDAExecutionProvider" not in got:
        return False, f"{listed}; a CUDA session fell back to {', '.join(got)}"
    return True, listed


def resolve(runtime: str, device: str, program: str = "cloud-server") -> Placement:
    """The placement for ``--runtime`` and ``--device``; prints the fallback message when CUDA
    was asked for and cannot be had."""
    if runtime not in RUNTIMES:
        raise SplitlabError(f"unknown tail runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if device not in DEVICES:
        raise SplitlabError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return Placement(runtime, "cpu")
    details = []
    if runtime == "onnxruntime":
        ok, detail = ort_cuda_status()
        if ok:
            return Placement("onnxruntime", "cuda", list(ORT_CUDA))
        details.append(detail)
    ok, detail = torch_cuda_status()
    if ok:
        note = f"ONNX Runtime cannot use CUDA ({details[0]}); tails run in torch on CUDA" if details else ""
        if note:
            print(f"{program}: {note}.", file=sys.stderr)
        return Placement("torch", "cuda", note=note)
    details.append(detail)
    message = cuda_fallback_message(program, runtime if runtime == "torch" else "ONNX Runtime or torch",
                                    "; ".join(details))
    print(message, file=sys.stderr)
    return Placement(runtime, "cpu", note=message)
