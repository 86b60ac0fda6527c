"""Run one membership experiment: per seed a target, every attack against it, metrics and a ROC plot.

For each seed:

1. the target: trained for the experiment with the seed (its privacy split: members, held-out
   non-members, the attacker's data) through :func:`.models_setup.ensure_model`, or the stored
   ``model_id``; with ``through_pipeline`` also deployed at the split point, so the attacker's
   queries travel the live pipeline (the edge's ``/v1/infer`` -> tap -> cloud) and read the
   answer's probabilities;
2. the evaluation samples: ``samples`` of its members and as many held-out non-members from the
   manifest's ground truth (:func:`attacker.attacks.membership.evaluation.evaluation_samples`);
3. for each attack: built through the registry (``membership/<name>``, the seed as its seed and
   the service's device where it has them), its knowledge through ``knowledge_for`` on what the lab
   holds (the artifact store: the target's recipe and the shared shadow/reference models; the edge
   for live queries), fitted, asked to score the samples, and scored with
   :func:`attacker.membership_metrics.membership_metrics` (at the threshold it chose on its own
   shadow data where it chose one).

Rows give each attack's metrics as mean and sample standard deviation over the seeds; the ROC plot
(``images/roc.png``) pools each attack's scores over the seeds, on log-log axes.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from models import SplitlabError, load_dataset

from .membership_spec import MembershipAttackSpec, membership_params
from .models_setup import ensure_deployment, ensure_model
from .runner import Steps

# Metrics of membership_metrics summarised over the seeds.
METRICS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "balanced_accuracy", "accuracy", "precision", "recall",
           "f1", "macro_precision", "macro_recall", "macro_f1", "advantage")


def summarise(trials: list[dict], titles: list[str]) -> list[dict]:
    """One row per attack: each metric's mean and sample standard deviation (0 for one seed)."""
    rows = []
    for title in titles:
        runs = [t for t in trials if t["attack"] == title]
        if not runs:
            continue
        row = {"attack": title, "name": runs[0]["name"], "seeds": [t["seed"] for t in runs],
               "threshold_source": runs[0]["threshold_source"]}
        for key in METRICS:
            values = [float(t[key]) for t in runs]
            row[f"{key}_mean"] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


class MembershipRun(Steps):
    def __init__(self, runner, record: dict, ctx):
        self.attacks = [MembershipAttackSpec.model_validate(a) for a in record["spec"]["attacks"]]
        seeds = record["spec"]["seeds"]
        super().__init__(runner, record, ctx, len(seeds) * (1 + len(self.attacks)) + 1,
                         {"kind": "membership", "targets": [], "trials": [], "rows": [], "images": {}})
        self.device = self.cfg.device or "cpu"
        self.curves: dict[str, tuple[list, list]] = {}
        self.datasets: dict = {}

    def run(self) -> dict:
        if self.spec["through_pipeline"] and not self.cfg.edge_url:  # fail before spending time on training
            raise SplitlabError("through_pipeline needs an edge to query: start the service with --edge URL")
        for seed in self.spec["seeds"]:
            target = self._target(seed)
            for attack in self.attacks:
                self._trial(attack, seed, target)
        self.step("ROC plot")
        self._plot()
        self.advance()
        return self.results

    def _dataset(self, name: str):
        if name not in self.datasets:
            self.datasets[name] = load_dataset(name, self.cfg.data_root)
        return self.datasets[name]

    def _target(self, seed: int) -> dict:
        from ..attacks import KnowledgeSource
        from ..attacks.membership.evaluation import evaluation_samples

        spec, cfg = self.spec, self.cfg
        self.step(f"seed {seed}: target (train or reuse)")
        model_id, manifest, reused = ensure_model(self.store, spec, cfg.data_root, seed=seed, device=self.device)
        record, deployment = {"model_id": model_id}, None
        if spec["through_pipeline"]:
            record, _ = ensure_deployment(self.store, model_id, self._split_point(manifest), None, cfg.data_root)
            deployment = record["deployment_id"]
        dataset = self._dataset(manifest["dataset"])
        n = spec["samples"]
        x, y, is_member = evaluation_samples(dataset, manifest, {"members": n, "non_members": n}, seed)
        source = KnowledgeSource(deployment, artifacts=self.store, record=record,
                                 edge_url=cfg.edge_url if deployment else None, query_timeout=60.0)
        self.results["targets"].append({
            "seed": seed, "model_id": model_id, "arch": manifest["arch"], "dataset": manifest["dataset"],
            "reused": reused, "train_accuracy": manifest.get("train_accuracy"),
            "test_accuracy": manifest.get("test_accuracy"), "members": len(manifest["members"]["indices"]),
            "deployment_id": deployment, "queries": "live pipeline" if deployment else "in process"})
        self.advance()
        return {"manifest": manifest, "dataset": dataset, "source": source, "samples": (x, y), "is_member": is_member}

    def _split_point(self, manifest: dict) -> str:
        from models import build_model

        if self.spec.get("split_point"):
            return self.spec["split_point"]
        return build_model(manifest["arch"], manifest.get("num_classes", 10), tuple(manifest["input_shape"])).split_points[0]

    def _trial(self, attack: MembershipAttackSpec, seed: int, target: dict) -> None:
        from ..attacks import create, knowledge_for
        from ..membership_metrics import membership_metrics

        self.step(f"seed {seed}: {attack.title} attack")
        params = membership_params(attack, self.cfg.limits, seed=seed, device=self.cfg.device)
        obj = create(f"membership/{attack.name}", params)
        knowledge = knowledge_for(obj, target["source"], dataset=target["dataset"], aux_limit=attack.aux_limit,
                                  device=self.device, data_root=self.cfg.data_root)
        started = time.perf_counter()
        obj.fit(knowledge)
        fit_seconds = time.perf_counter() - started
        self.ctx.check()
        started = time.perf_counter()
        scores = obj.score(target["samples"])
        score_seconds = time.perf_counter() - started
        metrics = membership_metrics(scores, target["is_member"], obj.threshold)
        self.results["trials"].append({
            "attack": attack.title, "name": attack.name, "seed": seed, **metrics, "knowledge": knowledge.source,
            "target_queries": knowledge.counter["queries"], "aux_samples": len(knowledge.aux_x),
            "fit_seconds": fit_seconds, "score_seconds": score_seconds, "params": params,
            "fit": {k: v for k, v in obj.fit_stats().items() if isinstance(v, (int, float, str, bool))}})
        curve = self.curves.setdefault(attack.title, ([], []))
        curve[0].append(np.asarray(scores, dtype=np.float64))
        curve[1].append(target["is_member"])
        self.results["rows"] = summarise(self.results["trials"], [a.title for a in self.attacks])
        self.advance()

    def _plot(self) -> None:
        from ..membership_metrics import plot_roc

        curves = {title: (np.concatenate(s), np.concatenate(m)) for title, (s, m) in self.curves.items()}
        first = self.results["targets"][0]
        seeds = len(self.spec["seeds"])
        plot_roc(curves, self.ctx.image_dir / "roc.png",
                 title=f"membership: {first['arch']} on {first['dataset']}")
        self.results["images"]["roc"] = {
            "url": f"/v1/experiments/{self.record['id']}/images/roc.png",
            "caption": "ROC per attack, log-log axes" + (f", scores of the {seeds} seeds pooled" if seeds > 1 else "")}
