"""Regenerate the committed Python stubs from ``split_inference.proto``.

Run ``python -m protos.generate`` after editing the .proto; a test fails when the committed stubs
differ from what this produces.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUBS = ["split_inference_pb2.py", "split_inference_pb2.pyi", "split_inference_pb2_grpc.py"]


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    rc = protoc.main(["protoc", f"-I{HERE.parent}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                      f"--grpc_python_out={out_dir}", str(HERE / "split_inference.proto")])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in STUBS:
            (HERE / name).write_text((Path(tmp) / "protos" / name).read_text())
    print("stubs written to", HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
