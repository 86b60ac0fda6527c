"""``cloud-server``: serve the tails of every deployment in an artifact store over gRPC."""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
import threading
from pathlib import Path

from models.env import DEVICES, program_env
from models.errors import SplitlabError
from protos import tls

from .server import DEFAULT_MAX_MESSAGE_MB, CloudServer, ServerConfig


_env = program_env("cloud-server")


RUNTIMES = ["onnxruntime", "torch"]
LOG_LEVELS = ["debug", "info", "warning", "error"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cloud-server",
        description=textwrap.fill(
            "Serve the tail of every deployment in the artifact store over gRPC "
            "(splitlab.v1.SplitInference, plus grpc.health.v1 and server reflection). "
            "Tails load lazily on first use into a bounded cache and run on one compute thread "
            "(ONNX Runtime by default); concurrent requests for the same deployment are merged into "
            "one batch. Bad requests get INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED with a "
            "message. SIGTERM/SIGINT stop gracefully: new calls are refused, in-flight calls finish, "
            "exit status 0.", 90),
        epilog="Every flag has an environment default (shown in brackets). Example:\n"
               "  cloud-server --artifacts ./artifacts --port 50051 --threads 1\n"
               "Logs are JSON lines on stderr; the 'serving' line gives the bound address.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=_env("SPLITLAB_CLOUD_HOST", "0.0.0.0"),
                   help="address to listen on; several, comma-separated, share the port (e.g. "
                        "127.0.0.1,[::1]) [SPLITLAB_CLOUD_HOST, default 0.0.0.0]")
    p.add_argument("--port", type=int, default=_env("SPLITLAB_CLOUD_PORT", 50051, int),
                   help="port to listen on; 0 picks a free one (logged) [SPLITLAB_CLOUD_PORT, default 50051]")
    p.add_argument("--artifacts", default=_env("SPLITLAB_ARTIFACTS", "artifacts"),
                   help="artifact store root holding deployments/; it may be empty or not exist yet: "
                        "deployments written there later (python -m models deploy, the lab) are served "
                        "without a restart [SPLITLAB_ARTIFACTS, default ./artifacts]")
    p.add_argument("--max-message-mb", type=float, default=_env("SPLITLAB_MAX_MESSAGE_MB", DEFAULT_MAX_MESSAGE_MB, float),
                   help="largest gRPC message received or sent, in MiB; bigger requests get RESOURCE_EXHAUSTED. "
                        "Give the edge the same value [SPLITLAB_MAX_MESSAGE_MB, default 64]")
    p.add_argument("--workers", type=int, default=_env("SPLITLAB_CLOUD_WORKERS", 16, int),
                   help="gRPC handler threads = calls served at once; each open stream holds one "
                        "[SPLITLAB_CLOUD_WORKERS, default 16]")
    p.add_argument("--threads", type=int, default=_env("SPLITLAB_THREADS", 1, int),
                   help="intra-op threads of the single compute thread that runs every tail; on a machine "
                        "shared with the edge keep 1 [SPLITLAB_THREADS, default 1]")
    p.add_argument("--runtime", choices=RUNTIMES, default=_env("SPLITLAB_CLOUD_RUNTIME", "onnxruntime", choices=RUNTIMES),
                   help="what runs the tails: ONNX Runtime (the deployment's tail.onnx, no torch needed; older "
                        "deployments are exported from tail.pt on load, with torch as the fallback) or torch "
                        "[SPLITLAB_CLOUD_RUNTIME, default onnxruntime]")
    p.add_argument("--device", choices=DEVICES, default=_env("SPLITLAB_CLOUD_DEVICE", "cpu", choices=DEVICES),
                   help="where tails run: cuda uses ONNX Runtime's CUDA provider where installed, else torch on "
                        "CUDA; without CUDA the server says so and uses the CPU. Batching is the same "
                        "[SPLITLAB_CLOUD_DEVICE, default cpu]")
    p.add_argument("--max-batch", type=int, default=_env("SPLITLAB_MAX_BATCH", 1024, int),
                   help="largest batch one request may carry (INVALID_ARGUMENT above) [SPLITLAB_MAX_BATCH, default 1024]")
    p.add_argument("--merge-rows", type=int, default=_env("SPLITLAB_MERGE_ROWS", 64, int),
                   help="concurrent requests of one deployment are merged into batches of up to this many "
                        "examples; 1 turns merging off [SPLITLAB_MERGE_ROWS, default 64]")
    p.add_argument("--cache-size", type=int, default=_env("SPLITLAB_CACHE_SIZE", 8, int),
                   help="tails kept loaded (least recently used evicted) [SPLITLAB_CACHE_SIZE, default 8]")
    p.add_argument("--grace", type=float, default=_env("SPLITLAB_GRACE_SECONDS", 30.0, float),
                   help="seconds in-flight calls get to finish on shutdown [SPLITLAB_GRACE_SECONDS, default 30]")
    p.add_argument("--log-level", default=_env("SPLITLAB_LOG_LEVEL", "info", choices=LOG_LEVELS),
                   choices=LOG_LEVELS,
                   help="JSON logs on stderr; 'info' logs every request with its id [SPLITLAB_LOG_LEVEL, default info]")
    tls.add_arguments(p, server=True, client=False, env=_env)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("workers", "threads", "max_batch", "merge_rows", "cache_size"):
        if getattr(args, name) < 1:
            print(f"cloud-server: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if not args.max_message_mb > 0 or args.grace < 0 or not 0 <= args.port < 65536:
        print("cloud-server: --max-message-mb must be > 0, --grace >= 0 and --port in 0..65535", file=sys.stderr)
        return 2
    if Path(args.artifacts).exists() and not Path(args.artifacts).is_dir():
        print(f"cloud-server: --artifacts {args.artifacts!r} is a file, not an artifact store folder", file=sys.stderr)
        return 2

    from . import logs

    logs.setup(args.log_level)  # torch's threads are set when a tail first needs torch (not at all with tail.onnx)
    config = ServerConfig(artifacts=args.artifacts, host=args.host, port=args.port,
                          max_message_mb=args.max_message_mb, workers=args.workers, threads=args.threads,
                          max_batch=args.max_batch, merge_rows=args.merge_rows, cache_size=args.cache_size,
                          grace_seconds=args.grace, runtime=args.runtime, device=args.device,
                          tls=tls.TlsConfig.from_args(args))
    try:
        server = CloudServer(config)
    except (OSError, RuntimeError, SplitlabError) as exc:
        print(f"cloud-server: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
