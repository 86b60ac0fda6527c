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

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from edge_client.client import CloudClient
from edge_client.edge import Edge
from edge_client.heads import HeadCache
from edge_client.rest import create_app
from fixtures_grpc import digits_server  # noqa: F401

STATE_DEPENDENT = {"POST /v1/infer", "POST /v1/experiments"}


def run_all_checks(schema, max_examples: int, **call) -> list[str]:
    """Every operation of ``schema`` under hypothesis; the failures (one report per operation)."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        excluded = [positive_data_acceptance] if operation.label in STATE_DEPENDENT else []

        @given(case=st.one_of([operation.as_strategy(mode) for mode in schemathesis.GenerationMode]))
        @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(excluded_checks=excluded, **call)

        try:
            check()
        except BaseException as exc:  # noqa: BLE001 - schemathesis raises a failure group
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}:\n{exc}")
    return failures


@pytest.fixture(scope="module")
def edge_app(digits_server, tmp_path_factory):
    client = CloudClient(digits_server.address)
    yield create_app(Edge(client, HeadCache(tmp_path_factory.mktemp("schema-heads"))), max_upload_mb=0.05)
    client.close()


def test_edge_api_conforms_to_its_document(edge_app):
    failures = run_all_checks(schemathesis.openapi.from_asgi("/openapi.json", edge_app), max_examples=40)
    assert not failures, "\n\n".join(failures)


def test_lab_api_conforms_to_its_document(tmp_path):
    from test_lab_api import AUTH, make_app

    app = make_app(tmp_path)
    failures = run_all_checks(schemathesis.openapi.from_asgi("/v1/openapi.json", app), max_examples=25, headers=AUTH)
    assert not failures, "\n\n".join(failures)


CHOICES = {"arch": ["lenet5", None, ...], "model_id": ["lenet5-digits", None, ...], "dataset": ["digits", None, ...],
           "train": [{"epochs": 1}, None, ...]}  # ... = key left out


def test_lab_schema_says_where_the_model_comes_from_exactly_as_the_service_checks(tmp_path, lenet_digits):
    """arch and model_id exclude each other (dataset with arch, no train with model_id): for every
    combination of given, null and absent keys, the published JSON schema accepts the body exactly
    when the service does (and a refusal names the field)."""
    import itertools

    import jsonschema_rs
    from fastapi.testclient import TestClient
    from test_lab_api import AUTH, SPEC, make_app

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
