"""Membership experiments through the lab API: the spec (422s naming the field, the OpenAPI
document's union of kinds), a run on a tiny overfit target in process (real runner and workers:
metrics over two seeds, the ROC PNG, the page), and a run through the live pipeline (edge -> tap
-> cloud, real processes; marked e2e).

The target is lenet5 on 100 digits (40 epochs, batches of 16: train accuracy 1.0, test about 0.83).
With 100 members and 100 non-members a guessing attack's AUC has a standard deviation of about
0.041, so the 0.6 asserted below is well over two of them above chance; measured 0.66-0.71.
"""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from lab_pipeline import wait as _wait
from test_lab_api import AUTH, make_app

from attacker.lab.app import LabConfig, create_app
from attacker.lab.runner import ExperimentRunner, RunnerConfig
from attacker.lab.spec import Limits

TRAIN = {"epochs": 40, "limit": 100, "lr": 0.003, "batch_size": 16}
SPEC = {"kind": "membership", "arch": "lenet5", "dataset": "digits", "train": TRAIN,
        "attacks": ["threshold", {"name": "lira", "label": "lira-offline", "params": {"reference_models": 2}}],
        "seeds": [0, 1], "samples": 100}
LIMITS = Limits(max_epochs=40)
CHANCE_MARGIN = 0.6


@pytest.fixture
def client(tmp_path):
    with TestClient(make_app(tmp_path, limits=LIMITS)) as c:
        yield c


def post(client, spec):
    return client.post("/v1/experiments", json=spec, headers=AUTH)


def test_a_membership_spec_is_accepted_with_its_defaults(client):
    r = post(client, {"kind": "membership", "arch": "lenet5", "dataset": "digits", "attacks": ["shokri"]})
    assert r.status_code == 202, r.json()
    spec = r.json()["spec"]
    assert spec["kind"] == "membership" and spec["seeds"] == [0] and spec["samples"] == 100
    assert spec["through_pipeline"] is False and spec["split_point"] is None
    assert spec["train"] == {"epochs": 2, "limit": None, "dropout": 0.0, "weight_decay": 0.0, "lr": None,
                             "batch_size": None, "weight_decay_scope": "all", "dp_epsilon": None,
                             "dp_delta": 1e-5, "dp_max_grad_norm": 1.0}
    assert spec["attacks"] == [{"name": "shokri", "label": None, "params": {}, "aux_limit": None}]
    # an inversion spec without a kind is what it always was
    inversion = {"arch": "lenet5", "dataset": "digits", "split_points": ["conv1"], "attacks": ["whitebox"]}
    r = post(client, inversion)
    assert r.status_code == 202 and r.json()["spec"]["kind"] == "inversion"


INVALID = [
    ({"kind": "telepathy"}, "kind"),
    ({"kind": None}, "kind"),
    ({"split_points": ["conv1"]}, "split_points"),           # an inversion field: not a membership one
    ({"attacks": ["whitebox"]}, "attacks[0]"),
    ({"attacks": [{"name": "lira", "params": {"reference_models": 64}}]}, "attacks[0].params.reference_models"),
    ({"attacks": [{"name": "shokri", "params": {"shadow_models": 17}}]}, "attacks[0].params.shadow_models"),
    ({"attacks": [{"name": "shokri", "params": {"epochs": 10**6}}]}, "attacks[0].params.epochs"),
    ({"attacks": [{"name": "lira", "params": {"online": "yes"}}]}, "attacks[0].params.online"),
    ({"attacks": [{"name": "threshold", "params": {"metric": "vibes"}}]}, "attacks[0].params.metric"),
    ({"attacks": [{"name": "threshold", "params": {"warp": 1}}]}, "attacks[0].params"),
    ({"attacks": [{"name": "nasr", "params": {"device": "cuda"}}]}, "attacks[0].params.device"),
    ({"attacks": [{"name": "nasr", "params": {"seed": 3}}]}, "attacks[0].params.seed"),
    ({"attacks": ["threshold", "threshold"]}, "attacks"),
    ({"seeds": [0, 1, 2, 3, 4, 5]}, "seeds"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"seeds": []}, "seeds"),
    ({"samples": 5000}, "samples"),
    ({"samples": 101}, "samples"),                           # the target has 100 members (train.limit)
    ({"train": {**TRAIN, "epochs": 41}}, "train.epochs"),
    ({"train": {**TRAIN, "lr": -1}}, "train.lr"),
    ({"through_pipeline": True}, "through_pipeline"),        # this service has no edge
    ({"split_point": "conv1"}, "split_point"),               # only with through_pipeline
    ({"dataset": "mnist", "model_id": "x"}, "model_id"),
]


@pytest.mark.parametrize("change,field", INVALID, ids=[str(c)[:50] for c, _ in INVALID])
def test_invalid_membership_specs_get_422_naming_the_field(client, change, field):
    r = post(client, {**SPEC, **change})
    assert r.status_code == 422, r.json()
    message = r.json()["error"]
    assert message.startswith(field) or f"; {field}" in message, message


def test_a_stored_model_must_be_a_privacy_split_target(tmp_path, lenet_digits):
    """``lenet_digits`` (conftest) is trained on the full scheme: no held-out non-members in its train split."""
    with TestClient(make_app(tmp_path, artifacts=lenet_digits.root)) as c:
        r = post(c, {"kind": "membership", "model_id": "lenet5-digits", "attacks": ["threshold"], "samples": 10})
        assert r.status_code == 422 and r.json()["error"].startswith("model_id"), r.json()
        assert "privacy split" in r.json()["error"]


def test_the_openapi_document_states_each_kind(client):
    doc = client.get("/v1/openapi.json").json()
    body = doc["paths"]["/v1/experiments"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    refs = {item["$ref"].rsplit("/", 1)[1] for item in body["oneOf"]}
    assert refs == {"ExperimentSpec", "MembershipExperimentSpec", "AttributeExperimentSpec", "ClassifierInversionSpec"}
    schemas = doc["components"]["schemas"]
    membership = schemas["MembershipExperimentSpec"]
    assert "kind" in membership["required"] and membership["properties"]["kind"]["const"] == "membership"
    assert {"seeds", "samples", "through_pipeline", "split_point", "attacks", "train"} <= set(membership["properties"])
    assert "kind" not in schemas["ExperimentSpec"].get("required", [])
    attack = schemas["MembershipAttackSpec"]["properties"]["name"]
    assert set(attack["enum"]) == {"threshold", "shokri", "lira", "nasr"}


def test_membership_experiment_on_an_overfit_target(tmp_path):
    from PIL import Image

    runner = ExperimentRunner(RunnerConfig(artifacts=tmp_path / "artifacts", captures=tmp_path / "captures",
                                           edge_url=None, limits=LIMITS))
    config = LabConfig(lab_dir=tmp_path / "lab", artifacts=tmp_path / "artifacts", limits=LIMITS, workers=1)
    with TestClient(create_app(config, runner)) as client:
        exp = post(client, SPEC).json()
        rec = _wait(client, exp["id"])
        assert rec["status"] == "done", rec["error"]
        res = rec["results"]
        assert [t["seed"] for t in res["targets"]] == [0, 1]
        assert all(t["train_accuracy"] > t["test_accuracy"] + 0.1 for t in res["targets"])  # overfit
        assert len({t["model_id"] for t in res["targets"]}) == 2  # one target per seed
        assert [(t["attack"], t["seed"]) for t in res["trials"]] == [
            ("threshold", 0), ("lira-offline", 0), ("threshold", 1), ("lira-offline", 1)]
        for trial in res["trials"]:
            assert trial["members"] == trial["non_members"] == 100 and trial["knowledge"] == "in-process"
            assert trial["target_queries"] >= 200 and trial["params"]["seed"] == trial["seed"]
        threshold, lira = res["rows"]
        for row in (threshold, lira):
            assert row["seeds"] == [0, 1]
            assert row["auc_mean"] > CHANCE_MARGIN, row
            runs = [t["auc"] for t in res["trials"] if t["attack"] == row["attack"]]
            assert row["auc_mean"] == pytest.approx(sum(runs) / 2) and row["auc_std"] > 0
            for key in ("tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "balanced_accuracy", "precision", "recall", "f1",
                        "advantage"):
                assert 0 <= row[f"{key}_mean"] <= 1 and row[f"{key}_std"] >= 0, key
        assert threshold["threshold_source"] == "given" and lira["threshold_source"] == "max-advantage"

        url = res["images"]["roc"]["url"]
        assert url == f"/v1/experiments/{exp['id']}/images/roc.png"
        png = client.get(url)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size[0] > 300

        page = client.get(f"/experiments/{exp['id']}").text
        assert 'id=results' in page and "lira-offline" in page and url in page and "TPR @ 1% FPR" in page
        assert f"{threshold['auc_mean']:.3f} ± {threshold['auc_std']:.3f}" in page

        # the same experiment again reuses the targets (checked against their spec)
        again = _wait(client, post(client, {**SPEC, "attacks": ["threshold"], "seeds": [1]}).json()["id"])
        assert again["status"] == "done", again["error"]
        assert again["results"]["targets"][0]["reused"] is True
        assert again["results"]["trials"][0]["auc"] == pytest.approx(res["trials"][2]["auc"])


@pytest.mark.e2e
def test_membership_experiment_through_the_live_pipeline(tmp_path):
    from test_lab_e2e import Services

    from attacker.captures.store import CaptureStore

    lab = Services(tmp_path)
    try:
        lab.start()
        spec = {**SPEC, "train": {**TRAIN, "epochs": 20}, "attacks": ["threshold"], "seeds": [0],
                "through_pipeline": True, "split_point": "relu2"}
        rec = lab.wait_final(lab.submit(spec)["id"], timeout=900)
        assert rec["status"] == "done", rec["error"]
        (target,) = rec["results"]["targets"]
        (trial,) = rec["results"]["trials"]
        assert target["deployment_id"].endswith("--relu2") and target["queries"] == "live pipeline"
        assert trial["knowledge"] == f"live:{target['deployment_id']}" and trial["auc"] > CHANCE_MARGIN - 0.05
        # every query went edge -> tap -> cloud: the tap recorded them
        captures = CaptureStore(lab.captures)
        assert captures.count(target["deployment_id"]) >= trial["target_queries"] >= 200
        png = lab.http.get(rec["results"]["images"]["roc"]["url"])
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        lab.stop()
