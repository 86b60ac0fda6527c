"""Attribute inference through the live pipeline: the attacker sees only what the tap recorded.

The gender target is deployed at pool1 and served by a real cloud server; the edge (ONNX Runtime
head) sends its features through a recording tap. The attacker learns race from its own images,
queried through the edge's public ``/v1/infer`` with their features read back at the tap
(``knowledge_for`` with the edge and the capture store), then reads the victims' features from the
tap's captures by request id and infers their race. The tap's features equal the in-process head's
(ONNX Runtime vs torch, float rounding), so the live attack infers what the in-process attack does.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from attacker.attacks.knowledge import KnowledgeSource, knowledge_for
from attacker.attacks.registry import create
from attacker.captures.store import CaptureStore
from attacker.tap import TapConfig, TapThread
from benchmarks.suites.attribute import attacker_and_victims
from conftest import private_copy, quick_model_id
from fixtures_grpc import running_server
from models import load_dataset, to_tensor
from models.deploy import deploy
from models.loading import load_model
from models.split import split_model

pytestmark = pytest.mark.e2e


def test_live_attack_reads_the_tap(tmp_path, utkface_models, tmp_path_factory):
    """On a private copy of the session's aia-lenet (conftest ``utkface_models``): it deploys."""
    from edge_client.client import CloudClient
    from edge_client.edge import Edge
    from edge_client.heads import HeadCache
    from edge_client.rest import create_app

    ds = load_dataset("utkface")
    store = private_copy(utkface_models, tmp_path_factory)
    model, manifest = load_model(store, quick_model_id("attribute"))
    dep = deploy(store, manifest["model_id"], "pool1")["deployment_id"]
    aux_idx, aux_y, vic_idx, vic_y = attacker_and_victims(ds, 0, "race", aux_limit=300, victims=40)
    aux_x, vic_x = to_tensor(ds.x_train[aux_idx]), to_tensor(ds.x_test[vic_idx])
    with running_server(store.root) as cloud:
        tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream=cloud.address, store=str(tmp_path / "captures")))
        port = tap.start()
        client = CloudClient(f"127.0.0.1:{port}")
        try:
            with TestClient(create_app(Edge(client, HeadCache(tmp_path / "heads")))) as http:
                captures = CaptureStore(tmp_path / "captures")
                # the victims' requests go through the edge; the attacker reads their features at the tap
                rids = [f"victim-{i}" for i in range(len(vic_x))]
                for rid, img in zip(rids, vic_x.numpy()):
                    r = http.post("/v1/infer", json={"deployment_id": dep, "array": img.tolist()},
                                  headers={"X-Request-ID": rid})
                    assert r.status_code == 200
                source = KnowledgeSource(dep, captures=captures, edge_url=http, aux_images=aux_x, aux_labels=aux_y)
                attack = create("attribute/features", epochs=15)
                attack.fit(knowledge_for(attack, source, num_classes=5))
                # no artifact store: the input shape comes from the GetHead the tap saw
                assert attack.fit_stats()["queries"] == 300 and captures.count(dep) >= 340
                seen = []
                for rid in rids:
                    for _ in range(200):
                        caps = captures.captures(request_id=rid, ok_only=True)
                        if caps:
                            break
                        time.sleep(0.02)
                    seen.append(captures.features(caps[-1]))
        finally:
            client.close()
            tap.stop()
    live = np.concatenate(seen)
    head, _ = split_model(model, "pool1")
    with torch.no_grad():
        local = head.eval()(vic_x).numpy()
    assert live.shape == local.shape and np.abs(live - local).max() < 1e-4
    pred = attack.infer(live)
    assert (pred == attack.infer(local)).mean() >= 0.95
    assert pred.shape == (40,) and set(pred) <= set(range(5))
