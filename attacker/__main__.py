"""The ``attacker`` command line: tap the edge-cloud channel, list what it captured, invert it.

  attacker tap --listen :50052 --upstream cloud:50051        record traffic into the capture store
  attacker captures [--deployment D] [--last N]               what the store holds (a table)
  attacker truth FILE.npz                                     attach ground-truth inputs by request id
  attacker invert --method whitebox --deployment D --last 8 --out out/
                                                              reconstruct the edge's private inputs
  attacker serve --listen :50052 --upstream cloud:50051 --api-port 8000 --edge http://edge:8001
                                                              the tap plus the lab REST API (experiments)

Every subcommand takes --store DIR (env SPLITLAB_STORE, default ./captures) and --threads N (env
SPLITLAB_THREADS, default 1). Errors (bad parameters, unknown deployment, empty store) print one line
starting with 'error:' and exit with status 2. Run 'attacker SUBCOMMAND --help' for details.
"""

from __future__ import annotations

import argparse
import logging
import sys

from models.env import env_default
from models.errors import SplitlabError

from protos import tls

from .captures.store import default_store_dir
from .tap.priority import PRIORITIES

TAP_MODES = ["passive", "proxy", "sniff"]
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=default_store_dir(),
                   help="capture store folder (env SPLITLAB_STORE, default ./captures)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / ONNX Runtime threads (env SPLITLAB_THREADS, default 1)")
    p.add_argument("--log-level", default=env_default("SPLITLAB_LOG_LEVEL", "info", choices=LOG_LEVELS),
                   choices=LOG_LEVELS, help="log level (env SPLITLAB_LOG_LEVEL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attacker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    from .tap.service import PROXY_ONLY, UPSTREAM_HELP
    from .tap.service import __doc__ as tap_doc

    p = sub.add_parser("tap", help="transparent gRPC proxy that records the edge-cloud traffic",
                       description=tap_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default=env_default("SPLITLAB_TAP_LISTEN", "0.0.0.0:50052"),
                   help="HOST:PORT the edge connects to (env SPLITLAB_TAP_LISTEN, default 0.0.0.0:50052)")
    p.add_argument("--upstream", default=env_default("SPLITLAB_TAP_UPSTREAM", "localhost:50051"),
                   help=UPSTREAM_HELP + " (env SPLITLAB_TAP_UPSTREAM, default localhost:50051)")
    p.add_argument("--mode", choices=TAP_MODES, default=env_default("SPLITLAB_TAP_MODE", "passive", choices=TAP_MODES),
                   help="passive: relay TCP bytes unchanged and decode a copy (default); proxy: a gRPC proxy "
                        "that re-issues each call; sniff: nothing in the path, read copies of the packets to "
                        "the --upstream port (and host, if an IP address) on --interface (needs CAP_NET_RAW; "
                        "the edge connects to the cloud itself and --listen is unused) (env SPLITLAB_TAP_MODE)")
    p.add_argument("--interface", default=env_default("SPLITLAB_TAP_INTERFACE", "lo"),
                   help="sniff mode: the network interface that carries the edge-cloud traffic "
                        "(env SPLITLAB_TAP_INTERFACE, default lo)")
    p.add_argument("--poll-ms", type=float, default=env_default("SPLITLAB_TAP_POLL_MS", 1.0, float),
                   help="sniff mode: read the captured packets every this many ms (env SPLITLAB_TAP_POLL_MS, "
                        "default 1). 0 reads each packet as it arrives, which makes the victims' cores wake this "
                        "process for every packet and slows them (see benchmarks/results/tap_overhead*.md)")
    p.add_argument("--priority", choices=PRIORITIES, default=env_default("SPLITLAB_TAP_PRIORITY", "normal", choices=PRIORITIES),
                   help="CPU priority of the recording (env SPLITLAB_TAP_PRIORITY, default normal). idle: decode "
                        "and write only on cores nothing else wants (Linux SCHED_IDLE), so a tap sharing cores "
                        "with the edge or cloud never takes CPU from them; what it has not read waits in the kernel "
                        "(sniff) or in the recorder's buffer (passive: --queue-mb), and if the cores stay busy "
                        "longer than that lasts, connections are lost and counted instead of the victims slowed")
    p.add_argument("--admin", default=env_default("SPLITLAB_TAP_ADMIN", None),
                   help="passive and sniff modes: HOST:PORT of the tap's own health + reflection "
                        "(env SPLITLAB_TAP_ADMIN, default the listen port + 1)")
    p.add_argument("--max-message-mb", type=float, default=env_default("SPLITLAB_MAX_MESSAGE_MB", 64.0, float),
                   help="largest message, MiB (env SPLITLAB_MAX_MESSAGE_MB, default 64 as the cloud): proxy mode "
                        "accepts and sends at most this on both sides; passive mode records at most this (the "
                        "endpoints enforce their own limits on the relayed bytes)")
    p.add_argument("--max-captures", type=int, default=env_default("SPLITLAB_STORE_MAX_CAPTURES", None, int),
                   help="retention: keep at most this many captures, dropping the oldest "
                        "(env SPLITLAB_STORE_MAX_CAPTURES, default unlimited)")
    p.add_argument("--max-store-mb", type=float, default=env_default("SPLITLAB_STORE_MAX_MB", None, float),
                   help="retention: keep at most this many MiB of feature files, dropping the oldest "
                        "(env SPLITLAB_STORE_MAX_MB, default unlimited)")
    p.add_argument("--queue", type=int, default=65536,
                   help="recording queue length in events (an Infer call is one, a streamed call two); past it, "
                        "or past --queue-mb, captures are dropped and counted (default 65536: bursts of a few "
                        "seconds of small calls; --queue-mb bounds the memory)")
    p.add_argument("--queue-mb", type=float, default=512.0,
                   help="recording queue size in MiB of pending messages (default 512)")
    p.add_argument("--grace", type=float, default=env_default("SPLITLAB_GRACE_SECONDS", 5.0, float),
                   help="seconds in-flight calls get on SIGTERM/SIGINT (env SPLITLAB_GRACE_SECONDS, default 5)")
    p.add_argument("--stats-interval", type=float, default=2.0,
                   help="seconds between refreshes of STORE/tap-stats.json (default 2)")
    p.add_argument("--no-record", action="store_true", help="forward only, record nothing (a plain proxy)")
    tls.add_arguments(p, note=PROXY_ONLY)
    _common(p)

    p = sub.add_parser("captures", help="list captures (a table), heads and deployments seen by the tap")
    p.add_argument("--deployment", help="only this deployment")
    p.add_argument("--last", type=int, default=20, help="the newest N captures (default 20)")
    p.add_argument("--all", action="store_true", help="every capture (overrides --last)")
    p.add_argument("--since", help="captured at or after: unix seconds, ISO time, or an age like 10m / 2h / 1d")
    p.add_argument("--until", help="captured at or before (same forms as --since)")
    p.add_argument("--request-id", help="only captures of this request id")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _common(p)

    p = sub.add_parser("truth", help="attach ground-truth input images to captures, by request id",
                       description="Attach the edge's private inputs (known only to an experimenter who "
                                   "drives the edge) so that invert can show them beside reconstructions and "
                                   "score PSNR/SSIM. FILE.npz holds 'request_ids' (one per image, in batch "
                                   "order) and 'images' (uint8 N,H,W,C or floats in [0,1] N,C,H,W).")
    p.add_argument("file", help="the .npz with request_ids and images")
    _common(p)

    from .invert import add_arguments as add_invert_arguments
    from .invert import __doc__ as invert_doc

    p = sub.add_parser("invert", help="reconstruct the edge's inputs from captured features",
                       description=invert_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_invert_arguments(p)
    _common(p)

    from .lab.serve import __doc__ as serve_doc
    from .lab.serve import add_arguments as add_serve_arguments

    p = sub.add_parser("serve", help="the tap and the lab REST API for split-point experiments, in one process",
                       description=serve_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(p)
    _common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.log_level != "debug":  # httpx logs every request at info: one line per black-box query
            logging.getLogger("httpx").setLevel(logging.WARNING)
        _threads(args)
        return COMMANDS[args.command](args)
    except SplitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _threads(args) -> None:
    from models.onnx_runtime import default_threads

    threads = args.threads if args.threads is not None else default_threads()
    if threads < 1:
        raise SplitlabError(f"--threads must be at least 1, got {threads}")
    args.threads = threads
    if args.command in ("invert",):
        from models.onnx_runtime import set_torch_threads

        set_torch_threads(threads)


def cmd_tap(args) -> int:
    from .tap import TapConfig, serve

    for name in ("max_message_mb", "queue_mb", "grace", "stats_interval"):
        if not getattr(args, name) > 0:
            raise SplitlabError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.queue < 1:
        raise SplitlabError(f"--queue must be at least 1, got {args.queue}")
    if not 0 <= args.poll_ms <= 1000:
        raise SplitlabError(f"--poll-ms must be 0 to 1000, got {args.poll_ms}")
    if args.max_captures is not None and args.max_captures < 1:
        raise SplitlabError(f"--max-captures must be at least 1, got {args.max_captures}")
    if args.max_store_mb is not None and not args.max_store_mb > 0:
        raise SplitlabError(f"--max-store-mb must be positive, got {args.max_store_mb}")
    for flag, value in (("--listen", args.listen), ("--upstream", args.upstream), ("--admin", args.admin)):
        if value is None:
            continue
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise SplitlabError(f"{flag} must be HOST:PORT (e.g. 0.0.0.0:50052), got {value!r}")
    config = TapConfig(listen=args.listen, upstream=args.upstream, store=args.store,
                       max_message_bytes=int(args.max_message_mb * 2**20), max_queue=args.queue,
                       max_queue_bytes=int(args.queue_mb * 2**20), max_captures=args.max_captures,
                       max_store_bytes=None if args.max_store_mb is None else int(args.max_store_mb * 2**20),
                       stats_interval=args.stats_interval, grace=args.grace, record=not args.no_record,
                       mode=args.mode, admin=args.admin, interface=args.interface,
                       poll_interval=args.poll_ms / 1000, priority=args.priority,
                       tls=tls.TlsConfig.from_args(args).check())
    try:
        return serve(config)
    except (OSError, ValueError) as exc:
        raise SplitlabError(str(exc)) from exc


def cmd_captures(args) -> int:
    from .captures.cli import show_captures

    return show_captures(args)


def cmd_truth(args) -> int:
    from .captures.store import CaptureStore, load_ground_truth_file

    truth = load_ground_truth_file(args.file)
    store = CaptureStore(args.store, create=False)
    matched = 0
    for rid, images in truth.items():
        store.attach_ground_truth(rid, images)
        caps = store.captures(request_id=rid)
        matched += bool(caps)
        if caps and caps[-1].batch != len(images):
            print(f"warning: request {rid}: {len(images)} images but its capture has batch {caps[-1].batch}",
                  file=sys.stderr)
    print(f"attached ground truth for {len(truth)} request id(s) ({sum(len(v) for v in truth.values())} images); "
          f"{matched} match a capture in {args.store}")
    return 0


def cmd_invert(args) -> int:
    from .invert import run_invert

    return run_invert(args)


def cmd_serve(args) -> int:
    from .lab.serve import run_serve

    return run_serve(args)


COMMANDS = {"tap": cmd_tap, "captures": cmd_captures, "truth": cmd_truth, "invert": cmd_invert, "serve": cmd_serve}

if __name__ == "__main__":
    sys.exit(main())
