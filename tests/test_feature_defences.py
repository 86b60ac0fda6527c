"""Feature defences (models/defences/features.py) as shipped in head.onnx: each changes the features
as its spec says, on both edge runtimes; deploying is all-or-nothing; and a noise defence lowers
the naive white-box attack's PSNR on the same images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import SplitlabError
from models.datasets import load_dataset, to_tensor
from models.defences import features as fdef
from models.deploy import deploy
from models.loading import load_model
from models.split import split_model
from conftest import private_copy

MODEL = "lenet5-digits"
DEFENDED = {  # name -> (split, spec)
    "gaussian": ("conv1", "gaussian:sigma=0.5"),
    "laplace": ("conv1", "laplace:scale=0.3"),
    "dropout": ("conv1", "dropout:p=0.3"),
    "quantize": ("conv1", "quantize:bits=3"),
    "deeper": ("conv1", "deeper:to=relu2"),
    "nonlinear": ("conv1", "nonlinear:kind=tanh,seed=1"),
}


@pytest.fixture(scope="module")
def lenet_digits(lenet_digits, tmp_path_factory):
    """This module deploys defended heads: it gets its own copy of the shared store."""
    return private_copy(lenet_digits, tmp_path_factory)


@pytest.fixture(scope="module")
def defended(lenet_digits):
    """Every defence deployed once on the shared lenet5 / digits model: name -> record."""
    return {name: deploy(lenet_digits, MODEL, split, defence=spec) for name, (split, spec) in DEFENDED.items()}


@pytest.fixture(scope="module")
def images():
    return to_tensor(load_dataset("digits").x_test[:16])


def _clean(store, split, x):
    head, _ = split_model(load_model(store, MODEL)[0], split)
    with torch.no_grad():
        return head(x).numpy()


def _runner(store, record, runtime):
    from edge_client.runtime import make_runner

    onnx_bytes = (store.deployment_dir(record["deployment_id"]) / "head.onnx").read_bytes()
    return make_runner(onnx_bytes, record, runtime=runtime)


def _draws(runner, x, n):
    return np.stack([runner(x.numpy()).features for _ in range(n)])


# --- the spec grammar ------------------------------------------------------------------------------

def test_spec_grammar_round_trips_through_json():
    chain = fdef.parse_spec("gaussian:sigma=0.1 + quantize:bits=4,lo=-1,hi=2; nonlinear:kind=relu")
    assert [d.type for d in chain] == ["gaussian", "quantize", "nonlinear"]
    assert chain[1].lo == -1.0 and chain[1].hi == 2.0 and chain[2].seed == 0
    assert fdef.defences(fdef.to_json(chain)) == chain
    assert fdef.label(chain) == "gaussian0.1-quantize4-lo-1-hi2-nonlinear-relu"
    assert fdef.defences({"type": "noise", "sigma": 0.3}) == (fdef.Gaussian(sigma=0.3),)  # the lab's old form
    assert fdef.parse_spec("none") == () and fdef.defences(None) == ()


@pytest.mark.parametrize("spec, message", [
    ("gaussian:sigma=0", "sigma must be in (0, 1000]"),
    ("gaussian", "missing parameter sigma"),
    ("laplace:scale=fast", "scale must be a finite number"),
    ("dropout:p=1", "p must be in (0, 1)"),
    ("quantize:bits=4.5", "bits must be an integer"),
    ("quantize:bits=4,lo=1", "give both lo and hi"),
    ("quantize:bits=4,lo=2,hi=1", "hi must be greater than lo"),
    ("deeper", "give layers=N"),
    ("deeper:layers=1+deeper:to=relu2", "deeper may be given once"),
    ("nonlinear:kind=swish", "kind must be one of tanh, relu, gelu"),
    ("blur:radius=2", "unknown feature defence 'blur'"),
    ("dropout:p=0.1,q=2", "unknown parameter(s) q"),
    ("dropout:0.1", "expected KEY=VALUE"),
])
def test_bad_specs_are_refused_naming_the_parameter(spec, message):
    with pytest.raises(fdef.DefenceError) as err:
        fdef.parse_spec(spec)
    assert message in str(err.value)


def test_the_cli_refuses_a_bad_spec_before_loading_anything(tmp_path, capsys):
    from models.__main__ import main

    assert main(["deploy", "no-such-model", "--split", "conv1", "--artifacts", str(tmp_path),
                 "--defence", "dropout:p=2"]) == 2
    assert "dropout: p must be in (0, 1), got 2" in capsys.readouterr().err


# --- what each defence ships -----------------------------------------------------------------------

def test_records_ids_and_onnx_metadata(lenet_digits, defended):
    for name, rec in defended.items():
        onnx_bytes = (lenet_digits.deployment_dir(rec["deployment_id"]) / "head.onnx").read_bytes()
        assert fdef.onnx_defences(onnx_bytes) == fdef.record_defences(rec), name
        assert rec["deployment_id"].startswith(f"{MODEL}--conv1--{name}"), rec["deployment_id"]
        acc = rec["accuracy"]
        assert acc["images"] > 100 and 0 <= acc["defended"] <= 1 and acc["clean"] > 0.5
    assert defended["deeper"]["split"] == "relu2" and defended["deeper"]["requested_split"] == "conv1"
    assert defended["deeper"]["accuracy"]["defended"] == defended["deeper"]["accuracy"]["clean"]  # an exact cut
    assert not lenet_digits.deployment(f"{MODEL}--conv1").get("feature_defense")


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_noise_is_centred_with_the_given_spread_and_fresh_per_call(lenet_digits, defended, images, runtime):
    clean = _clean(lenet_digits, "conv1", images[:4])
    for name, std in (("gaussian", 0.5), ("laplace", 0.3 * math.sqrt(2))):
        runner = _runner(lenet_digits, defended[name], runtime)
        draws = _draws(runner, images[:4], 20)
        noise = draws - clean
        assert abs(noise.mean()) < 0.02 and abs(noise.std() - std) < 0.03 * std, (name, noise.mean(), noise.std())
        assert not np.array_equal(draws[0], draws[1])  # a fresh draw on every call
        if name == "laplace":  # heavier tails than a Gaussian of the same spread: mean |n| = b, not 0.8 sigma
            assert abs(np.abs(noise).mean() - 0.3) < 0.01


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_dropout_zeroes_a_fraction_p_and_scales_the_rest(lenet_digits, defended, images, runtime):
    clean = _clean(lenet_digits, "conv1", images[:4])
    draws = _draws(_runner(lenet_digits, defended["dropout"], runtime), images[:4], 10)
    live = np.broadcast_to(clean != 0, draws.shape)
    dropped = (draws == 0) & live
    assert abs(dropped.sum() / live.sum() - 0.3) < 0.01
    kept = live & ~dropped
    np.testing.assert_allclose(draws[kept], np.broadcast_to(clean / 0.7, draws.shape)[kept], rtol=1e-4, atol=1e-5)
    assert not np.array_equal(draws[0], draws[1])


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_quantize_rounds_to_2_to_the_bits_levels_over_the_calibrated_range(lenet_digits, defended, images, runtime):
    rec = defended["quantize"]
    (q,) = fdef.record_defences(rec)
    clean = _clean(lenet_digits, "conv1", images)
    sent = _runner(lenet_digits, rec, runtime)(images.numpy()).features
    assert len(np.unique(sent)) <= 8 and len(np.unique(sent)) >= 4
    step = (q.hi - q.lo) / 7
    assert np.abs(sent - np.clip(clean, q.lo, q.hi)).max() <= step / 2 + 1e-4
    assert q.lo < clean.mean() < q.hi  # calibrated on the features, not left at a default range


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_deeper_ships_the_later_layers_features(lenet_digits, defended, images, runtime):
    rec = defended["deeper"]
    sent = _runner(lenet_digits, rec, runtime)(images.numpy()).features
    assert list(sent.shape[1:]) == rec["feature_shape"] == [16, 8, 8]
    np.testing.assert_allclose(sent, _clean(lenet_digits, "relu2", images), atol=1e-4)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_nonlinear_output_passes_a_bounded_activation_in_an_orthogonal_basis(lenet_digits, defended, images, runtime):
    clean = _clean(lenet_digits, "conv1", images)
    runner = _runner(lenet_digits, defended["nonlinear"], runtime)
    sent = runner(images.numpy()).features
    assert sent.shape == clean.shape and np.array_equal(sent, runner(images.numpy()).features)  # deterministic
    # y = Q^T tanh(Q x), Q orthogonal: each channel vector keeps at most its norm (|tanh z| <= |z|)
    # and has norm < sqrt(C) however large x was
    norms, clean_norms = np.linalg.norm(sent, axis=1), np.linalg.norm(clean, axis=1)
    assert (norms <= clean_norms + 1e-5).all() and norms.max() < math.sqrt(8)
    assert (clean_norms - norms).max() > 0.3 and np.abs(sent - clean).max() > 0.1


def test_the_torch_runtime_matches_onnx_runtime_statistically(lenet_digits, defended, images):
    """The same defended head on both runtimes: equal in distribution (noise, dropout) or in value."""
    for name, rec in defended.items():
        a, b = (_draws(_runner(lenet_digits, rec, rt), images[:4], 8) for rt in ("onnxruntime", "torch"))
        if fdef.comparison_tolerance(fdef.record_defences(rec), 1e-4) is None:
            assert abs(a.mean() - b.mean()) < 0.02 and abs(a.std() / b.std() - 1) < 0.02, name
        else:
            np.testing.assert_allclose(a, b, atol=fdef.comparison_tolerance(fdef.record_defences(rec), 1e-4))
    runner = _runner(lenet_digits, defended["gaussian"], "torch")
    assert "feature defence gaussian0.5 rebuilt in torch" in runner.description


@pytest.mark.parametrize("name", ["gaussian", "nonlinear"])
def test_the_torch_runtime_refuses_a_defended_head_without_its_metadata(lenet_digits, defended, name):
    import onnx

    from edge_client.runtime import make_runner

    rec = defended[name]
    model = onnx.load_from_string((lenet_digits.deployment_dir(rec["deployment_id"]) / "head.onnx").read_bytes())
    del model.metadata_props[:]
    stripped = model.SerializeToString()
    make_runner(stripped, rec)  # ONNX Runtime runs the graph as it is
    with pytest.raises(SplitlabError, match="use --runtime onnxruntime"):
        make_runner(stripped, rec, runtime="torch")


# --- atomicity -------------------------------------------------------------------------------------

def test_a_crash_while_writing_leaves_no_deployment(lenet_digits, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk pulled out")

    monkeypatch.setattr(torch, "save", crash)  # the tail's writer, after head.onnx is written
    with pytest.raises(RuntimeError, match="disk pulled out"):
        deploy(lenet_digits, MODEL, "relu2", "crashed", defence="gaussian:sigma=0.1")
    folder = lenet_digits.deployment_dir("crashed")
    assert not folder.exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".crashed")]  # no temp folder either
    with pytest.raises(SplitlabError, match="deeper: 'fc2' has only 0 split points"):
        deploy(lenet_digits, MODEL, "fc2", "refused", defence="deeper:layers=1")
    assert not lenet_digits.deployment_dir("refused").exists()


# --- the point of it -------------------------------------------------------------------------------

def test_noise_lowers_naive_whitebox_psnr_on_the_same_images(lenet_digits, defended, images):
    from attacker.attacks import knowledge_for
    from attacker.attacks.knowledge import KnowledgeSource
    from attacker.attacks.registry import create
    from attacker.metrics import image_metrics

    x = images[:6]
    scores = {}
    for dep in (f"{MODEL}--conv1", defended["gaussian"]["deployment_id"]):
        sent = _runner(lenet_digits, lenet_digits.deployment(dep), "onnxruntime")(x.numpy()).features
        knowledge = knowledge_for("whitebox", KnowledgeSource(dep, artifacts=lenet_digits))
        attack = create("whitebox", iterations=150, progress=False).fit(knowledge)
        scores[dep] = image_metrics(attack.reconstruct(sent), x)["psnr_mean"]
    clean, noisy = scores.values()
    assert clean > noisy + 3, scores


# --- the lab ---------------------------------------------------------------------------------------

def test_the_lab_takes_every_defence_and_names_the_bad_field(lenet_digits, defended):
    from attacker.lab.models_setup import ensure_deployment
    from attacker.lab.spec import ExperimentSpec, Limits, SpecError, check_spec

    base = {"arch": "lenet5", "dataset": "digits", "split_points": ["conv1"], "attacks": ["whitebox"]}
    chain = [{"type": "deeper", "to": "relu2"}, {"type": "nonlinear", "kind": "gelu"}, {"type": "quantize", "bits": 4},
             {"type": "laplace", "scale": 0.1}, {"type": "dropout", "p": 0.2}, {"type": "noise", "sigma": 0.1}]
    check_spec(ExperimentSpec.model_validate(base | {"feature_defense": chain}), Limits())
    bad = [{"type": "dropout", "p": 2}, {"type": "deeper", "to": "conv1"}, {"type": "quantize", "bits": "4"}]
    with pytest.raises(SpecError) as err:
        check_spec(ExperimentSpec.model_validate(base | {"feature_defense": bad, "split_points": ["conv1", "warp9"]}),
                   Limits())
    assert [loc for loc, _ in err.value.errors] == [("split_points", 1), ("feature_defense", 0, "p"),
                                                    ("feature_defense", 1, "to"), ("feature_defense", 2, "bits")]
    assert "'conv1' is not after the split point 'conv1'" in str(err.value)
    # the lab's original noise object deploys as (and reuses) the gaussian deployment
    record, reused = ensure_deployment(lenet_digits, MODEL, "conv1", {"type": "noise", "sigma": 0.5})
    assert reused and record["deployment_id"] == defended["gaussian"]["deployment_id"]
