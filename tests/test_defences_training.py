"""Training-time defences (issue 16): DP-SGD through Opacus, L2 on every layer or on the output
layer only, dropout; their options, ids, manifests, and DP models deployed and split exactly."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from models import ArtifactStore, SplitlabError, load_dataset, to_tensor
from models.defences.dp import DPSGD, epsilon_tolerance
from models.defences.regularisation import decayed_parameters
from models.deploy import TOLERANCE, deploy
from models.fit import fit
from models.loading import load_model, load_tail
from models.onnx_runtime import head_session
from models.training import TrainOptions, default_model_id, train, training_spec
from models.zoo import build_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_dp_spends_the_requested_epsilon_and_learns(digits, capsys):
    # device="cuda" on a machine without CUDA falls back to the CPU (through models.env.resolve_device)
    target = 8.0
    opts = TrainOptions(arch="lenet5", dataset="digits", epochs=3, scheme="full", seed=0, lr=3e-2,
                        dp_epsilon=target, device="cuda")
    model, manifest = train(opts, progress=False, dataset=digits)
    if not torch.cuda.is_available():
        assert manifest["device"] == "cpu" and "falling back to the CPU" in capsys.readouterr().err
    dp = manifest["dp"]
    # the accountant's epsilon after the planned steps: at most the target, within Opacus' search tolerance
    assert target - epsilon_tolerance() - 1e-9 <= dp["spent_epsilon"] <= target
    assert dp["delta"] == 1e-5 and dp["max_grad_norm"] == 1.0 and dp["accountant"] == "rdp"
    assert dp["noise_multiplier"] > 0.3
    assert dp["steps"] == 3 * round(1 / dp["sample_rate"])  # Poisson: 1/q steps per epoch
    assert manifest["test_accuracy"] > 0.5, manifest["test_accuracy"]  # 10 classes: chance is 0.1
    assert manifest["defences"] == ["dp8"] and manifest["dp_compatible"] is True
    assert manifest["options"]["dp_epsilon"] == target and manifest["spec"]["dp_epsilon"] == target
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus' hooks are gone


def test_dp_is_deterministic_for_a_seed(digits):
    opts = TrainOptions(arch="lenet5", dataset="digits", epochs=1, limit=150, seed=3, dp_epsilon=2, dropout=0.5)
    (a, ma), (b, mb) = [train(opts, progress=False, dataset=digits) for _ in range(2)]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert ma["dp"] == mb["dp"] and ma["defences"] == ["do0.5", "dp2"]


def test_dp_steps_through_empty_poisson_batches():
    # 4 examples, batch size 1: q = 1/4, so a step samples no example with probability (3/4)^4 ~ 0.32
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    sizes = []
    privacy = DPSGD(8.0)
    result = fit(model, lambda rows: (sizes.append(len(rows)), x[rows])[1], y, epochs=5, batch_size=1,
                 privacy=privacy, progress=False)
    assert 0 in sizes and result.steps == 20
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert privacy.spent_epsilon() <= 8.0


def test_dp_fixes_batchnorm_and_the_model_deploys_with_exact_splits(digits, tmp_path):
    opts = TrainOptions(arch="mia-cnn", dataset="digits", epochs=1, limit=128, seed=0, dp_epsilon=8.0)
    model, manifest = train(opts, progress=False, dataset=digits)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert manifest["dp"]["replaced_layers"] == ["bn1: BatchNorm2d -> GroupNorm", "bn2: BatchNorm2d -> GroupNorm"]
    store = ArtifactStore(tmp_path)
    manifest["model_id"] = "mia-dp"
    store.save_model("mia-dp", model.state_dict(), manifest)
    loaded, _ = load_model(store, "mia-dp")  # rebuilt as the GroupNorm variant, weights load strictly
    assert isinstance(loaded.bn1, nn.GroupNorm)
    x = to_tensor(digits.x_test[:16])
    with torch.no_grad():
        full = model(x)
        assert torch.equal(loaded(x), full)
    for split in ("relu1", "pool2"):
        dep = deploy(store, "mia-dp", split, check_inputs=x)
        assert dep["dp_compatible"] is True and dep["onnx_max_abs_diff"] <= TOLERANCE
        feats = head_session(str(store.deployment_dir(dep["deployment_id"]) / "head.onnx")).run(
            None, {"input": x.numpy()})[0]
        tail, _ = load_tail(store, dep["deployment_id"])
        with torch.no_grad():
            assert (tail(torch.from_numpy(feats)) - full).abs().max().item() <= 1e-4


def test_l2_on_the_output_layer_decays_only_that_layer():
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    init = build_model("lenet5").state_dict()

    def one_step(weight_decay, scope):
        model = build_model("lenet5")
        model.load_state_dict(init)
        fit(model, x, y, epochs=1, batch_size=32, weight_decay=weight_decay,
            decay_only=decayed_parameters(model, scope), progress=False)
        return model.state_dict()

    plain, output, everywhere = one_step(0.0, "all"), one_step(0.5, "output"), one_step(0.5, "all")
    model = build_model("lenet5")
    assert [id(p) for p in decayed_parameters(model, "output")] == [id(model.fc3.weight), id(model.fc3.bias)]
    assert decayed_parameters(model, "all") is None
    # one step from the same weights: only the decayed layer's update differs from no decay at all
    for name in plain:
        if name.startswith("fc3."):
            assert not torch.equal(output[name], plain[name]), name
        else:
            assert torch.equal(output[name], plain[name]), name
    assert not torch.equal(everywhere["conv1.weight"], plain["conv1.weight"])


def test_every_defence_has_its_own_id_and_old_specs_keep_theirs():
    base = dict(arch="lenet5", dataset="mnist")
    defences = [{}, {"dropout": 0.5}, {"weight_decay": 1e-3}, {"weight_decay": 1e-3, "weight_decay_scope": "output"},
                {"dropout": 0.5, "weight_decay": 1e-3, "weight_decay_scope": "output"},
                {"dp_epsilon": 2}, {"dp_epsilon": 4}, {"dp_epsilon": 8}, {"dp_epsilon": 2, "dropout": 0.5},
                {"dp_epsilon": 2, "dp_delta": 1e-6}, {"dp_epsilon": 2, "dp_max_grad_norm": 0.5},
                {"early_stopping": 3}, {"early_stopping": 3, "dropout": 0.5}]
    ids = [default_model_id(TrainOptions(**base, **d)) for d in defences]
    assert len(set(ids)) == len(ids), ids
    assert ids[0] == "lenet5-mnist-s0"
    assert ids[3].startswith("lenet5-mnist-s0-wd0.001-l2out-") and ids[8].startswith("lenet5-mnist-s0-do0.5-dp2-")
    # the new options enter a spec only when used: the specs (and ids) of models stored before are unchanged
    old_keys = {"arch", "dataset", "epochs", "limit", "dropout", "weight_decay", "seed", "batch_size", "lr",
                "augment", "scheme", "members"}
    assert set(training_spec(TrainOptions(**base, weight_decay=1e-3))) == old_keys
    assert {"dp_epsilon", "dp_delta", "dp_max_grad_norm"} <= set(training_spec(TrainOptions(**base, dp_epsilon=2)))
    assert "early_stopping" in training_spec(TrainOptions(**base, early_stopping=3))
    assert ids[12].startswith("lenet5-mnist-s0-do0.5-es3-")


@pytest.mark.parametrize("options, message", [
    ({"dp_epsilon": 0}, "--dp-epsilon must be a positive"),
    ({"dp_epsilon": -1}, "--dp-epsilon must be a positive"),
    ({"dp_epsilon": float("inf")}, "--dp-epsilon must be a positive"),
    ({"dp_epsilon": 2, "dp_delta": 1.0}, r"--dp-delta must be in \(0, 1\)"),
    ({"dp_epsilon": 2, "dp_delta": 0}, r"--dp-delta must be in \(0, 1\)"),
    ({"dp_epsilon": 2, "dp_max_grad_norm": 0}, "--dp-clip"),
    ({"dp_delta": 1e-6}, "--dp-delta 1e-06 only apply to DP-SGD; give --dp-epsilon"),
    ({"weight_decay": 1e-3, "weight_decay_scope": "middle"}, "--l2-scope must be one of all, output"),
    ({"weight_decay_scope": "output"}, "--l2-scope output needs a --weight-decay above 0"),
    ({"early_stopping": 0}, r"--early-stopping \(patience in epochs\) must be at least 1, got 0"),
    ({"early_stopping": 2, "dp_epsilon": 2}, "early stopping with DP-SGD is not supported"),
])
def test_bad_defence_options_are_clear_errors(options, message):
    with pytest.raises(SplitlabError, match=message):
        TrainOptions(arch="lenet5", dataset="digits", **options).validate()


def test_early_stopping_stops_and_keeps_the_best_epoch(digits):
    from models.training import accuracy, validation_indices

    # a learning rate high enough for the validation accuracy to stall well before 40 epochs
    opts = TrainOptions(arch="lenet5", dataset="digits", epochs=40, scheme="full", seed=0, lr=1e-2, early_stopping=2)
    model, manifest = train(opts, progress=False, dataset=digits)
    stopped = manifest["early_stopping"]
    assert stopped["stopped_after"] < 40 and stopped["stopped_after"] - stopped["best_epoch"] == 2
    assert len(manifest["epoch_losses"]) == stopped["stopped_after"]  # no epoch after the stop
    # the model returned has the best epoch's weights: its validation accuracy is the recorded best
    val = torch.from_numpy(validation_indices(len(digits.y_test)))
    x_val, y_val = to_tensor(digits.x_test)[val], torch.from_numpy(digits.y_test)[val]
    assert accuracy(model, x_val, y_val) == pytest.approx(stopped["validation_accuracy"], abs=1e-4)
    assert stopped["validation_accuracy"] > 0.8
    # a fixed draw of every class, not the end of a split that may be sorted by class
    assert (validation_indices(10000) == validation_indices(10000)).all() and len(validation_indices(10000)) == 2000
    assert len(set(load_dataset("cifar10").y_test[validation_indices(10000)])) == 10
    assert "early_stopping" not in train(TrainOptions(arch="lenet5", dataset="digits", epochs=1, scheme="full"),
                                         progress=False, dataset=digits)[1]


def test_cli_refuses_a_bad_budget_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "models", "train", "--arch", "lenet5", "--dataset", "digits",
                           "--dp-epsilon", "2", "--dp-delta", "1", "--artifacts", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--dp-delta must be in (0, 1), got 1.0" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing stored
