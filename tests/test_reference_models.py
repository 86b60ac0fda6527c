"""models.reference: shadow/reference models trained once, stored under their full spec, reused
only when the stored spec is the one asked for; grouped (vmapped) training stores the same models."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from models import ArtifactStore, SplitlabError, load_dataset, to_tensor
from models.reference import obtain_model, obtain_models
from models.training import TrainOptions, default_model_id, training_spec


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def specs(seeds, size=64, draw=0):
    rng = np.random.default_rng(draw)
    return [TrainOptions("lenet5", "digits", epochs=1, batch_size=32, seed=s,
                         members=tuple(rng.choice(1438, size, replace=False))) for s in seeds]


def never(*args, **kwargs):
    raise AssertionError("trained although the model is stored")


def test_trained_once_stored_by_spec_then_loaded(tmp_path, digits, monkeypatch):
    store = ArtifactStore(tmp_path)
    wanted = specs([0, 1, 2])
    out = obtain_models(store, wanted + [wanted[0]], progress=False, dataset=digits, together=False)
    ids = [m["model_id"] for _, m in out]
    assert ids == [default_model_id(s) for s in wanted + [wanted[0]]] and len(set(ids)) == 3
    assert store.list_models() == sorted(set(ids))  # the repeated spec was trained once
    for (model, manifest), spec in zip(out, wanted):
        assert manifest["members"]["indices"] == list(spec.members)
        non = manifest["non_members"]["indices"]
        assert len(non) == 1438 - 64 and not set(non) & set(spec.members)  # the complement
        assert manifest["spec"] == training_spec(spec) and not model.training

    monkeypatch.setattr("models.reference.train", never)
    monkeypatch.setattr("models.reference.fit_many", never)
    again = obtain_models(store, list(reversed(wanted)), progress=False, dataset=digits)
    x = to_tensor(digits.x_test[:8])
    with torch.no_grad():
        for (a, _), (b, _) in zip(out[:3], reversed(again)):
            assert torch.equal(a(x), b(x))
    # one option changed: another id, so it is trained, not taken from the store
    with pytest.raises(AssertionError, match="trained although"):
        obtain_model(store, dataclasses.replace(wanted[0], lr=2e-3), progress=False, dataset=digits)


def test_a_stored_model_with_another_spec_is_never_reused(tmp_path, digits):
    store = ArtifactStore(tmp_path)
    (spec,) = specs([0])
    obtain_model(store, spec, progress=False, dataset=digits, model_id="shadow-0")
    with pytest.raises(SplitlabError, match=r"'shadow-0' .* different spec \(epochs: stored 1, asked 2\)"):
        obtain_model(store, dataclasses.replace(spec, epochs=2), progress=False, dataset=digits, model_id="shadow-0")
    # a store written before specs existed (manifest without one, options without members):
    # `lenet5-digits-s0` as compose's init trains it is not the all-defaults spec of that id
    old = store.manifest("shadow-0")
    del old["spec"], old["options"]["members"]
    store.save_model("lenet5-digits-s0", {}, dict(old, model_id="lenet5-digits-s0"))
    with pytest.raises(SplitlabError, match="epochs: stored 1, asked 5"):
        obtain_model(store, TrainOptions("lenet5", "digits"), progress=False, dataset=digits)
    with pytest.raises(SplitlabError, match="given to two different specs"):
        obtain_models(store, [spec, dataclasses.replace(spec, seed=9)], model_ids=["a", "a"], progress=False)


def test_trained_together_stores_what_one_by_one_stores(tmp_path, digits):
    wanted = specs([3, 4])
    x = to_tensor(digits.x_test[:32])
    outputs = {}
    for together in (False, True):
        store = ArtifactStore(tmp_path / str(together))
        got = obtain_models(store, wanted, progress=False, dataset=digits, together=together)
        assert [m.get("trained_together") for _, m in got] == ([2, 2] if together else [None, None])
        with torch.no_grad():
            outputs[together] = [model(x) for model, _ in got]
    for a, b in zip(outputs[False], outputs[True]):
        assert torch.allclose(a, b, atol=1e-4)


def test_two_callers_at_once_train_it_once(tmp_path, digits, monkeypatch):
    from models import reference

    trained = []
    real = reference.train

    def counting(*args, **kwargs):
        trained.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(reference, "train", counting)
    store = ArtifactStore(tmp_path)
    (spec,) = specs([7])
    results, errors = [], []

    def ask():
        try:
            results.append(obtain_model(store, spec, progress=False, dataset=digits)[1])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(trained) == 1
    assert results[0]["created"] == results[1]["created"]
