"""A cloud started before anything was trained: the lab recipe starts ``cloud-server --artifacts
artifacts`` on a fresh machine, where that folder does not exist yet. The server must come up,
say that its store is empty and where, refuse unknown deployments with NOT_FOUND naming the
store, and serve a deployment written there later without a restart."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from edge_client.client import CloudClient, CloudError
from fixtures_grpc import CloudProcess, save_untrained
from models import ArtifactStore
from models.deploy import deploy


@pytest.mark.e2e
def test_cloud_starts_on_a_missing_store_and_serves_what_is_deployed_later(tmp_path):
    root = tmp_path / "artifacts"  # does not exist
    server = CloudProcess(root)
    try:
        assert server.proc.poll() is None
        empty = [e for e in server.events if e.get("event") == "artifact store is empty"]
        assert empty and empty[0]["deployments"] == str(root / "deployments")
        x = np.random.default_rng(0).random((2, 120), dtype=np.float32)
        with CloudClient(server.address, retries=False) as client:
            assert client.health() == "SERVING" and client.list_deployments() == []
            for call in (lambda: client.infer("m--fc1", x), lambda: client.get_head("m--fc1")):
                with pytest.raises(CloudError) as info:
                    call()
                assert info.value.code == grpc.StatusCode.NOT_FOUND
                assert str(root / "deployments") in str(info.value)
            # a deployment written afterwards, as `python -m models deploy` would, is served at once
            store = ArtifactStore(root)
            save_untrained(store, "m", "lenet5")
            deploy(store, "m", "fc1", check_inputs=torch.rand(2, 1, 28, 28))
            assert client.infer("m--fc1", x).logits.shape == (2, 10)
            assert client.get_head("m--fc1").onnx_model
            assert [d["deployment_id"] for d in client.list_deployments()] == ["m--fc1"]
    finally:
        server.kill()


def test_cloud_refuses_an_artifacts_path_that_is_a_file(tmp_path):
    from cloud_server.__main__ import main

    (tmp_path / "f").write_text("")
    assert main(["--artifacts", str(tmp_path / "f"), "--port", "0"]) == 2
