"""Run one classifier-inversion experiment (MI-FACE) against a deployed face recogniser.

1. the target: the stored deployment, or the model trained (every training image, by default) or
   reused and deployed at the split point (:func:`.deployed_target.resolve_target`);
2. the attacker's knowledge, as the live pipeline gives it:

   * ``white-box``: one request goes through the edge (edge -> tap -> cloud), so that the edge
     downloads the head through the tap; the white-box knowledge takes the ``GetHead`` payload the
     tap captured (the artifact store's head only if the tap never saw one) joined to the tail;
   * ``api``: every query is a ``POST /v1/infer`` to the edge, its ``scores`` read back; the number
     of queries is counted and reported;

3. the attack (registry ``classifier-inversion/mi-face``, the spec's parameters with the run's seed
   and the service's device) reconstructs one face per person;
4. the scores (:mod:`attacker.attacks.inversion.face_metrics`): per person SSIM / PSNR to the
   person's mean training face and, on average, to the other people's, identification by SSIM, the
   evaluator's top-1 / top-5 when the spec names one, the target's own top-1; the same for the
   baseline (the mean face of everyone); and a grid of each person's first training image above
   the reconstruction.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from models import SplitlabError, load_dataset, to_tensor

from ..captures.store import CaptureStore
from .channel import EdgeChannel
from .classifier_inversion_spec import ATTACK_KEY, people_of
from .deployed_target import start
from .images import save_grid
from .params_check import run_params
from .runner import Steps


class ClassifierInversionRun(Steps):
    def __init__(self, runner, record: dict, ctx):
        super().__init__(runner, record, ctx, 4, {"kind": "classifier-inversion", "model": None, "attack": None,
                                                  "summary": None, "baseline": None, "people": [], "images": {}})
        self.prefix = f"lab-{record['id']}-r{record['restarts']}"

    def run(self) -> dict:
        spec, cfg = self.spec, self.cfg
        target = start(self, "attack")
        ds = load_dataset(target["manifest"]["dataset"], cfg.data_root)
        people = np.asarray(people_of(spec))
        captures = CaptureStore(cfg.captures)
        channel = EdgeChannel(cfg.edge_url, captures, cfg.flush, capture_timeout=cfg.capture_timeout)
        try:
            self.step(f"{spec['knowledge']} knowledge")
            knowledge, attack, counter = self._knowledge(target, ds, channel, captures)
            self.advance()
            self.step(f"reconstruct {len(people)} people")
            started = time.perf_counter()
            images = attack.fit(knowledge).reconstruct(people).numpy()
            seconds = time.perf_counter() - started
        finally:
            channel.close()
            captures.close()
        stats = attack.fit_stats()
        self.results["attack"] = {
            "knowledge": spec["knowledge"], "origin": knowledge.origin, "attack_seconds": seconds,
            "edge_queries": counter["n"] if counter is not None else None,
            "queries_per_person": stats.get("queries_per_class"), "final_cost_mean": stats.get("final_cost_mean"),
            "params": {k: v for k, v in attack.params.as_dict().items() if k != "progress"}}
        self.advance()
        self.step("score the reconstructions")
        self._score(images, people, ds, target)
        self.advance()
        return self.results

    def _knowledge(self, target: dict, ds, channel: EdgeChannel, captures):
        from ..attacks import KnowledgeSource, create, knowledge_for
        from ..attacks.membership.knowledge import edge_scores_query

        spec, dep = self.spec, target["deployment"]
        attack = create(ATTACK_KEY, run_params(ATTACK_KEY, spec["params"], spec["seed"], self.cfg.device))
        counter = None
        if spec["knowledge"] == "white-box":
            # the edge downloads the head (GetHead) through the tap the first time it serves the deployment
            try:
                channel.send(dep["deployment_id"], ds.x_test[:1], [f"{self.prefix}-probe"], self.ctx.check)
            except SplitlabError as exc:
                if "larger than max" in str(exc):  # face-mlp's head (124 MB) is over gRPC's default 64 MB
                    raise SplitlabError(f"{exc} (the head is larger than a gRPC message may be: start cloud-server, "
                                        "attacker serve and edge-client serve with --max-message-mb 256)") from None
                raise
            source = KnowledgeSource(dep["deployment_id"], artifacts=self.store, captures=captures, record=dep)
        else:
            counter = {"n": 0}
            scores = edge_scores_query(self.cfg.edge_url, dep["deployment_id"], 60.0)

            def query(images):
                counter["n"] += len(images)
                self.ctx.check()
                return scores(images)

            source = KnowledgeSource(dep["deployment_id"], record=dep, query=query,
                                     query_label="the edge's /v1/infer (its released scores)")
        return knowledge_for(attack, source), attack, counter

    def _score(self, images: np.ndarray, people: np.ndarray, ds, target: dict) -> None:
        from models.loading import load_model

        from ..attacks.inversion.face_metrics import everyone_face, face_metrics, mean_faces, similarity

        means = mean_faces(ds)
        evaluator = None
        if self.spec.get("evaluator_id"):
            evaluator, manifest = load_model(self.store, self.spec["evaluator_id"])
            self.results["evaluator"] = {"model_id": self.spec["evaluator_id"], "arch": manifest["arch"],
                                         "test_accuracy": manifest.get("test_accuracy")}
        model = load_model(self.store, target["model_id"])[0]
        ssim, psnr = similarity(images, means)
        self.results["summary"] = face_metrics(images, people, means, evaluator, model, scores=(ssim, psnr))
        blank = np.repeat(everyone_face(ds), len(people), 0)
        self.results["baseline"] = {"kind": "the mean face of everyone"} | face_metrics(blank, people, means, evaluator)
        others = np.ones_like(ssim, dtype=bool)
        others[np.arange(len(people)), people] = False
        self.results["people"] = [
            {"person": int(p), "ssim_own": float(ssim[i, p]), "psnr_own": float(psnr[i, p]),
             "ssim_others": float(ssim[i][others[i]].mean()), "best_match": int(ssim[i].argmax())}
            for i, p in enumerate(people)]
        first = np.stack([np.flatnonzero(ds.y_train == p)[0] for p in people])
        name = "faces"
        save_grid(self.ctx.image_dir / f"{name}.png", [to_tensor(ds.x_train[first]), torch.from_numpy(images)])
        self.results["images"][name] = {
            "url": f"/v1/experiments/{self.record['id']}/images/{name}.png",
            "caption": "each person: a training image (top) and the reconstruction (below), in the order of people"}
