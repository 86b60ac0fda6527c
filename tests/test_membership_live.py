"""Membership queries through the live pipeline give the scores the in-process target gives.

The target is deployed at ``relu2`` and served by a real cloud server; the edge (ONNX Runtime head)
sends its features through a recording tap, and the attacker asks the edge's public ``/v1/infer``.
The answer's probabilities differ from the torch model's only by float rounding (ONNX Runtime vs
torch; both softmaxes are float64 of float32 logits): about 1e-8 measured, 1e-6 allowed. With
float16 on the wire the features keep about three significant digits; the probabilities moved by
about 3e-6 here, 1e-4 is allowed (and a gap of exactly zero would mean float16 never travelled).
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from attacker.attacks.knowledge import KnowledgeError, KnowledgeSource, knowledge_for
from attacker.attacks.membership import MembershipKnowledge, ShokriAttack, ThresholdAttack, edge_scores_query
from attacker.attacks.registry import create
from attacker.captures.store import CaptureStore
from attacker.tap import TapConfig, TapThread
from fixtures_grpc import running_server
from models import ArtifactStore, load_dataset, to_tensor
from models.deploy import deploy
from models.reference import obtain_model
from models.training import TrainOptions

pytestmark = pytest.mark.e2e
TARGET = TrainOptions(arch="lenet5", dataset="mnist", epochs=5, batch_size=20, lr=3e-3, limit=60, seed=0)
TOLERANCE = {"float32": 1e-6, "float16": 1e-4}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("membership-live")
    ds = load_dataset("mnist")
    store = ArtifactStore(tmp / "artifacts")
    model, manifest = obtain_model(store, TARGET, progress=False, dataset=ds)
    dep = deploy(store, manifest["model_id"], "relu2")["deployment_id"]
    idx = np.r_[manifest["members"]["indices"][:12], manifest["non_members"]["indices"][:12]]
    samples = (to_tensor(ds.x_train[idx]).numpy(), ds.y_train[idx])
    with running_server(store.root) as cloud:
        tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream=cloud.address, store=str(tmp / "captures")))
        port = tap.start()
        try:
            yield {"ds": ds, "store": store, "model": model, "dep": dep, "samples": samples, "tap": tap,
                   "tap_address": f"127.0.0.1:{port}", "captures": tmp / "captures", "tmp": tmp}
        finally:
            tap.stop()


@pytest.fixture(scope="module", params=["float32", "float16"])
def edge(pipeline, request):
    from edge_client.client import CloudClient
    from edge_client.edge import Edge
    from edge_client.heads import HeadCache
    from edge_client.rest import create_app

    client = CloudClient(pipeline["tap_address"])
    app = create_app(Edge(client, HeadCache(pipeline["tmp"] / f"heads-{request.param}"), wire=request.param))
    with TestClient(app) as http:
        yield request.param, http
    client.close()


def test_live_and_in_process_give_the_same_scores(pipeline, edge):
    wire, http = edge
    ds, store = pipeline["ds"], pipeline["store"]
    live = MembershipKnowledge.live(http, pipeline["dep"], ds, TARGET, store, aux_limit=120)
    local = MembershipKnowledge.in_process(pipeline["model"], ds, TARGET, store, aux_limit=120)
    assert live.source == f"live:{pipeline['dep']}" and local.source == "in-process"
    x, y = pipeline["samples"]
    captured = CaptureStore(pipeline["captures"])
    before = captured.count(pipeline["dep"])

    probs_live, probs_local = live.query(x), local.query(x)
    assert probs_live.shape == (len(x), 10) and np.allclose(probs_live.sum(1), 1)
    gap = np.abs(probs_live - probs_local).max()
    assert gap < TOLERANCE[wire], gap
    assert wire == "float32" or gap > 1e-6  # float16 really travelled: the features were rounded
    pipeline["tap"].flush()
    assert captured.count(pipeline["dep"]) - before == len(x)  # every query crossed the tap

    for attack in (ThresholdAttack(metric="confidence", shadow_size=40), ShokriAttack(shadow_models=1, shadow_size=40)):
        on_live, on_local = type(attack)(attack.params).fit(live), attack.fit(local)
        assert on_live.threshold == on_local.threshold  # fitted on the attacker's own shadow data
        assert np.abs(on_live.score((x, y)) - on_local.score((x, y))).max() < 10 * TOLERANCE[wire]
    assert live.counter["queries"] == 3 * len(x)  # one query and two attacks' scores


def test_knowledge_from_a_deployment_source(pipeline, edge):
    """``knowledge_for`` builds the same attacker from the deployment: recipe from the manifest."""
    _, http = edge
    dep, store = pipeline["dep"], pipeline["store"]
    attack = create("membership/threshold", metric="loss", shadow_size=40)
    local = knowledge_for(attack, KnowledgeSource(dep, artifacts=store), dataset=pipeline["ds"], aux_limit=120)
    live = knowledge_for(attack, KnowledgeSource(dep, artifacts=store, query=edge_scores_query(http, dep),
                                                 query_label="the edge"), dataset=pipeline["ds"], aux_limit=120)
    assert (local.source, live.source) == ("in-process", "the edge")
    reference = MembershipKnowledge.in_process(pipeline["model"], pipeline["ds"], TARGET, store, aux_limit=120)
    assert np.array_equal(local.aux_x, reference.aux_x) and local.trainer.options == TARGET
    x, y = pipeline["samples"]
    assert np.abs(live.query(x) - local.query(x)).max() < TOLERANCE[edge[0]]
    assert attack.fit(local).threshold == type(attack)(attack.params).fit(reference).threshold
    with pytest.raises(KnowledgeError, match="artifact store"):
        knowledge_for(attack, KnowledgeSource(dep))
    with pytest.raises(KnowledgeError, match="deployment id"):
        knowledge_for("membership/lira", KnowledgeSource(artifacts=store))
