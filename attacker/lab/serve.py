"""``attacker serve``: the tap and the lab REST API for split-point experiments, in one process.

  attacker serve --listen 0.0.0.0:50052 --upstream cloud:50051 --store captures \\
                 --api-port 8000 --edge http://edge:8001 --artifacts artifacts

The tap (as ``attacker tap``) forwards the edge's gRPC traffic to the cloud and records it into
--store; the API (``/v1/experiments``, pages at ``/``, OpenAPI at ``/v1/docs``) runs experiments
that deploy split points into --artifacts (the cloud's artifact store), send private images through
the edge's REST endpoint (--edge; the edge must use this tap as its cloud) and attack what the tap
captured. Experiments live in --lab-dir (SQLite) and survive restarts.

Mutating endpoints need ``Authorization: Bearer $SPLITLAB_API_TOKEN``. Without SPLITLAB_API_TOKEN
the API binds to 127.0.0.1 only, whatever --api-host says, and logs so.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from models.env import DEVICES
from models.env import env_default as _env
from models.errors import SplitlabError

from protos import tls as transport

from ..tap.priority import PRIORITIES
from ..tap.service import PROXY_ONLY, UPSTREAM_HELP
from .limits import Limits

log = logging.getLogger("attacker.lab")
LOOPBACK = "127.0.0.1"
SERVE_TAP_MODES = ["passive", "proxy"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``attacker serve`` (``--store``, ``--threads``, ``--log-level`` come from the CLI)."""
    tap = p.add_argument_group("tap")
    tap.add_argument("--listen", default=_env("SPLITLAB_TAP_LISTEN", "0.0.0.0:50052"),
                     help="HOST:PORT the edge connects to (env SPLITLAB_TAP_LISTEN, default 0.0.0.0:50052)")
    tap.add_argument("--upstream", default=_env("SPLITLAB_TAP_UPSTREAM", "localhost:50051"),
                     help=UPSTREAM_HELP + " (env SPLITLAB_TAP_UPSTREAM, default localhost:50051)")
    # Checked when the tap starts, not here: SPLITLAB_TAP_MODE=sniff is right for `attacker tap` (the
    # compose sniffer) and must not stop this parser from being built.
    tap.add_argument("--mode", choices=SERVE_TAP_MODES, default=_env("SPLITLAB_TAP_MODE", "passive"),
                     help="tap mode, as `attacker tap --mode` (env SPLITLAB_TAP_MODE, default passive)")
    tap.add_argument("--priority", choices=PRIORITIES, default=_env("SPLITLAB_TAP_PRIORITY", "normal", choices=PRIORITIES),
                     help="CPU priority of the recording, as `attacker tap --priority` (env SPLITLAB_TAP_PRIORITY, "
                          "default normal; idle: record only on cores nothing else wants)")
    tap.add_argument("--admin", default=_env("SPLITLAB_TAP_ADMIN", None),
                     help="passive mode: HOST:PORT of the tap's own health + reflection (env SPLITLAB_TAP_ADMIN, "
                          "default the listen port + 1)")
    tap.add_argument("--max-message-mb", type=float, default=_env("SPLITLAB_MAX_MESSAGE_MB", 64.0, float),
                     help="largest gRPC message, MiB (env SPLITLAB_MAX_MESSAGE_MB, default 64)")
    tap.add_argument("--no-tap", action="store_true",
                     help="run only the API; an `attacker tap` elsewhere records into the same --store")
    transport.add_arguments(p, note=PROXY_ONLY)
    api = p.add_argument_group("lab API")
    api.add_argument("--api-host", default=_env("SPLITLAB_API_HOST", "0.0.0.0"),
                     help="interface of the REST API (env SPLITLAB_API_HOST, default 0.0.0.0; forced to "
                          "127.0.0.1 when SPLITLAB_API_TOKEN is not set)")
    api.add_argument("--api-port", type=int, default=_env("SPLITLAB_API_PORT", 8000, int),
                     help="port of the REST API (env SPLITLAB_API_PORT, default 8000)")
    api.add_argument("--edge", default=_env("SPLITLAB_EDGE_URL", None),
                     help="the edge's REST base URL, e.g. http://localhost:8001 (env SPLITLAB_EDGE_URL); "
                          "experiments fail without it")
    api.add_argument("--artifacts", default=_env("SPLITLAB_ARTIFACTS", "artifacts"),
                     help="the cloud's artifact store: models are trained and split points deployed here "
                          "(env SPLITLAB_ARTIFACTS, default ./artifacts)")
    api.add_argument("--data-root", default=_env("SPLITLAB_DATA", None),
                     help="dataset root searched first (env SPLITLAB_DATA)")
    api.add_argument("--lab-dir", default=_env("SPLITLAB_LAB_DIR", None),
                     help="experiment database and images (env SPLITLAB_LAB_DIR, default STORE/lab)")
    api.add_argument("--device", choices=DEVICES, default=None,
                     help="where the experiments' attacks compute (env SPLITLAB_DEVICE, default cpu; CUDA asked "
                          "for without a GPU falls back to the CPU with a message)")
    api.add_argument("--workers", type=int, default=_env("SPLITLAB_LAB_WORKERS", 1, int),
                     help="experiments run at once (env SPLITLAB_LAB_WORKERS, default 1; 0 queues without "
                          "running, for maintenance)")
    defaults = Limits()
    limits = p.add_argument_group("budget limits (a spec over them is refused with 422)")
    for name, what in (("max_samples", "private images per experiment"),
                       ("max_train_images", "training images (train.limit)"),
                       ("max_epochs", "training / attack epochs"),
                       ("max_iterations", "attack optimisation iterations"),
                       ("max_aux_images", "auxiliary images of an attack"),
                       ("max_split_points", "split points per experiment"),
                       ("max_attacks", "attacks per experiment"),
                       ("max_membership_samples", "membership: members (and as many non-members) per seed"),
                       ("max_shadow_models", "membership: shadow / reference models of an attack"),
                       ("max_seeds", "membership: seeds per experiment"),
                       ("max_attack_epochs", "membership: epochs of an attack network"),
                       ("max_victims", "attribute: victims' images sent through the edge"),
                       ("max_queries", "classifier inversion through the API: queries of the edge in all")):
        env = "SPLITLAB_LAB_" + name.upper()
        limits.add_argument("--" + name.replace("_", "-"), type=int, default=_env(env, getattr(defaults, name), int),
                            help=f"{what} (env {env}, default {getattr(defaults, name)})")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_host(requested: str, token: str | None) -> tuple[str, str | None]:
    """(host to bind, a warning to log or None): no token means loopback only."""
    if token:
        return requested, None
    if is_loopback(requested):
        return requested, ("SPLITLAB_API_TOKEN is not set: mutating endpoints are open, so the lab API "
                           f"listens on {requested} (loopback) only")
    return LOOPBACK, (f"SPLITLAB_API_TOKEN is not set: the lab API binds to {LOOPBACK} (loopback) only, "
                      f"not {requested}; set SPLITLAB_API_TOKEN to serve other hosts")


def run_serve(args) -> int:
    if not args.no_tap and args.mode not in SERVE_TAP_MODES:
        raise SplitlabError(f"attacker serve runs its tap in passive or proxy mode, got {args.mode!r} (from "
                            "SPLITLAB_TAP_MODE?); for a sniff tap run `attacker tap --mode sniff` beside "
                            "`attacker serve --no-tap` on the same --store")
    from models.env import resolve_device
    from models.graceful import run_uvicorn
    from models.onnx_runtime import set_torch_threads

    from .app import LabConfig, create_app
    from .runner import ExperimentRunner, RunnerConfig

    limits = Limits(**{k: getattr(args, k) for k in Limits.__dataclass_fields__})
    for k, v in vars(limits).items():
        if v < 1:
            raise SplitlabError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
    if args.workers < 0:
        raise SplitlabError(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.api_port < 65536:
        raise SplitlabError(f"--api-port must be in 0..65535, got {args.api_port}")
    set_torch_threads(args.threads)
    device = resolve_device(args.device, program="attacker serve")
    token = os.environ.get("SPLITLAB_API_TOKEN") or None
    host, warning = bind_host(args.api_host, token)
    store_dir = Path(args.store)
    lab_dir = Path(args.lab_dir) if args.lab_dir else store_dir / "lab"
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)

    tap = None
    if not args.no_tap:
        from ..tap import TapConfig, TapThread

        tap = TapThread(TapConfig(listen=args.listen, upstream=args.upstream, store=str(store_dir),
                                  max_message_bytes=int(args.max_message_mb * 2**20), mode=args.mode,
                                  admin=args.admin, priority=args.priority,
                                  tls=transport.TlsConfig.from_args(args).check()))
        try:
            port = tap.start()
        except (OSError, ValueError) as exc:
            raise SplitlabError(f"the tap cannot listen on {args.listen}: {exc}") from exc
        log.info("tap (%s mode) listening on %s (port %d) -> %s, store %s", args.mode, args.listen, port,
                 args.upstream, store_dir)
    else:
        from ..captures.store import CaptureStore

        CaptureStore(store_dir).close()  # create it, so that experiments can read it
    runner = ExperimentRunner(RunnerConfig(
        artifacts=artifacts, captures=store_dir, edge_url=args.edge, data_root=args.data_root, limits=limits,
        device=device, flush=(lambda: tap.flush(10.0)) if tap is not None else None))
    config = LabConfig(lab_dir=lab_dir, artifacts=artifacts, data_root=args.data_root, token=token, limits=limits,
                       workers=args.workers, edge_url=args.edge, tap_status=tap.stats if tap is not None else None)
    app = create_app(config, runner)
    if warning:
        log.warning(warning)
    if not args.edge:
        log.warning("no --edge given: experiments will fail until the service is started with --edge URL")
    log.info("lab API on http://%s:%d (docs /v1/docs), experiments in %s, artifacts %s, edge %s, workers %d",
             host, args.api_port, lab_dir, artifacts, args.edge, args.workers)
    print(f"lab API listening on http://{host}:{args.api_port}" + (f" ({warning})" if warning else ""), flush=True)
    try:
        run_uvicorn(app, host=host, port=args.api_port, log_level=args.log_level, access_log=False)
    finally:
        if tap is not None:
            tap.stop(1.0)
    return 0
