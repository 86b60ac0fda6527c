"""The edge's REST endpoint: images and arrays in, class/scores/request id out; 4xx JSON for bad
input; the request id reaches the cloud (the black-box attacker matches on it)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from edge_client.client import CloudClient
from edge_client.edge import Edge, preprocess
from edge_client.heads import HeadCache
from edge_client.rest import create_app
from fixtures_grpc import captured_logs, digits_server, running_server  # noqa: F401
from models import load_dataset
from models.loading import load_model

DEP = "lenet5-digits--relu2"


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(digits_server, lenet_digits, tmp_path_factory):
    client = CloudClient(digits_server.address)
    edge = Edge(client, HeadCache(tmp_path_factory.mktemp("rest-heads")))
    app = create_app(edge, max_upload_mb=0.05)
    model, _ = load_model(lenet_digits, "lenet5-digits")
    ds = load_dataset("digits")
    with TestClient(app) as http:
        yield http, model, ds
    client.close()


def predict(model, images_uint8):
    with torch.inference_mode():
        return model(torch.from_numpy(preprocess(images_uint8))).numpy()


def test_png_upload_answers_class_scores_and_request_id(api):
    http, model, ds = api
    img = ds.x_test[3]
    with captured_logs() as records:
        r = http.post("/v1/infer", files={"file": ("x.png", encode(img[..., 0]), "image/png")},
                      data={"deployment_id": DEP})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predict(model, img[None])[0]
    assert body["class"] == int(expected.argmax()) and body["deployment_id"] == DEP
    assert np.allclose(body["logits"], expected, atol=1e-4)
    assert abs(sum(body["scores"]) - 1) < 1e-6 and int(np.argmax(body["scores"])) == body["class"]
    assert r.headers["x-request-id"] == body["request_id"] and len(body["request_id"]) == 32
    # the same id is the one the cloud saw (and logged)
    assert body["request_id"] in {rec.get("request_id") for rec in records if rec["event"] == "infer"}


def test_client_chosen_request_id_is_honoured(api):
    http, _, ds = api
    r = http.post(f"/v1/infer?deployment_id={DEP}", content=encode(ds.x_test[0][..., 0]),
                  headers={"content-type": "image/png", "x-request-id": "probe-0001"})
    assert r.status_code == 200 and r.json()["request_id"] == "probe-0001"
    assert r.headers["x-request-id"] == "probe-0001"
    # an unusable id is replaced, not trusted
    r = http.post(f"/v1/infer?deployment_id={DEP}", content=encode(ds.x_test[0][..., 0]),
                  headers={"content-type": "image/png", "x-request-id": "bad id with spaces"})
    assert r.status_code == 200 and r.json()["request_id"] != "bad id with spaces"


def test_jpeg_and_json_arrays(api):
    http, model, ds = api
    img = ds.x_test[5]
    r = http.post("/v1/infer", files={"file": ("x.jpg", encode(img[..., 0], "JPEG"), "image/jpeg")},
                  data={"deployment_id": DEP})
    assert r.status_code == 200, r.text
    # pixels (H, W) as JSON: exactly the uint8 image
    r = http.post("/v1/infer", json={"deployment_id": DEP, "array": img[..., 0].tolist()})
    assert r.status_code == 200, r.text
    assert r.json()["class"] == int(predict(model, img[None])[0].argmax())
    # a chosen model input (C, H, W) in [0, 1], e.g. the black-box attacker's noise probe
    probe = np.random.default_rng(0).random((1, 28, 28)).astype(np.float32)
    r = http.post("/v1/infer", json={"deployment_id": DEP, "array": probe.tolist()})
    assert r.status_code == 200, r.text
    with torch.inference_mode():
        expected = model(torch.from_numpy(probe[None])).numpy()[0]
    assert np.allclose(r.json()["logits"], expected, atol=1e-4)


@pytest.mark.parametrize("case,status,words", [
    ("wrong size", 422, "32x32"),
    ("not an image", 400, "not an image"),
    ("gif", 415, "PNG or JPEG"),
    ("too large", 413, "limit"),
    ("unknown deployment", 404, "NOT_FOUND"),
    ("no deployment", 422, "no deployment_id"),
    ("json bad shape", 422, "shape [3, 3]"),
    ("json out of range", 422, "[0, 1]"),
    ("json not numbers", 422, "rectangular array"),
    ("json pixels not whole", 422, "whole numbers"),
    ("invalid json", 400, "not valid JSON"),
    ("json without array", 422, "'array'"),
    ("content type", 415, "unsupported content type"),
    ("multipart without file", 422, "'file'"),
    ("malformed deployment id", 422, "invalid deployment id"),
])
def test_bad_input_gets_a_4xx_json_error(api, case, status, words):
    http, _, ds = api
    png = encode(ds.x_test[0][..., 0])
    buf = io.BytesIO()
    Image.fromarray(ds.x_test[0][..., 0]).save(buf, format="GIF")
    requests = {
        "wrong size": dict(files={"file": ("x.png", encode(np.zeros((32, 32), np.uint8)), "image/png")},
                           data={"deployment_id": DEP}),
        "not an image": dict(files={"file": ("x.png", b"hello, not a png", "image/png")}, data={"deployment_id": DEP}),
        "gif": dict(files={"file": ("x.gif", buf.getvalue(), "image/gif")}, data={"deployment_id": DEP}),
        "too large": dict(files={"file": ("x.png", b"\x89PNG" + bytes(100_000), "image/png")},
                          data={"deployment_id": DEP}),
        "unknown deployment": dict(files={"file": ("x.png", png, "image/png")}, data={"deployment_id": "nope"}),
        "no deployment": dict(files={"file": ("x.png", png, "image/png")}),
        "json bad shape": dict(json={"deployment_id": DEP, "array": [[1, 2, 3]] * 3}),
        "json out of range": dict(json={"deployment_id": DEP, "array": (np.ones((1, 28, 28)) * 2).tolist()}),
        "json not numbers": dict(json={"deployment_id": DEP, "array": [[1, 2], [3]]}),
        "json pixels not whole": dict(json={"deployment_id": DEP, "array": (np.ones((28, 28)) * 0.5).tolist()}),
        "invalid json": dict(content=b"{nope", headers={"content-type": "application/json"}),
        "json without array": dict(json={"deployment_id": DEP}),
        "content type": dict(content=b"abc", headers={"content-type": "text/plain"}),
        "multipart without file": dict(files={"other": ("x.png", png, "image/png")}, data={"deployment_id": DEP}),
        "malformed deployment id": dict(json={"deployment_id": "../../etc", "array": [[0]]}),
    }
    r = http.post("/v1/infer", **requests[case])
    assert r.status_code == status, (case, r.text)
    body = r.json()
    assert words in body["detail"], (case, body)
    assert body["request_id"] and r.headers["x-request-id"] == body["request_id"]


def test_healthz_docs_and_deployments(api, lenet_digits, tmp_path):
    http, _, _ = api
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json()["cloud"] == "SERVING"
    spec = http.get("/openapi.json").json()
    assert "/v1/infer" in spec["paths"] and "multipart/form-data" in json.dumps(spec["paths"]["/v1/infer"])
    assert http.get("/docs").status_code == 200
    deps = http.get("/v1/deployments").json()["deployments"]
    assert {d["deployment_id"] for d in deps} == {DEP, "lenet5-digits--conv1"}
    # an edge whose cloud is gone reports it
    with running_server(lenet_digits.root) as server:
        address = server.address
    with CloudClient(address, retries=False) as gone:
        app = create_app(Edge(gone, HeadCache(tmp_path)), health_timeout=2)
        with TestClient(app) as other:
            r = other.get("/healthz")
            assert r.status_code == 503 and r.json()["status"] == "degraded"
            r = other.post("/v1/infer", json={"deployment_id": DEP, "array": [[0]]})
            assert r.status_code == 503 and "UNAVAILABLE" in r.json()["detail"]
