"""Command line of the model zoo: ``python -m models list|train|deploy|splits``."""

from __future__ import annotations

import argparse
import os
import sys

from .env import DEVICES, resolve_device
from .errors import SplitlabError


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise SplitlabError(f"{name} must be an integer, got {os.environ[name]!r}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts", default=os.environ.get("SPLITLAB_ARTIFACTS", "artifacts"),
                   help="artifact store root (env SPLITLAB_ARTIFACTS, default ./artifacts)")
    p.add_argument("--data-root", default=os.environ.get("SPLITLAB_DATA"),
                   help="dataset root searched first (env SPLITLAB_DATA); see README 'Datasets'")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (env SPLITLAB_THREADS, default 1 so that services can share cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="architectures, their split points and the feature shape at each")
    p.add_argument("--arch", help="only this architecture")

    p = sub.add_parser("train", help="train a model and store it with its membership ground truth")
    p.add_argument("--arch", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit", type=int, help="train on at most this many member images")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before each FC layer (defence)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="L2 weight decay (defence; Adam's coupled decay = a loss penalty of weight_decay/2 * ||w||^2)")
    p.add_argument("--l2-scope", default="all", choices=["all", "output"],
                   help="where --weight-decay applies: every layer, or the output layer only (as paper 004)")
    p.add_argument("--dp-epsilon", type=float, default=None,
                   help="train with DP-SGD (Opacus) to this epsilon over the given epochs (defence; e.g. 2, 4, 8)")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="DP-SGD's delta (default 1e-5)")
    p.add_argument("--dp-clip", type=float, default=1.0, help="DP-SGD's per-sample gradient norm bound (default 1.0)")
    p.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop once the accuracy on 2,000 test images (a fixed draw) has not improved for "
                        "PATIENCE epochs, and keep the best epoch's weights (defence, as paper 003)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--augment", action="store_true", help="random crop + flip (colour datasets)")
    p.add_argument("--eval-each-epoch", action="store_true",
                   help="measure test accuracy after every epoch (printed, and kept in the manifest)")
    p.add_argument("--scheme", default="privacy", choices=["privacy", "full"],
                   help="privacy: members are 25%% of the train set, disjoint shadow/aux parts recorded; "
                        "full: the whole train set, test set as non-members")
    p.add_argument("--members", metavar="FILE",
                   help="train on these indices of the train split instead of the scheme's target members "
                        "(.npy, or integers separated by spaces, commas or newlines); the rest are its non-members")
    p.add_argument("--device", default=None, choices=DEVICES,
                   help="cpu or cuda; without CUDA it says so and falls back to the CPU [SPLITLAB_DEVICE, default cpu]")
    p.add_argument("--id", help="model id (default ARCH-DATASET-sSEED for the default options, else "
                                "ARCH-DATASET-sSEED[-doP][-wdW][-l2out][-dpE]-HASH, HASH over every option that changes the weights)")
    p.add_argument("--force", action="store_true", help="replace an existing model of the same id")
    p.add_argument("--reuse", action="store_true",
                   help="a model stored under the id with these options is kept (exit 0, nothing trained); "
                        "one trained with other options is still an error")
    _add_common(p)

    p = sub.add_parser("deploy", help="export the head to ONNX and save the tail at a split point")
    p.add_argument("model_id")
    p.add_argument("--split", required=True, action="append",
                   help="split point (repeat for several; 'all' for every split point)")
    p.add_argument("--id", help="deployment id (default MODEL_ID--SPLIT[--DEFENCE]); only with one --split")
    p.add_argument("--defence", "--feature-defense", dest="defence", metavar="SPEC",
                   help="feature defence exported in the head, e.g. gaussian:sigma=0.1, laplace:scale=0.1, "
                        "dropout:p=0.3, quantize:bits=4, deeper:layers=2 | deeper:to=relu2, nonlinear:kind=tanh; "
                        "chain with '+' (see models/defences/features.py)")
    p.add_argument("--force", action="store_true", help="replace an existing deployment")
    _add_common(p)

    p = sub.add_parser("models", help="list the trained models and deployments in the store")
    _add_common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SplitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _threads(args) -> None:
    from .onnx_runtime import default_threads, set_torch_threads

    threads = args.threads if args.threads is not None else default_threads()
    if threads < 1:
        raise SplitlabError(f"--threads must be at least 1, got {threads}")
    set_torch_threads(threads)


def cmd_list(args) -> int:
    from .zoo import DEFAULT_INPUT_SHAPES, architecture_names, build_model, feature_shapes

    names = [args.arch] if args.arch else architecture_names()
    for arch in names:
        model = build_model(arch)
        shape = DEFAULT_INPUT_SHAPES[arch]
        print(f"{arch}  (input {'x'.join(map(str, shape))})")
        for point, fshape in feature_shapes(model, shape).items():
            size = 1
            for s in fshape:
                size *= s
            print(f"  {point:<10} {'x'.join(map(str, fshape)):<14} {size:>8} values")
    return 0


def cmd_train(args) -> int:
    from .artifacts import ArtifactStore, validate_id
    from .training import TrainOptions, default_model_id, spec_differences, train

    _threads(args)
    opts = TrainOptions(arch=args.arch, dataset=args.dataset, epochs=args.epochs, limit=args.limit,
                        dropout=args.dropout, weight_decay=args.weight_decay, weight_decay_scope=args.l2_scope,
                        dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta, dp_max_grad_norm=args.dp_clip,
                        early_stopping=args.early_stopping, seed=args.seed,
                        batch_size=args.batch_size, lr=args.lr, augment=args.augment, scheme=args.scheme,
                        eval_each_epoch=args.eval_each_epoch, device=resolve_device(args.device, "models train"),
                        members=read_indices(args.members) if args.members else None)
    opts.validate()
    store = ArtifactStore(args.artifacts)
    model_id = validate_id("model", args.id or default_model_id(opts))
    if (store.model_dir(model_id) / "manifest.json").is_file() and not args.force:
        diff = spec_differences(store.manifest(model_id), opts)
        if args.reuse and not diff:
            print(f"model {model_id} is already stored with these options; reusing it")
            return 0
        what = f"with other options ({'; '.join(diff)})" if diff else "with these options"
        raise SplitlabError(f"model {model_id!r} already exists in {store.root}, trained {what}; "
                            "pass --force or --id")
    model, manifest = train(opts, args.data_root)
    manifest["model_id"] = model_id
    path = store.save_model(model_id, model.state_dict(), manifest, overwrite=args.force)
    print(f"train accuracy {manifest['train_accuracy']:.4f}  test accuracy {manifest['test_accuracy']:.4f}  "
          f"({manifest['train_seconds']:.1f} s on {manifest['device']})")
    if "dp" in manifest:
        dp = manifest["dp"]
        print(f"DP-SGD: epsilon {dp['spent_epsilon']:.3f} spent of {dp['target_epsilon']:g} (delta {dp['delta']:g}, "
              f"noise multiplier {dp['noise_multiplier']:.3f}, clip {dp['max_grad_norm']:g}, {dp['accountant']} "
              "accountant)")
    print(f"model {model_id} -> {path}")
    return 0


def read_indices(path: str) -> list[int]:
    """Member indices from a ``.npy`` file or a text file of integers."""
    import numpy as np

    try:
        if path.endswith(".npy"):
            values = np.load(path, allow_pickle=False).ravel()
        else:
            with open(path) as f:
                values = [int(v) for v in f.read().replace(",", " ").split()]
    except (OSError, ValueError) as exc:
        raise SplitlabError(f"--members {path}: cannot read member indices ({exc})") from None
    return [int(v) for v in values]


def cmd_deploy(args) -> int:
    from .artifacts import ArtifactStore
    from .defences.features import defences, label, record_defences
    from .deploy import deploy

    _threads(args)
    chain = defences(args.defence)  # a bad spec fails before any model is loaded
    store = ArtifactStore(args.artifacts)
    splits = args.split
    if splits == ["all"]:
        from .loading import load_model

        splits = load_model(store, args.model_id)[0].split_points
    if args.id and len(splits) > 1:
        raise SplitlabError("--id names one deployment; give a single --split with it")
    for split in splits:
        rec = deploy(store, args.model_id, split, args.id, args.force, args.data_root, defence=chain)
        print(f"deployment {rec['deployment_id']}: features {'x'.join(map(str, rec['feature_shape']))}, "
              f"ONNX vs torch max abs diff {rec['onnx_max_abs_diff']:.2e}")
        if rec.get("accuracy"):
            acc = rec["accuracy"]
            print(f"  defence {label(record_defences(rec))}: split {rec['split']}, tail accuracy {acc['defended']:.4f} "
                  f"(clean {acc['clean']:.4f}) on {acc['images']} test images")
    return 0


def cmd_models(args) -> int:
    from .artifacts import ArtifactStore
    from .defences.features import label, record_defences

    store = ArtifactStore(args.artifacts)
    for model_id in store.list_models():
        m = store.manifest(model_id)
        print(f"model {model_id}: {m['arch']} on {m['dataset']}, test accuracy {m['test_accuracy']:.4f}")
    for dep_id in store.list_deployments():
        d = store.deployment(dep_id)
        defence = f", defence {label(record_defences(d))}" if d.get("feature_defense") else ""
        print(f"deployment {dep_id}: split {d['split']}, features {d['feature_shape']}{defence}")
    return 0


COMMANDS = {"list": cmd_list, "train": cmd_train, "deploy": cmd_deploy, "models": cmd_models}

if __name__ == "__main__":
    sys.exit(main())
