"""Run one attribute experiment through the live pipeline: the attacker sees only what the tap
recorded and what the edge answers.

1. the target: the stored deployment, or the model trained (privacy split scheme) or reused and
   deployed at the split point (:func:`.deployed_target.resolve_target`);
2. the victims: ``victims`` test images (for each attribute, those that have it; drawn with the
   seed by :func:`attacker.attacks.attribute.attacker_and_victims`), each sent through the edge's
   ``/v1/infer`` (edge -> tap -> cloud) once; the tap's capture of each request, read back by
   request id, holds its split features and the logits the cloud answered (a float64 softmax of
   them is what the edge releases as ``scores``);
3. for each attribute and observation: the attacker's own ``aux_images`` labelled images (the
   target's recorded shadow and aux parts of the train split) observed the same way, through the
   edge: features read back at the tap (``attribute/features``), or the edge's ``scores``
   (``attribute/outputs``); the attack (registry, ``knowledge_for``) learns observation ->
   attribute on them and infers the victims' attribute from theirs; scored with
   :func:`attacker.attacks.attribute.attribute_metrics` (accuracy, macro-F1, per-class F1, and the
   attacker's majority class as the baseline).

An image the attacker already observed (the same image for a second attribute) is not sent again:
its observation is remembered, so each of the attacker's images costs one query per observation.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from models import SplitlabError, load_dataset, to_tensor

from ..captures.store import CaptureStore
from .attribute_spec import ATTACK_KEYS, aux_count
from .channel import EdgeChannel
from .deployed_target import start
from .params_check import run_params
from .runner import Steps


def remembered(query, counter: dict):
    """``query`` (images -> observations) asked only about images it has not seen; ``counter["sent"]``
    counts the images actually sent."""
    seen: dict[str, np.ndarray] = {}

    def ask(images) -> np.ndarray:
        x = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
        keys = [hashlib.sha1(img.tobytes()).hexdigest() for img in x]
        new = [i for i, k in enumerate(keys) if k not in seen]
        if new:
            counter["sent"] += len(new)
            for i, obs in zip(new, np.asarray(query(x[new]))):
                seen[keys[i]] = obs
        return np.stack([seen[k] for k in keys])

    return ask


def released(logits: np.ndarray) -> np.ndarray:
    """What the edge releases for the cloud's logits: their float64 softmax (``scores``)."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float64)), dim=1).numpy()


class AttributeRun(Steps):
    def __init__(self, runner, record: dict, ctx):
        spec = record["spec"]
        super().__init__(runner, record, ctx, 2 + len(spec["observations"]) * len(spec["attributes"]),
                         {"kind": "attribute", "model": None, "victims": None, "rows": [], "images": {}})
        self.prefix = f"lab-{record['id']}-r{record['restarts']}"
        self.queries: dict = {}  # per observation: the attacker's (remembering) query function
        self.sent = {o: {"sent": 0} for o in ("features", "outputs")}  # images sent through the edge

    def run(self) -> dict:
        from ..attacks.attribute import attacker_and_victims, attacker_indices

        spec, cfg = self.spec, self.cfg
        target = start(self, "send the victims' images")
        ds = load_dataset(target["manifest"]["dataset"], cfg.data_root)
        owned = attacker_indices(target["manifest"].get("splits") or {})
        draws = {a: attacker_and_victims(ds, spec["seed"], a, aux_count(spec, cfg.limits), spec["victims"], owned)
                 for a in spec["attributes"]}
        captures = CaptureStore(cfg.captures)
        channel = EdgeChannel(cfg.edge_url, captures, cfg.flush, capture_timeout=cfg.capture_timeout)
        try:
            victims = self._send_victims(target, ds, draws, channel)
            for attribute in spec["attributes"]:
                for observation in spec["observations"]:
                    self._attack(attribute, observation, target, ds, draws[attribute], victims, channel, captures)
        finally:
            channel.close()
            captures.close()
        return self.results

    def _send_victims(self, target: dict, ds, draws: dict, channel: EdgeChannel) -> dict:
        dep = target["deployment"]["deployment_id"]
        indices = np.unique(np.concatenate([d[2] for d in draws.values()]))
        self.step(f"send {len(indices)} victims' images through the edge")
        rids = [f"{self.prefix}-victim-{i}" for i in indices]
        sent = channel.send(dep, ds.x_test[indices], rids, self.ctx.check)
        if sent.logits is None:
            raise SplitlabError("the tap recorded no logits for the victims' requests: the outputs are not observable")
        self.results["victims"] = {
            "images": len(indices), "split": "test",
            "task_accuracy": float((sent.classes == ds.y_test[indices]).mean()),
            "feature_shape": list(sent.features.shape[1:]), "bytes_per_image": float(sent.wire_bytes.mean()),
            "send_seconds": sent.seconds, "request_ids": [rids[0], rids[-1]]}
        self.advance()
        position = {int(i): n for n, i in enumerate(indices)}
        return {"position": position, "features": sent.features, "outputs": released(sent.logits)}

    def _query(self, observation: str, dep: dict, channel: EdgeChannel) -> tuple:
        """The attacker's query function for ``observation`` (made once; it remembers what it saw) and its words."""
        from ..attacks.membership.knowledge import edge_scores_query

        if observation not in self.queries:
            if observation == "features":
                query = channel.query_function(dep["deployment_id"], f"{self.prefix}-aux", self.ctx.check)
                label = "the edge's /v1/infer, features read at the tap"
            else:
                query = edge_scores_query(self.cfg.edge_url, dep["deployment_id"], 60.0)
                label = "the edge's /v1/infer, its released scores"
            self.queries[observation] = (remembered(query, self.sent[observation]), label)
        return self.queries[observation]

    def _attack(self, attribute: str, observation: str, target: dict, ds, draw, victims: dict, channel, captures):
        from ..attacks import KnowledgeSource, create, knowledge_for
        from ..attacks.attribute import attribute_classes, attribute_metrics

        self.step(f"{observation} -> {attribute}")
        aux_idx, aux_y, vic_idx, vic_y = draw
        classes = attribute_classes(attribute)
        dep = target["deployment"]
        query, label = self._query(observation, dep, channel)
        before = self.sent[observation]["sent"]
        source = KnowledgeSource(dep["deployment_id"], captures=captures, record=dep, query=query, query_label=label,
                                 aux_images=to_tensor(ds.x_train[aux_idx]), aux_labels=aux_y)
        key = ATTACK_KEYS[observation]
        params = run_params(key, self.spec["params"], self.spec["seed"], self.cfg.device)
        attack = create(key, params)
        knowledge = knowledge_for(attack, source, num_classes=len(classes))
        started = time.perf_counter()
        attack.fit(knowledge)
        fit_seconds = time.perf_counter() - started
        self.ctx.check()
        observed = victims[observation][[victims["position"][int(i)] for i in vic_idx]]
        metrics = attribute_metrics(attack.infer(observed), vic_y, aux_y, classes)
        stats = attack.fit_stats()
        self.results["rows"].append({
            "observation": observation, "attribute": attribute, "classes": classes, **metrics,
            "f1": {c: metrics[f"f1_{i}"] for i, c in enumerate(classes)}, "aux_images": int(len(aux_idx)),
            "edge_queries": self.sent[observation]["sent"] - before, "knowledge": knowledge.origin,
            "fit_seconds": fit_seconds,
            "attack_train_accuracy": stats.get("attack_train_accuracy"), "inputs": stats.get("inputs"),
            "params": {k: v for k, v in params.items() if k != "progress"}})
        self.advance()
