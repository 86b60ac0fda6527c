"""``attacker invert``: reconstruct the edge's private inputs from captured features.

Methods and what each needs (the knowledge its threat model allows, nothing more):
  whitebox   the head: a GetHead payload the tap captured (the default), else --artifacts DIR
  blackbox   query access + auxiliary images (--aux-data): live through the edge's public REST
             endpoint (--edge URL; the features of each chosen input are read back from the tap's
             capture store by request id, so the tap must be recording), or offline through the
             head in --artifacts (benchmarks, tests)
  queryfree  the tail from --artifacts (the cloud attacks) + labelled auxiliary images (--aux-data)

Adaptive (--adaptive): the attacker knows the deployment's feature defence (its spec in
deployment.json: noise, dropout, quantisation, an extra non-linear layer) and attacks through it:
whitebox optimises through the defence (noise as an expectation over draws, dropout's mask read off
the captured zeros, rounding straight-through); queryfree inverts through its shadow head followed
by the defence (--param train_through_defence=true trains the shadow head through it too); blackbox
queries through the deployed edge return defended features already, so its inverse network trains
on them either way. Without it the attack is naive: it ignores the defence.

Captures: --capture ID (repeatable), --last N (default 8), or --follow (attack live traffic as it
arrives: the store is polled every --poll seconds; stop with Ctrl-C, --max-batches or --duration).
Attack parameters: --param NAME=VALUE (repeatable; see the attack's docstring, e.g. iterations=500,
tv_weight=0.05, epochs=10, shadow=different), validated before anything runs. --device cpu|cuda
(env SPLITLAB_DEVICE, default cpu) is where the attack computes; CUDA asked for where torch has
none falls back to the CPU with a message.

Auxiliary data: --aux-data DATASET[:PART][:COUNT] (PART train|test, default train; e.g.
mnist:train:5000) or noise[:COUNT] / uniform-noise[:COUNT]; --aux-setting labels it for the record.

Output (--out DIR): batch-NNNN.png (each reconstruction beside its original where ground truth is
known, else alone), batch-NNNN.npz (reconstructions, capture ids, request ids) and summary.json;
PSNR/SSIM (data_range 1) are printed per batch and overall where ground truth is known.
Ground truth: attached to the store with `attacker truth FILE.npz`, or given here with
--ground-truth FILE.npz (arrays 'request_ids', one per image in batch order, and 'images').
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from models.env import DEVICES
from models.errors import SplitlabError

from .attacks.knowledge import HEAD_SOURCES
from .attacks.registry import names
from .captures.store import Capture, CaptureStore, load_ground_truth_file

AUX_SETTINGS = ("same-set", "same-distribution", "random-noise", "other")


def add_arguments(p) -> None:
    p.add_argument("--method", required=True, choices=names("inversion"), help="which attack (see above)")
    p.add_argument("--deployment", required=True, help="deployment id whose captures are attacked")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--capture", type=int, action="append", metavar="ID", help="capture id (repeatable)")
    sel.add_argument("--last", type=int, help="the newest N captures of the deployment (default 8)")
    sel.add_argument("--follow", action="store_true", help="attack new captures as they arrive")
    p.add_argument("--out", required=True, help="output folder for PNG grids, arrays and summary.json")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="attack parameter (repeatable); VALUE is JSON or a plain string")
    p.add_argument("--aux-data", help="auxiliary images: DATASET[:train|test][:COUNT], noise[:COUNT], "
                                      "uniform-noise[:COUNT]")
    p.add_argument("--aux-setting", choices=AUX_SETTINGS,
                   help="what the auxiliary data is relative to the target's training data (blackbox label; "
                        "default random-noise for noise, else other)")
    p.add_argument("--artifacts", help="artifact store (the model provider's / cloud's knowledge; offline queries)")
    p.add_argument("--edge", help="edge REST base URL for live black-box queries, e.g. http://edge:8080")
    p.add_argument("--adaptive", action="store_true",
                   help="the attacker knows the deployment's feature defence (deployment.json) and attacks through "
                        "it (see above); default: naive")
    p.add_argument("--head-from", choices=HEAD_SOURCES, default="auto",
                   help="white-box head source: a captured GetHead payload or the artifact store (default: "
                        "capture if one was seen, else artifacts)")
    p.add_argument("--ground-truth", help=".npz of request_ids + images to score against (see above)")
    p.add_argument("--batch-images", type=int, default=64, help="images per batch / PNG grid (default 64)")
    p.add_argument("--poll", type=float, default=1.0, help="--follow: seconds between store polls (default 1)")
    p.add_argument("--max-batches", type=int, help="--follow: stop after this many batches")
    p.add_argument("--duration", type=float, help="--follow: stop after this many seconds")
    p.add_argument("--query-timeout", type=float, default=10.0,
                   help="--edge: seconds to wait for the tap to record a query's features (default 10)")
    p.add_argument("--device", choices=DEVICES,
                   help="where the attack computes (env SPLITLAB_DEVICE, default cpu; same as --param device=...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# --- parameters ----------------------------------------------------------------------------------

def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise SplitlabError(f"--param must be NAME=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[name.strip()] = value
    return params


def parse_aux(spec: str | None) -> tuple[str, str, int | None]:
    """``DATASET[:PART][:COUNT]`` / ``noise[:COUNT]`` -> (name, part, count)."""
    if not spec:
        raise SplitlabError("this method needs auxiliary data: pass --aux-data DATASET[:train|test][:COUNT] "
                            "or noise[:COUNT]")
    parts = spec.split(":")
    name, part, count = parts[0], "train", None
    for extra in parts[1:]:
        if extra in ("train", "test"):
            part = extra
        elif extra.isdigit() and int(extra) > 0:
            count = int(extra)
        else:
            raise SplitlabError(f"--aux-data {spec!r}: {extra!r} is neither train/test nor a positive count")
    if name in ("noise", "uniform-noise") and count is None:
        count = 2000
    return name, part, count


def load_aux(spec: str | None, input_shape, labelled: bool = False):
    """(images tensor (N, C, H, W) in [0, 1], labels or None, description)."""
    import torch

    from models.datasets import load_dataset, to_tensor

    name, part, count = parse_aux(spec)
    if name in ("noise", "uniform-noise"):
        if labelled:
            raise SplitlabError("this method needs labelled auxiliary data (a dataset), not noise")
        from .attacks import noise_images

        return noise_images(count, input_shape, kind="uniform" if name == "uniform-noise" else "gaussian"), \
            None, f"{name}:{count}"
    ds = load_dataset(name)
    x, y = ds.part(part)
    if count is not None:
        x, y = x[:count], y[:count]
    if tuple(ds.input_shape) != tuple(input_shape):
        raise SplitlabError(f"--aux-data {name} has images {list(ds.input_shape)} but the deployment takes "
                            f"{list(input_shape)}")
    return to_tensor(x), torch.from_numpy(np.asarray(y)).long(), f"{name}:{part}:{len(x)}"


# --- knowledge -----------------------------------------------------------------------------------

def _artifacts(args):
    from models.artifacts import ArtifactStore

    if not args.artifacts:
        return None
    if not Path(args.artifacts).is_dir():
        raise SplitlabError(f"--artifacts {args.artifacts} is not a folder")
    return ArtifactStore(args.artifacts)


def knowledge_source(args, store: CaptureStore, progress: bool):
    """Everything the flags give the attacker; the attack's knowledge class takes only what it may."""
    from .attacks import KnowledgeSource

    return KnowledgeSource(args.deployment, artifacts=_artifacts(args), captures=store, edge_url=args.edge,
                           head_from=args.head_from, query_timeout=args.query_timeout, threads=args.threads,
                           progress=progress, adaptive=args.adaptive)


def add_aux(source, args, aux: str) -> None:
    """Load ``--aux-data`` into the source when the threat model includes auxiliary data (``aux``)."""
    if aux == "none":
        return
    images, labels, desc = load_aux(args.aux_data, source.input_shape(), labelled=aux == "labelled")
    source.aux_images, source.aux_labels, source.aux_name = images, labels, desc
    source.aux_setting = args.aux_setting or ("random-noise" if desc.startswith(("noise", "uniform-noise")) else "other")


# --- running -------------------------------------------------------------------------------------

def _select(args, store: CaptureStore) -> list[Capture]:
    dep = args.deployment
    if args.capture:
        caps = store.captures(ids=args.capture)
        found = {c.id: c for c in caps}
        for cid in args.capture:
            c = found.get(cid)
            if c is None:
                raise SplitlabError(f"no capture {cid} in {store.root}")
            if c.deployment_id != dep:
                raise SplitlabError(f"capture {cid} is of deployment {c.deployment_id!r}, not {dep!r}")
            if not c.ok:
                raise SplitlabError(f"capture {cid} has no usable features ({c.error or f'status {c.status}'})")
        return [found[c] for c in dict.fromkeys(args.capture)]
    last = 8 if args.last is None else args.last
    if last < 1:
        raise SplitlabError(f"--last must be at least 1, got {last}")
    caps = store.captures(deployment=dep, last=last, ok_only=True)
    if not caps:
        raise SplitlabError(f"the store has no successful captures of {dep!r} to attack")
    return caps


def _truth_for(cap: Capture, store: CaptureStore, extra: dict) -> np.ndarray | None:
    images = extra.get(cap.request_id)
    if images is None:
        images = store.ground_truth(cap.request_id)
    if images is None or len(images) != cap.batch:
        return None
    return images


class Runner:
    """Reconstruct batches of captures, write grids and arrays, print and collect metrics."""

    def __init__(self, args, store: CaptureStore, attack, feature_shape, input_shape, truth: dict):
        self.args, self.store, self.attack = args, store, attack
        self.feature_shape, self.input_shape = tuple(feature_shape), tuple(input_shape)
        self.truth = truth
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.batches: list[dict] = []
        self.psnr: list[float] = []
        self.ssim: list[float] = []

    def run_batch(self, caps: list[Capture]) -> dict:
        from .metrics import PSNR_CAP, image_metrics

        feats, origs, owners = [], [], []
        for c in caps:
            f = self.store.features(c)
            if tuple(f.shape[1:]) != self.feature_shape:
                raise SplitlabError(f"capture {c.id} has features {list(f.shape[1:])} but the attack expects "
                                    f"{list(self.feature_shape)} (a different deployment or split?)")
            feats.append(f)
            truth = _truth_for(c, self.store, self.truth)
            for j in range(len(f)):
                origs.append(None if truth is None else truth[j])
                owners.append((c.id, c.request_id, j))
        features = np.concatenate(feats).astype(np.float32, copy=False)
        started = time.perf_counter()
        recon = self.attack.reconstruct(features)
        seconds = time.perf_counter() - started
        recon = recon.detach().cpu().float().numpy() if hasattr(recon, "detach") else np.asarray(recon)
        index = len(self.batches) + 1
        known = [i for i, o in enumerate(origs) if o is not None]
        for o in origs:
            if o is not None and tuple(o.shape) != tuple(recon.shape[1:]):
                raise SplitlabError(f"ground truth images are {list(o.shape)} but reconstructions are "
                                    f"{list(recon.shape[1:])}")
        from .grid import save_grid

        png = save_grid(self.out / f"batch-{index:04d}.png", recon, origs if known else None)
        np.savez_compressed(self.out / f"batch-{index:04d}.npz", reconstructions=recon.astype(np.float32),
                            capture_ids=np.array([o[0] for o in owners]),
                            request_ids=np.array([o[1] for o in owners]),
                            batch_index=np.array([o[2] for o in owners]))
        entry = {"batch": index, "images": len(recon), "captures": [c.id for c in caps], "seconds": round(seconds, 3),
                 "png": str(png), "with_ground_truth": len(known)}
        line = f"batch {index}: {len(recon)} image(s) from capture(s) {_ids(caps)} in {seconds:.1f} s -> {png}"
        if known:
            m = image_metrics(recon[known], np.stack([origs[i] for i in known]), psnr_cap=PSNR_CAP)
            self.psnr += m["psnr"]
            self.ssim += m["ssim"]
            entry.update(psnr_mean=m["psnr_mean"], psnr_std=m["psnr_std"], ssim_mean=m["ssim_mean"],
                         ssim_std=m["ssim_std"], mse_mean=m["mse_mean"], psnr=m["psnr"], ssim=m["ssim"])
            line += (f"\n  PSNR {m['psnr_mean']:.2f} +- {m['psnr_std']:.2f} dB, SSIM {m['ssim_mean']:.3f} +- "
                     f"{m['ssim_std']:.3f} over {len(known)} image(s) with ground truth")
        else:
            line += "\n  (no ground truth for these captures: attach it with `attacker truth` to score PSNR/SSIM)"
        print(line, flush=True)
        self.batches.append(entry)
        self._summary()
        return entry

    def _summary(self) -> dict:
        summary = {"method": self.args.method, "deployment": self.args.deployment,
                   "params": self.attack.params.as_dict() if hasattr(self.attack.params, "as_dict") else {},
                   "images": sum(b["images"] for b in self.batches), "batches": self.batches,
                   "fit_seconds": getattr(self.attack, "fit_seconds", None),
                   "device": getattr(self.attack, "device", None)}
        if self.psnr:
            summary.update(psnr_mean=float(np.mean(self.psnr)), psnr_std=float(np.std(self.psnr)),
                           ssim_mean=float(np.mean(self.ssim)), ssim_std=float(np.std(self.ssim)),
                           scored=len(self.psnr))
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary

    def finish(self) -> None:
        s = self._summary()
        if self.psnr:
            print(f"overall: {s['images']} image(s); PSNR {s['psnr_mean']:.2f} +- {s['psnr_std']:.2f} dB, SSIM "
                  f"{s['ssim_mean']:.3f} +- {s['ssim_std']:.3f} over {s['scored']} with ground truth; "
                  f"written to {self.out}")
        else:
            print(f"overall: {s['images']} image(s) reconstructed, none with ground truth; written to {self.out}")


def _ids(caps: list[Capture]) -> str:
    ids = [c.id for c in caps]
    return ", ".join(map(str, ids)) if len(ids) <= 6 else f"{ids[0]}..{ids[-1]} ({len(ids)})"


def _chunks(caps: list[Capture], limit: int) -> list[list[Capture]]:
    out, cur, n = [], [], 0
    for c in caps:
        if cur and n + c.batch > limit:
            out.append(cur)
            cur, n = [], 0
        cur.append(c)
        n += c.batch
    if cur:
        out.append(cur)
    return out


def run_invert(args) -> int:
    from .attacks import attack_class, create
    from .attacks.knowledge import KnowledgeError, knowledge_class, knowledge_for

    if args.batch_images < 1:
        raise SplitlabError(f"--batch-images must be at least 1, got {args.batch_images}")
    if args.poll <= 0:
        raise SplitlabError(f"--poll must be positive, got {args.poll}")
    for flag in ("max_batches", "duration"):
        value = getattr(args, flag)
        if value is not None and (not args.follow or value <= 0):
            raise SplitlabError(f"--{flag.replace('_', '-')} needs --follow and a positive value")
    progress = not args.no_progress
    params = parse_params(args.param)
    fields = attack_class(args.method).Params.field_names()
    if "progress" in fields:
        params.setdefault("progress", progress)
    if args.device and "device" in fields:
        if params.setdefault("device", args.device) != args.device:
            raise SplitlabError(f"--device {args.device} and --param device={params['device']} disagree")
    attack = create(args.method, params)  # validates the parameters before anything heavy runs
    kcls = knowledge_class(attack)
    if kcls.AUX != "none":
        parse_aux(args.aux_data)
    truth = load_ground_truth_file(args.ground_truth) if args.ground_truth else {}
    store = CaptureStore(args.store, create=False)
    source = knowledge_source(args, store, progress)
    problem = kcls.missing(source)  # what the threat model lacks, before anything is loaded
    if problem:
        raise KnowledgeError(problem)
    known = store.deployment_ids()
    if args.deployment not in known:
        arts = source.artifacts
        if not (args.follow and arts is not None and args.deployment in arts.list_deployments()):
            raise SplitlabError(f"no deployment {args.deployment!r} in the capture store {args.store}; seen: "
                                f"{', '.join(known) or 'nothing yet (is the tap recording there?)'}")
    caps = [] if args.follow else _select(args, store)
    add_aux(source, args, kcls.AUX)
    knowledge = knowledge_for(attack, source)
    print(f"{attack.key()}: {knowledge.origin}")
    attack.fit(knowledge)
    if attack.fit_seconds:  # zero where there is nothing to fit (white-box)
        print(f"fitted the {args.method} attack in {attack.fit_seconds:.1f} s")
    feature_shape = getattr(knowledge, "feature_shape", None) or getattr(attack, "feature_shape", None)
    runner = Runner(args, store, attack, feature_shape, knowledge.input_shape, truth)
    if not args.follow:
        for chunk in _chunks(caps, args.batch_images):
            runner.run_batch(chunk)
    else:
        follow(args, store, runner)
    runner.finish()
    return 0


def follow(args, store: CaptureStore, runner: Runner) -> None:
    """Poll the store for new captures of the deployment and attack each new batch."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    last = store.captures(deployment=args.deployment, last=1)
    after = last[-1].id if last else 0
    deadline = time.monotonic() + args.duration if args.duration else None
    print(f"following new captures of {args.deployment} in {store.root} (after capture {after}); Ctrl-C to stop",
          flush=True)
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            break
        new = store.captures(deployment=args.deployment, after_id=after, ok_only=True)
        if new:
            for chunk in _chunks(new, args.batch_images):
                runner.run_batch(chunk)
                if args.max_batches and len(runner.batches) >= args.max_batches:
                    return
            after = new[-1].id
            continue
        stop.wait(args.poll)
    sys.stdout.flush()
