"""Classifier model inversion suite (Fredrikson et al. 2015; the course project's task 2): every
person's face reconstructed from a face recogniser, judged by measures a reader can trust.

    python -m benchmarks run benchmarks/configs/face_inversion.yaml [--device cuda]

The target is Fredrikson's MLP (``face-mlp``: one hidden layer of 3000 sigmoid units) trained on
the AT&T faces (7 images of each of 40 people; images 8-10 held out), deployed split at ``split``.
For each person the attack (``classifier-inversion/mi-face``) makes up the image the target is
surest is that person, with one of two kinds of knowledge:

* ``white-box``: the head the edge downloads joined to the tail the cloud serves (exact gradients);
* ``api``: the edge's answers only (probabilities; NES gradient estimates, bounded queries per
  person), searching a coarse pixel grid or the eigenfaces of the attacker's auxiliary faces
  (:mod:`attacker.attacks.inversion.search_space`). In-process here with the edge's float64
  softmax; the edge answers the same (see the membership live test).
* ``query-free``: the tail only (the cloud's view) and labelled auxiliary faces: a shadow head is
  trained through the tail (the query-free attack's training), then inverted through with exact
  gradients; ``shadow_folds: 2`` trains one shadow per half of the people on the other half's
  photos only (people-disjoint).

The attacker's auxiliary faces are the dataset's held-out images (8-10 of each person): photos the
target never trained on, taken like the training ones - what an attacker who collected other
pictures of the enrolled people would own. The eigenface basis of a person leaves that person's own
photos out (the API attack never holds a photo of whom it reconstructs); the query-free shadow is
trained with labels, so unless people-disjoint it has seen the person's held-out photos. What
those photos alone show is a reference row: their mean, per person.

Two measures, neither of which is the attacked model's own verdict:

* SSIM and PSNR (scikit-image, data range 1) of each reconstruction to the person's mean training
  face, beside the same to the other 39 people's mean faces, and how often the person's own mean
  face is the most similar of the 40 (identification by SSIM);
* a separately trained recogniser of another architecture (``evaluator``: by default the
  ``lenet5`` CNN, never seen by the attack) asked who the reconstruction is: top-1 and top-5
  over the 40 people (chance 0.025 and 0.125).

Baseline: the mean face of all training images (what an attacker who knows faces but nobody in
particular would draw) under the same measures; reference: the mean of the person's held-out
photos (what the auxiliary data alone shows). One grid of all 40 people (a training image beside
each attack's reconstruction) is written as ``faces.png``; reconstructions are kept under the
artifact store (``benchmarks/face_inversion/<trial>.npz``) for the report to draw. Config::

    suite: face_inversion
    seeds: 1
    target: {arch: face-mlp, dataset: olivetti, split: fc1, options: {epochs: 30, batch_size: 64, scheme: full}}
    evaluator: {arch: lenet5, options: {epochs: 15, batch_size: 32, lr: 0.002, scheme: full}}
    people: 40                       # the first N people, or a list of person ids
    notes: benchmarks/results/face_inversion/notes.md   # optional: hand-written notes, the report's last section
    attacks:
      - {label: white-box, knowledge: white-box, params: {iterations: 100, step: 0.1}}
      - {label: api, knowledge: api, params: {basis: faces, sigma: 0.5, step: 0.3, samples: 10, max_queries: 1050}}
      - {label: query-free, knowledge: query-free, params: {iterations: 100, step: 100}}
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from attacker.attacks.inversion.face_metrics import everyone_face, face_metrics, mean_faces
from benchmarks.harness.report import fmt, group, table, values
from benchmarks.harness.spec import Context, Trial, checked_entry, expand, seeds_of, trial_options
from models.errors import SplitlabError

NAME = "face_inversion"
TITLE = "Classifier model inversion (faces)"
KNOWLEDGE = ("white-box", "api", "query-free")
AUX = "the held-out AT&T images (8-10 of each person; never trained on)"
KEYS = {"suite", "title", "seeds", "out", "target", "evaluator", "people", "attacks", "notes"}
COLUMNS = [("evaluator top-1", "eval_top1"), ("evaluator top-5", "eval_top5"), ("SSIM own", "ssim_own"),
           ("SSIM others", "ssim_others"), ("PSNR own", "psnr_own"), ("PSNR others", "psnr_others"),
           ("identified by SSIM", "ssim_identified"), ("target top-1", "target_top1")]


def trials(config: dict) -> list[Trial]:
    from attacker.attacks.registry import attack_class
    from models.zoo import split_points

    checked_entry("face_inversion config", config, {"target", "evaluator", "attacks"}, KEYS)
    target = checked_entry("target", config["target"], {"arch", "dataset", "split"},
                           {"arch", "dataset", "split", "options"})
    if target["split"] not in split_points(target["arch"]):
        raise SplitlabError(f"split {target['split']!r} is not a split point of {target['arch']}")
    evaluator = checked_entry("evaluator", config["evaluator"], {"arch"}, {"arch", "options"})
    if evaluator["arch"] == target["arch"]:
        raise SplitlabError("the evaluator must be another architecture than the target (it judges the target's "
                            "reconstructions)")
    people = config.get("people", 40)
    if isinstance(people, int):
        people = list(range(people))
    if not isinstance(people, list) or not people or not all(isinstance(p, int) and 0 <= p < 40 for p in people):
        raise SplitlabError(f"'people' must be a count or a list of person ids 0..39, got {people!r}")
    spec = {**target, "options": trial_options("target", target["arch"], target),
            "evaluator": {**evaluator, "options": trial_options("evaluator", evaluator["arch"], evaluator)},
            "people": people}
    attacks = []
    for entry in config["attacks"]:
        entry = checked_entry("attack", entry, {"label", "knowledge"}, {"label", "knowledge", "params"})
        if entry["knowledge"] not in KNOWLEDGE:
            raise SplitlabError(f"attack {entry['label']}: knowledge must be one of {', '.join(KNOWLEDGE)}")
        attack_class("classifier-inversion/mi-face").Params.from_dict(entry.get("params") or {})
        attacks.append((entry["label"], {"name": "classifier-inversion/mi-face", "knowledge": entry["knowledge"],
                                         "params": entry.get("params") or {}}))
    return expand(NAME, [(target["arch"], spec)], attacks, seeds_of(config))


def run_trial(trial: Trial, ctx: Context) -> dict:
    from attacker.attacks.inversion.knowledge import probe_feature_shape
    from attacker.attacks.knowledge import KnowledgeSource, knowledge_for
    from attacker.attacks.membership.knowledge import model_query
    from attacker.attacks.registry import create
    from models import ArtifactStore, load_dataset, to_tensor
    from models.reference import obtain_model
    from models.split import split_model
    from models.training import TrainOptions

    target, spec = trial.target, trial.attack
    store = ArtifactStore(ctx.artifacts)
    dataset = load_dataset(target["dataset"])

    def obtain(arch, options):
        opts = TrainOptions(arch=arch, dataset=target["dataset"], **{**options, "seed": trial.seed,
                                                                      "device": trial.device})
        return obtain_model(store, opts, trial.device, progress=ctx.progress, dataset=dataset)

    model, manifest = obtain(target["arch"], target["options"])
    evaluator, eval_manifest = obtain(target["evaluator"]["arch"], target["evaluator"]["options"])
    record = {"input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
              "split": target["split"], "model_id": manifest["model_id"]}
    head, tail = split_model(model, target["split"])
    aux = {"aux_images": to_tensor(dataset.x_test), "aux_labels": dataset.y_test, "aux_name": AUX}
    if spec["knowledge"] == "api":
        source = KnowledgeSource(record=record, query=model_query(model), query_label="the model in process", **aux)
    elif spec["knowledge"] == "query-free":
        shape = probe_feature_shape(head, dataset.input_shape)  # what the cloud's deployment record says
        source = KnowledgeSource(record={**record, "arch": target["arch"], "feature_shape": list(shape)}, tail=tail,
                                 **aux)
    else:
        source = KnowledgeSource(record=record, head=head, tail=tail)
    attack = create(spec["name"], {"seed": trial.seed, "device": trial.device, **spec["params"]})
    knowledge = knowledge_for(attack, source, setting=spec["knowledge"])
    people = np.asarray(target["people"])
    t0 = time.perf_counter()
    images = attack.fit(knowledge).reconstruct(people).numpy()
    seconds = time.perf_counter() - t0
    means = mean_faces(dataset)
    metrics = face_metrics(images, people, means, evaluator.eval(), model.eval())
    blank = np.repeat(everyone_face(dataset), len(people), 0)
    metrics.update({f"baseline_{k}": v for k, v in face_metrics(blank, people, means, evaluator).items()})
    x_aux = aux["aux_images"].numpy()
    own_photos = np.stack([x_aux[dataset.y_test == p].mean(0) for p in people])
    metrics.update({f"aux_{k}": v for k, v in face_metrics(own_photos, people, means, evaluator).items()})
    path = Path(ctx.artifacts) / "benchmarks" / NAME / f"{trial.trial_id}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=(images * 255).round().astype(np.uint8), people=people)
    metrics.update({"attack_seconds": seconds, "target_test_accuracy": manifest["test_accuracy"],
                    "evaluator_test_accuracy": eval_manifest["test_accuracy"], "images_file": str(path),
                    "knowledge_origin": knowledge.origin,
                    **{f"fit_{k}": v for k, v in attack.fit_stats().items() if isinstance(v, (int, float, str))}})
    return metrics


def report(results: list[dict], out_dir: Path, config: dict) -> list[str]:
    groups = group(results, lambda r: r["label"].rsplit(" seed ", 1)[0])
    if not groups:
        return ["No trial has results yet."]
    per_seed = {r["seed"]: r["metrics"] for rs in groups.values() for r in rs}
    target_acc, eval_acc = ([m[key] for m in per_seed.values()] for key in ("target_test_accuracy",
                                                                             "evaluator_test_accuracy"))
    body = [f"Target: face-mlp, test accuracy {fmt(target_acc, 3)}; evaluator (another architecture, "
            f"trained separately, never seen by the attack): test accuracy {fmt(eval_acc, 3)}. "
            "Each row: one reconstruction per person, mean over the people (± std over seeds). SSIM / PSNR: to the "
            "person's mean training face (own) and to the other people's (others); identified by SSIM: the own mean "
            "face is the most similar of all; chance for top-1 / top-5 / identification is 0.025 / 0.125 / 0.025. "
            "Target top-1: the attacked model's own verdict (what the attack optimised, not evidence).", ""]
    rows = [[label, len(rs), *(fmt(values(rs, key), 3) for _, key in COLUMNS),
             fmt(values(rs, "fit_queries_per_class"), 0) if values(rs, "fit_queries_per_class") else "-",
             fmt(values(rs, "attack_seconds"), 0)]
            for label, rs in groups.items()]
    everyone = [r for rs in groups.values() for r in rs]
    for name, prefix in (("mean face of everyone (baseline)", "baseline"),
                         ("mean of the person's held-out photos (the auxiliary data; reference)", "aux")):
        rows.append([name, "", *(fmt(values(everyone, f"{prefix}_{key}"), 3) if key != "target_top1" else "-"
                                 for _, key in COLUMNS), "", ""])
    body += table(["attack", "seeds", *(c for c, _ in COLUMNS), "queries / person", "attack s"], rows)
    grid = face_grid(groups, config, out_dir / "faces.png")
    if grid:
        body += ["", f"![each person: a training image, then each attack's reconstruction ({', '.join(groups)})]"
                     "(faces.png)"]
    return body


def face_grid(groups: dict, config: dict, path: Path) -> Path | None:
    """All people, eight per row: a training image beside each attack's reconstruction (a third of
    the size: the reconstructions' noise does not compress, and the grid stays under 300 KB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models import load_dataset

    recon = {}
    for label, rs in groups.items():
        f = Path(rs[0]["metrics"].get("images_file", ""))
        if not f.is_file():
            return None
        with np.load(f) as z:
            recon[label] = dict(zip(z["people"].tolist(), z["images"][:, 0]))
    people = sorted(set.intersection(*(set(v) for v in recon.values())))
    ds = load_dataset(config["target"]["dataset"])
    first = {p: ds.x_train[np.flatnonzero(ds.y_train == p)[0], :, :, 0] for p in people}
    cells = [[first[p], *(recon[label][p] for label in recon)] for p in people]
    h, w = cells[0][0][::3, ::3].shape
    per_row, gap = 8, 4
    block = len(cells[0]) * w + gap
    canvas = np.full((-(-len(cells) // per_row) * (h + gap), per_row * block), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, per_row)
        for j, img in enumerate(cell):
            canvas[r * (h + gap): r * (h + gap) + h, c * block + j * w: c * block + (j + 1) * w] = img[::3, ::3]
    canvas = (canvas // 16 * 16 + 8).astype(np.uint8)  # 16 grey levels: the noise compresses, faces stay
    plt.imsave(path, canvas, cmap="gray", vmin=0, vmax=255)
    return path
