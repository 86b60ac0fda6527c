"""The lab REST API in process (no live services): submission, auth, validation errors naming the
field, budget limits, 404s, paging, cancellation of queued experiments, the OpenAPI document, the
loopback-only rule without a token. (schemathesis over the OpenAPI document: test_api_schemas.py.)

Workers are off here (experiments stay queued); running them is tested in ``test_lab_store.py``
(pool) and ``test_lab_e2e.py`` (live services).
"""

from __future__ import annotations

import copy

import pytest
from fastapi.testclient import TestClient

from attacker.lab.app import LabConfig, create_app
from attacker.lab.serve import bind_host
from attacker.lab.spec import Limits

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC = {"arch": "lenet5", "dataset": "digits", "train": {"epochs": 2}, "split_points": ["conv1"],
        "attacks": [{"name": "whitebox", "params": {"iterations": 50}}], "samples": 10, "seed": 0}


def make_app(tmp_path, token=TOKEN, limits=None, artifacts=None):
    config = LabConfig(lab_dir=tmp_path / "lab", artifacts=artifacts or tmp_path / "artifacts", token=token,
                       limits=limits or Limits(), workers=0)
    return create_app(config, run_experiment=lambda record, ctx: {}, start_workers=False)


@pytest.fixture
def client(tmp_path):
    with TestClient(make_app(tmp_path)) as c:
        yield c


def submit(client, spec=None, headers=AUTH):
    return client.post("/v1/experiments", json=SPEC if spec is None else spec, headers=headers)


def test_submit_is_accepted_with_location_and_defaults(client):
    r = submit(client)
    assert r.status_code == 202
    body = r.json()
    assert r.headers["location"] == f"/v1/experiments/{body['id']}"
    assert body["status"] == "queued" and body["queue_position"] == 1
    assert body["spec"]["train"] == {"epochs": 2, "limit": None, "dropout": 0.0, "weight_decay": 0.0,
                                     "weight_decay_scope": "all", "dp_epsilon": None, "dp_delta": 1e-5,
                                     "dp_max_grad_norm": 1.0}
    assert body["spec"]["attacks"][0]["name"] == "whitebox"
    got = client.get(r.headers["location"])
    assert got.status_code == 200 and got.json()["id"] == body["id"]
    # plain attack names and settings are normalised into objects with defaults
    r = submit(client, dict(SPEC, attacks=["blackbox", {"name": "queryfree", "shadow": "different"}]))
    assert r.status_code == 202, r.json()
    attacks = r.json()["spec"]["attacks"]
    assert (attacks[0]["name"], attacks[0]["aux"]) == ("blackbox", "same-distribution")
    assert (attacks[1]["aux"], attacks[1]["shadow"]) == ("same-distribution", "different")
    assert client.get(f"/v1/experiments/{r.json()['id']}").json()["queue_position"] == 2


def test_mutating_endpoints_need_the_bearer_token(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = submit(client, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert "token" in r.json()["error"]
    exp = submit(client).json()["id"]
    assert client.delete(f"/v1/experiments/{exp}").status_code == 401
    assert client.get(f"/v1/experiments/{exp}").status_code == 200  # reading is open
    assert client.get("/v1/experiments").status_code == 200
    assert client.get("/healthz").json()["auth"] is True


def test_without_a_token_the_api_is_open_but_loopback_only(tmp_path):
    with TestClient(make_app(tmp_path, token=None)) as c:
        assert submit(c, headers={}).status_code == 202
        assert c.get("/healthz").json()["auth"] is False
    host, warning = bind_host("0.0.0.0", None)
    assert host == "127.0.0.1" and "SPLITLAB_API_TOKEN" in warning and "loopback" in warning
    assert bind_host("::1", None)[0] == "::1"
    assert bind_host("0.0.0.0", "secret") == ("0.0.0.0", None)


def _mutate(path, value):
    spec = copy.deepcopy(SPEC)
    target = spec
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return spec


INVALID = [
    (("arch",), "no-such-net", "arch"),
    (("dataset",), "imagenet", "dataset"),
    (("split_points",), ["conv11"], "split_points[0]"),          # a split point lenet5 does not have
    (("split_points",), ["conv1", "warp9"], "split_points[1]"),
    (("split_points",), [], "split_points"),
    (("split_points",), ["conv1", "conv1"], "split_points"),
    (("attacks",), ["telepathy"], "attacks[0].name"),
    (("attacks",), [{"name": "blackbox", "aux": "crystal-ball"}], "attacks[0].aux"),
    (("attacks",), [{"name": "whitebox", "aux": "same-set"}], "attacks[0].aux"),
    (("attacks",), [{"name": "queryfree", "shadow": "different"}], None),  # valid for conv1: control
    (("attacks",), [{"name": "whitebox", "params": {"iterations": 10**6}}], "attacks[0].params.iterations"),
    (("attacks",), [{"name": "whitebox", "params": {"lr": -1}}], "attacks[0].params.lr"),
    (("attacks",), [{"name": "whitebox", "params": {"warp": 1}}], "attacks[0].params.warp"),
    (("attacks",), [{"name": "blackbox", "params": {"epochs": 500}}], "attacks[0].params.epochs"),
    (("attacks",), [{"name": "blackbox", "params": {"device": "cuda"}}], "attacks[0].params.device"),  # the service's
    (("attacks",), [{"name": "blackbox", "aux_images": 10**6}], "attacks[0].aux_images"),
    (("attacks",), [{"name": "queryfree", "params": {"whitebox": {"iterations": 10**6}}}],
     "attacks[0].params.whitebox.iterations"),
    (("samples",), 10**5, "samples"),
    (("samples",), 0, "samples"),
    (("train", "epochs"), 10**4, "train.epochs"),
    (("train", "limit"), 10**9, "train.limit"),
    (("train", "dropout"), 1.5, "train.dropout"),
    (("feature_defense",), {"type": "noise", "sigma": -1}, "feature_defense.sigma"),
    (("feature_defense",), {"type": "blur"}, "feature_defense.type"),
    (("dataset",), KeyError, "dataset"),
    (("arch",), KeyError, "arch"),
    (("seed",), "zero", "seed"),
    (("colour",), "blue", "colour"),                               # unknown top-level field
]


@pytest.mark.parametrize("path,value,field", INVALID, ids=[".".join(map(str, p)) + f"={v!r}"[:40] for p, v, _ in INVALID])
def test_invalid_specs_get_422_naming_the_field(client, path, value, field):
    r = submit(client, _mutate(path, value))
    if field is None:
        assert r.status_code == 202, r.json()
        return
    assert r.status_code == 422, r.json()
    body = r.json()
    assert body["error"].startswith(field) or f"; {field}" in body["error"], body["error"]
    assert any(field.split("[")[0].split(".")[0] in map(str, d["loc"]) for d in body["detail"])


def test_split_point_of_another_architecture_and_stored_models(tmp_path, lenet_digits):
    with TestClient(make_app(tmp_path, artifacts=lenet_digits.root)) as c:
        r = submit(c, dict(SPEC, arch="he-cifar-cnn", dataset="cifar10", split_points=["relu2"]))
        assert r.status_code == 422 and "split_points[0]" in r.json()["error"]
        reuse = {k: v for k, v in SPEC.items() if k not in ("arch", "train")} | {"model_id": "lenet5-digits"}
        assert submit(c, reuse).status_code == 202
        r = submit(c, reuse | {"model_id": "not-trained"})
        assert r.status_code == 422 and r.json()["error"].startswith("model_id")
        r = submit(c, reuse | {"dataset": "mnist"})
        assert r.status_code == 422 and r.json()["error"].startswith("dataset")
        r = submit(c, reuse | {"train": {"epochs": 1}})
        assert r.status_code == 422 and r.json()["error"].startswith("train")
        r = submit(c, reuse | {"arch": "lenet5"})
        assert r.status_code == 422 and r.json()["error"].startswith("model_id")


def test_limits_are_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITLAB_LAB_MAX_SAMPLES", "5")
    monkeypatch.setenv("SPLITLAB_LAB_MAX_ITERATIONS", "40")
    limits = Limits.from_env()
    assert (limits.max_samples, limits.max_iterations) == (5, 40)
    with TestClient(make_app(tmp_path, limits=limits)) as c:
        r = submit(c, dict(SPEC, samples=6))
        assert r.status_code == 422 and "over the limit of 5" in r.json()["error"]
        assert r.json()["error"].startswith("samples")
        r = submit(c, dict(SPEC, samples=5))
        assert r.status_code == 422 and r.json()["error"].startswith("attacks[0].params.iterations")
        assert submit(c, dict(SPEC, samples=5, attacks=[{"name": "whitebox", "params": {"iterations": 40}}])
                      ).status_code == 202
    monkeypatch.setenv("SPLITLAB_LAB_MAX_EPOCHS", "many")
    with pytest.raises(ValueError, match="SPLITLAB_LAB_MAX_EPOCHS"):
        Limits.from_env()


def test_unknown_ids_are_404_with_json_bodies(client):
    for method, url in (("get", "/v1/experiments/nope"), ("delete", "/v1/experiments/nope"),
                        ("get", "/v1/experiments/nope/images/originals.png")):
        r = client.request(method.upper(), url, headers=AUTH)
        assert r.status_code == 404, url
        assert "nope" in r.json()["error"]
    page = client.get("/experiments/nope")  # people get a page, not JSON
    assert page.status_code == 404 and "text/html" in page.headers["content-type"] and "nope" in page.text
    exp = submit(client).json()["id"]
    for name in ("originals", "..", ".hidden", "a%2F..%2Fb"):
        r = client.get(f"/v1/experiments/{exp}/images/{name}.png")
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"


def test_list_pages_and_filters_by_status(client):
    ids = [submit(client).json()["id"] for _ in range(3)]
    assert client.delete(f"/v1/experiments/{ids[0]}", headers=AUTH).json()["status"] == "cancelled"
    page = client.get("/v1/experiments", params={"limit": 2}).json()
    assert page["total"] == 3 and [e["id"] for e in page["items"]] == [ids[2], ids[1]]
    nxt = client.get(page["next"]).json()
    assert [e["id"] for e in nxt["items"]] == [ids[0]] and nxt["next"] is None
    assert [e["id"] for e in client.get("/v1/experiments?status=cancelled").json()["items"]] == [ids[0]]
    assert client.get("/v1/experiments?status=queued").json()["total"] == 2
    assert client.get("/v1/experiments?status=sleeping").status_code == 422
    assert client.get("/v1/experiments?limit=0").status_code == 422


def test_cancel_of_a_finished_experiment_is_a_conflict(client):
    exp = submit(client).json()["id"]
    assert client.delete(f"/v1/experiments/{exp}", headers=AUTH).status_code == 200
    r = client.delete(f"/v1/experiments/{exp}", headers=AUTH)
    assert r.status_code == 409 and "already cancelled" in r.json()["error"]


def test_pages_render_for_people(client):
    exp = submit(client).json()["id"]
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert exp in index.text and "queued" in index.text
    page = client.get(f"/experiments/{exp}")
    assert page.status_code == 200 and "lenet5 on digits" in page.text
    assert "fetch(" in page.text  # it polls while the experiment is waiting or running


def test_openapi_document(client):
    doc = client.get("/v1/openapi.json").json()
    assert {"/v1/experiments", "/v1/experiments/{exp_id}", "/v1/experiments/{exp_id}/images/{name}.png",
            "/healthz"} <= set(doc["paths"])
    post = doc["paths"]["/v1/experiments"]["post"]
    assert "202" in post["responses"] and "422" in post["responses"]
    assert post["security"] and "HTTPBearer" in doc["components"]["securitySchemes"]
    assert client.get("/v1/docs").status_code == 200


def test_attack_defaults_over_the_limits_are_lowered_to_them():
    from attacker.attacks import WhiteBoxParams
    from attacker.lab.attacks import attack_params
    from attacker.lab.spec import AttackSpec

    limits = Limits(max_iterations=100, max_epochs=3)
    default_its = WhiteBoxParams().resolved("conv1").iterations
    assert default_its > 100
    assert attack_params(AttackSpec(name="whitebox"), "conv1", limits)["iterations"] == 100
    assert attack_params(AttackSpec(name="whitebox"), "conv1", Limits())["progress"] is False
    assert "iterations" not in attack_params(AttackSpec(name="whitebox"), "conv1", Limits(max_iterations=10**6))
    qf = attack_params(AttackSpec(name="queryfree", shadow="different"), "relu2", limits)
    assert qf["shadow"] == "different" and qf["whitebox"]["iterations"] == 100 and qf["epochs"] == 3
    assert attack_params(AttackSpec(name="blackbox"), "relu2", limits)["epochs"] == 3
    explicit = AttackSpec(name="whitebox", params={"iterations": 50})
    assert attack_params(explicit, "conv1", limits)["iterations"] == 50
