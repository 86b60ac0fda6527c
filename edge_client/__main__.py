"""``edge-client``: run heads on the edge and send features to the cloud.

Subcommands: ``run`` (send dataset samples and measure), ``serve`` (the REST endpoint) and
``list`` (the cloud's deployments).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from models.env import program_env
from protos import tls
from protos.wire import WIRE_DTYPES

from .client import DEFAULT_MAX_MESSAGE_MB, DEFAULT_TIMEOUT


_env = program_env("edge-client")


def _common(p: argparse.ArgumentParser, runtime: bool = True) -> None:
    p.add_argument("--cloud", default=_env("SPLITLAB_CLOUD", "localhost:50051"),
                   help="the cloud server (or the attacker's tap), HOST:PORT, or several comma-separated: calls go "
                        "round robin over every address (a name resolves to all its replicas) and a call "
                        "that fails with UNAVAILABLE is retried on another [SPLITLAB_CLOUD, default localhost:50051]")
    p.add_argument("--max-message-mb", type=float, default=_env("SPLITLAB_MAX_MESSAGE_MB", DEFAULT_MAX_MESSAGE_MB, float),
                   help="largest gRPC message sent or received, MiB; match the cloud's [SPLITLAB_MAX_MESSAGE_MB, default 64]")
    p.add_argument("--timeout", type=float, default=_env("SPLITLAB_TIMEOUT", DEFAULT_TIMEOUT, float),
                   help="deadline of each call in seconds [SPLITLAB_TIMEOUT, default 30]")
    tls.add_arguments(p, server=False, client=True, env=_env)
    if not runtime:
        return
    p.add_argument("--wire", choices=WIRES, default=_env("SPLITLAB_WIRE", "float32", choices=WIRES),
                   help="dtype of the features on the wire; float16/int8 are produced inside the ONNX head "
                        "[SPLITLAB_WIRE, default float32]")
    p.add_argument("--runtime", choices=RUNTIMES, default=_env("SPLITLAB_RUNTIME", "onnxruntime", choices=RUNTIMES),
                   help="what runs the head [SPLITLAB_RUNTIME, default onnxruntime]")
    p.add_argument("--device", choices=DEVICES, default=_env("SPLITLAB_DEVICE", "cpu", choices=DEVICES),
                   help="cuda uses ONNX Runtime's CUDA provider or torch on CUDA; without CUDA the edge "
                        "says so and falls back to the CPU [SPLITLAB_DEVICE, default cpu]")
    p.add_argument("--threads", type=int, default=_env("SPLITLAB_THREADS", 1, int),
                   help="threads for the head; keep 1 when the cloud shares the machine [SPLITLAB_THREADS, default 1]")
    p.add_argument("--no-cache", action="store_true",
                   help="download the head even when the cached copy (keyed by sha256) is current")
    p.add_argument("--cache", default=_env("SPLITLAB_CACHE", ".splitlab-cache"),
                   help="head cache folder [SPLITLAB_CACHE, default ./.splitlab-cache]")


WIRES = [w for w in WIRE_DTYPES if w != "uint8"]
RUNTIMES = ["onnxruntime", "torch"]
DEVICES = ["cpu", "cuda"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-client",
        description="The edge of a split deployment: fetch a head from the cloud (GetHead, cached on disk by "
                    "sha256), run it locally on private inputs, send the features over gRPC and get the "
                    "prediction back. Every flag has an environment default (in brackets).")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="send dataset samples through edge -> cloud; print accuracy, images/s, latency",
                         description=textwrap.fill(
                             "Send test images of a dataset through the split deployment. Prints accuracy, "
                             "images/s, latency percentiles per request and bytes per image. Every request "
                             "is answered or counted as failed within --timeout; when the cloud stays "
                             "unreachable for longer than --timeout the run stops and counts the rest as not "
                             "sent. Exit status 1 when any request failed or was not sent.", 78),
                         epilog="example:\n  edge-client run --cloud localhost:50051 --deployment lenet5-mnist-s0--relu2 \\\n"
                                "      --count 1000 --batch 64 --wire float16 --stream",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(run)
    run.add_argument("--deployment", required=True, help="deployment id (see `edge-client list`)")
    run.add_argument("--dataset", help="dataset to draw samples from (default: the deployment's)")
    run.add_argument("--split", choices=["test", "train"], default="test", help="dataset part (default test)")
    run.add_argument("--count", type=int, default=1000, help="number of images (default 1000)")
    run.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    run.add_argument("--stream", action="store_true", help="send on one InferStream instead of unary calls")
    run.add_argument("--inflight", type=int, default=2,
                     help="requests in flight at once: the head of the next batch runs while the cloud "
                          "works on the previous one (default 2; 1 = strictly one at a time)")
    run.add_argument("--json", action="store_true", help="print the metrics as JSON")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    serve = sub.add_parser("serve", help="serve POST /v1/infer (REST) in front of the cloud",
                           description=textwrap.fill(
                               "Serve the edge's REST API: POST /v1/infer (PNG/JPEG upload or JSON array, "
                               "plus a deployment id) answers class, scores and request id (also in the "
                               "X-Request-ID header); GET /healthz; GET /v1/deployments; OpenAPI docs at /docs.", 78),
                           epilog="examples:\n  edge-client serve --port 8001 --cloud localhost:50051\n"
                                  "  curl -F file=@digit.png -F deployment_id=lenet5-mnist-s0--relu2 "
                                  "localhost:8001/v1/infer",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(serve)
    serve.add_argument("--host", default=_env("SPLITLAB_EDGE_HOST", "0.0.0.0"),
                       help="interface [SPLITLAB_EDGE_HOST, default 0.0.0.0]")
    serve.add_argument("--port", type=int, default=_env("SPLITLAB_EDGE_PORT", 8001, int),
                       help="port [SPLITLAB_EDGE_PORT, default 8001]")
    serve.add_argument("--deployment", default=_env("SPLITLAB_DEPLOYMENT", None),
                       help="deployment used when a request names none [SPLITLAB_DEPLOYMENT]")
    serve.add_argument("--max-upload-mb", type=float, default=_env("SPLITLAB_MAX_UPLOAD_MB", 4.0, float),
                       help="largest request body (413 above) [SPLITLAB_MAX_UPLOAD_MB, default 4]")

    lst = sub.add_parser("list", help="list the cloud's deployments")
    _common(lst, runtime=False)
    return p


def _client(args):
    from .client import CloudClient

    return CloudClient(args.cloud, args.max_message_mb, args.timeout, tls=tls.TlsConfig.from_args(args).check())


def _edge(args):
    from .edge import Edge
    from .heads import HeadCache

    return Edge(_client(args), HeadCache(args.cache), args.runtime, args.device, args.threads, args.wire,
                use_cache=not args.no_cache)


def cmd_run(args) -> int:
    from models import load_dataset

    from .run import run_dataset

    if args.count < 1 or args.batch < 1 or args.inflight < 1:
        print("edge-client: --count, --batch and --inflight must be at least 1", file=sys.stderr)
        return 2
    edge = _edge(args)
    try:
        dep = edge.deployment(args.deployment)
        name = args.dataset or dep.head.meta["dataset"]
        ds = load_dataset(name)
        x, y = ds.part(args.split)
        if tuple(x.shape[1:]) != (dep.input_shape[1], dep.input_shape[2], dep.input_shape[0]):
            print(f"edge-client: {name} images are {x.shape[1:]} (H, W, C) but {args.deployment} takes "
                  f"(C, H, W) = {dep.input_shape}", file=sys.stderr)
            return 2
        print(f"head: {dep.head.meta['arch']} up to {dep.head.meta['split']} ({dep.runner.description}), "
              f"{'from cache' if dep.head.from_cache else 'downloaded'}, sha256 {dep.head.sha256[:12]}",
              file=sys.stderr)
        m = run_dataset(edge, args.deployment, x[: args.count], y[: args.count], args.batch, args.stream,
                        args.inflight, progress=not args.no_progress)
    finally:
        edge.client.close()
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(f"images      {m['images']} of {m['images'] + m['images_failed'] + m['images_not_sent']} answered "
              f"({m['answered']} requests answered, {m['failed']} failed, {m['not_sent']} not sent)")
        if "accuracy" in m:
            print(f"accuracy    {m['accuracy']:.4f}")
        print(f"throughput  {m['images_per_s']:.1f} images/s ({'stream' if args.stream else 'unary'}, "
              f"batch {args.batch}, {args.inflight} in flight, wire {args.wire})")
        print(f"latency     p50 {m['latency_p50_ms']:.2f} ms  p90 {m['latency_p90_ms']:.2f} ms  "
              f"p99 {m['latency_p99_ms']:.2f} ms  (per request; tail {m['server_ms_mean']:.2f} ms mean)")
        print(f"wire        {m['bytes_per_image']:.0f} bytes/image")
        if m.get("first_error"):
            print(f"first error {m['first_error']}")
        if m.get("gave_up"):
            print(f"gave up     {m['gave_up']}")
    return 0 if m["errors"] == 0 and m["not_sent"] == 0 else 1


def cmd_serve(args) -> int:
    from models.graceful import run_uvicorn

    from .rest import create_app

    edge = _edge(args)
    app = create_app(edge, args.deployment, args.max_upload_mb)
    try:
        run_uvicorn(app, host=args.host, port=args.port, log_level="info")
    finally:
        edge.client.close()
    return 0


def cmd_list(args) -> int:
    with _client(args) as client:
        deps = client.list_deployments()
    for d in deps:
        print(f"{d['deployment_id']:40s} {d['arch']:14s} split {d['split']:8s} features {d['feature_shape']} "
              f"dataset {d['dataset']}")
    if not deps:
        print("(the cloud serves no deployments)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from models import SplitlabError

    from .client import CloudError

    args = build_parser().parse_args(argv)
    try:
        return {"run": cmd_run, "serve": cmd_serve, "list": cmd_list}[args.command](args)
    except (SplitlabError, CloudError) as exc:
        print(f"edge-client: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
