"""schemathesis over the edge's and the lab's OpenAPI documents, all checks, in process (ASGI).

Every generated request, valid or not, must get an answer the document describes: no 5xx, a
documented status code, content type, body and headers; a request the schema calls invalid must
be refused (negative data rejection), and where the schema describes validity completely, a valid
one accepted (positive data acceptance). Two operations take input whose validity depends on the
running service, which no static schema states: ``POST /v1/infer`` (the deployment's input shape,
whether the bytes decode as an image) and the lab's ``POST /v1/experiments`` (an architecture's
split points, stored models, the service's budget limits); there positive data acceptance is left
out and everything else is checked.

The edge runs against a real cloud on loopback (the trained lenet5 of ``conftest``). The lab's
app has its token set and its workers off: submitted experiments are stored and queued, and no
experiment runs during the fuzz.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from test_lab_api import AUTH, SPEC, make_app

from edge_client.client import CloudClient
from edge_client.edge import Edge
from edge_client.heads import HeadCache
from edge_client.rest import create_app
from fixtures_grpc import digits_server  # noqa: F401

STATE_DEPENDENT = {"POST /v1/infer", "POST /v1/experiments"}

# Both apps are built at import (schemathesis parametrizes at collection). The cloud's address is
# known only once the module's server starts, so the edge starts with a client to nowhere and the
# ``edge_on_cloud`` fixture points it at the real cloud. Their folders are removed at exit.
_DIR = Path(tempfile.mkdtemp(prefix="splitlab-api-schemas-"))
atexit.register(shutil.rmtree, _DIR, True)
EDGE = Edge(CloudClient("127.0.0.1:9"), HeadCache(_DIR / "heads"))
edge_schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(EDGE, max_upload_mb=0.05))
lab_schema = schemathesis.openapi.from_asgi("/v1/openapi.json", make_app(_DIR))


@pytest.fixture(scope="module")
def edge_on_cloud(digits_server):
    nowhere, EDGE.client = EDGE.client, CloudClient(digits_server.address)
    nowhere.close()
    yield
    EDGE.client.close()


def call_with_all_checks(case, **kwargs) -> None:
    excluded = [positive_data_acceptance] if case.operation.label in STATE_DEPENDENT else []
    case.call_and_validate(excluded_checks=excluded, **kwargs)


@edge_schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_edge_api_conforms_to_its_document(case, edge_on_cloud):
    call_with_all_checks(case)


@lab_schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_lab_api_conforms_to_its_document(case):
    call_with_all_checks(case, headers=AUTH)


CHOICES = {"arch": ["lenet5", None, ...], "model_id": ["lenet5-digits", None, ...], "dataset": ["digits", None, ...],
           "train": [{"epochs": 1}, None, ...]}  # ... = key left out


def test_lab_schema_says_where_the_model_comes_from_exactly_as_the_service_checks(tmp_path, lenet_digits):
    """arch and model_id exclude each other (dataset with arch, no train with model_id): for every
    combination of given, null and absent keys, the published JSON schema accepts the body exactly
    when the service does (and a refusal names the field)."""
    import itertools

    import jsonschema_rs
    from fastapi.testclient import TestClient

    with TestClient(make_app(tmp_path, artifacts=lenet_digits.root)) as client:
        doc = client.get("/v1/openapi.json").json()
        spec_schema = doc["components"]["schemas"]["ExperimentSpec"]
        assert [b["title"] for b in spec_schema["oneOf"]] == ["train a model", "reuse a stored model"]
        validator = jsonschema_rs.validator_for({**spec_schema, "components": doc["components"]})
        base = {k: v for k, v in SPEC.items() if k not in CHOICES}
        for values in itertools.product(*CHOICES.values()):
            body = base | {k: v for k, v in zip(CHOICES, values) if v is not ...}
            r = client.post("/v1/experiments", json=body, headers=AUTH)
            assert validator.is_valid(body) == (r.status_code == 202), (body, r.status_code, r.text)
            if r.status_code == 422:
                assert r.json()["error"].split(":")[0] in CHOICES, r.json()
