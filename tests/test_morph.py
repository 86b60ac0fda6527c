"""The ResNet-50 -> ConvNeXt-T morph (models/morph.py): every step differs from the one before in
exactly the change the paper's step names, read off the built networks (not off the configs), and
every step builds, trains (forward and backward), exposes the gradient attacks' layer groups and
deploys through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from attacker.attacks.gradient.layers import parameter_groups
from models import SplitlabError, build_model, split_model
from models.morph import BUILDERS, CONFIGS, STEP_NUMBERS, STEPS, DropPath, MorphBlock, MorphConfig, morph_net, step_change
from models.zoo import architecture_names

NAMES = [name for name, _, _ in STEPS]
STAGES = ("stage1", "stage2", "stage3", "stage4")


def _blocks(model, stage):
    return [m for m in getattr(model, stage) if isinstance(m, MorphBlock)]


def _convs(block: MorphBlock) -> list[nn.Conv2d]:
    return [m for m in block.branch if isinstance(m, nn.Conv2d)]


def census(model) -> dict:
    """What the paper's steps change, measured on a built network."""
    blocks = [b for s in STAGES for b in _blocks(model, s)]
    block = _blocks(model, "stage2")[0]
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU))]
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    return {
        "stem": (model.stem.conv.kernel_size, model.stem.conv.stride,
                 any(isinstance(m, nn.MaxPool2d) for m in model.stem),
                 any(isinstance(m, (nn.ReLU, nn.GELU)) for m in model.stem)),
        "blocks": tuple(len(_blocks(model, s)) for s in STAGES),
        # (residual stream, middle) channels of each stage: the last 1x1 conv maps middle -> stream
        "channels": tuple((_convs(_blocks(model, s)[0])[-1].out_channels, _convs(_blocks(model, s)[0])[-1].in_channels)
                          for s in STAGES),
        "layout": tuple("1x1" if c.kernel_size == (1, 1) else "kxk" for c in _convs(block)),
        "spatial": sorted({(c.kernel_size, c.groups == c.in_channels > 1)
                           for b in blocks for c in _convs(b) if c.kernel_size != (1, 1)}),
        "act_type": sorted({type(m).__name__ for m in acts}),
        "acts_per_block": sum(isinstance(m, (nn.ReLU, nn.GELU)) for m in block.modules()),
        "norms_per_block": sum(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in block.branch),
        "norm_type": sorted({type(m).__name__ for m in norms if m is not getattr(model, "norm", None)}),
        "downsampling": tuple("down" in dict(getattr(model, s).named_children()) for s in STAGES[1:]),
        "head_norm": isinstance(getattr(model, "norm", None), nn.LayerNorm),
        "layer_scale": any(hasattr(m, "gamma") for m in model.modules()),
        "drop_path": any(isinstance(m, DropPath) for m in model.modules()),
    }


# What each step (the paper's number) changes in the census: the step's name, measured.
EXPECTED = {
    2: {"channels"}, 3: {"blocks"}, 4: {"stem"}, 5: {"spatial"}, 6: {"channels"},
    7: {"layout", "spatial"}, 8: {"stem"}, 9: {"act_type"}, 10: {"acts_per_block"}, 11: {"norms_per_block"},
    12: {"norm_type"}, 13: {"downsampling", "head_norm"}, 14: {"layer_scale", "drop_path"},
}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_model(name) for name in NAMES}


def test_fourteen_steps_numbered_as_the_paper_and_in_the_zoo():
    assert len(STEPS) == 14 and list(CONFIGS) == NAMES == list(BUILDERS)
    assert [STEP_NUMBERS[n] for n in NAMES] == list(range(1, 15))
    assert all(name.startswith(f"morph-{i:02d}-") for i, name in enumerate(NAMES, start=1))
    assert [label for _, label, _ in STEPS][3] == "Patchify" and STEPS[11][1] == "BN to LN"
    assert set(NAMES) <= set(architecture_names())


@pytest.mark.parametrize("step", range(2, 15))
def test_each_step_changes_exactly_what_it_names(models, step):
    before, after = census(models[NAMES[step - 2]]), census(models[NAMES[step - 1]])
    changed = {key for key in before if before[key] != after[key]}
    assert changed == EXPECTED[step], (NAMES[step - 1], {k: (before[k], after[k]) for k in changed | EXPECTED[step]})
    assert set(step_change(step)), "every step changes its config"


def test_the_named_changes(models):
    c = {name: census(m) for name, m in models.items()}
    resnet, convnext = c["morph-01-resnet50"], c["morph-14-convnext"]
    # ResNet-50: overlapping 3x3/1 conv + max-pool, three ReLUs a block (two in the branch, one after the sum),
    # a norm after each of its three convs, bottleneck 1x1 -> 3x3 -> 1x1 with a stream four times the middle
    assert resnet["stem"] == ((3, 3), (1, 1), True, True)
    assert resnet["acts_per_block"] == 3 and resnet["norms_per_block"] == 3 and resnet["layout"] == ("1x1", "kxk", "1x1")
    assert resnet["channels"][0] == (64, 16) and resnet["blocks"] == (1, 1, 2, 1)
    assert c["morph-02-channel-dim"]["channels"][0] == (96, 24) and c["morph-03-stage-ratio"]["blocks"] == (1, 1, 3, 1)
    patch = models["morph-04-patchify"].stem.conv
    assert patch.stride == patch.kernel_size == (2, 2)  # patchify: stride = kernel, non-overlapping
    assert c["morph-05-resnextify"]["spatial"] == [((3, 3), True)]
    assert c["morph-06-inverted-bottleneck"]["channels"][0] == (24, 96)  # narrow stream, wide middle
    assert c["morph-07-kernel-size"]["layout"] == ("kxk", "1x1", "1x1")
    assert c["morph-07-kernel-size"]["spatial"] == [((7, 7), True)]
    assert c["morph-08-new-stem"]["stem"] == ((2, 2), (2, 2), False, False)
    assert c["morph-09-gelu"]["act_type"] == ["GELU"]
    assert c["morph-10-fewer-activations"]["acts_per_block"] == 1  # between the two 1x1 convs only
    assert c["morph-11-fewer-norms"]["norms_per_block"] == 1
    assert c["morph-11-fewer-norms"]["norm_type"] == ["BatchNorm2d"]
    layernorm = models["morph-12-layernorm"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in layernorm.modules())
    assert isinstance(layernorm.stem.norm, LayerNorm2d)
    assert convnext["downsampling"] == (True, True, True) and convnext["head_norm"]
    down = models["morph-14-convnext"].stage2.down
    assert isinstance(down.norm, LayerNorm2d) and down.conv.kernel_size == down.conv.stride == (2, 2)
    assert all(isinstance(b.shortcut, nn.Identity) for s in STAGES for b in _blocks(models["morph-14-convnext"], s))
    gammas = [m.gamma for m in models["morph-14-convnext"].modules() if hasattr(m, "gamma")]
    assert len(gammas) == 6 and all(torch.all(g == 1e-6) for g in gammas)


def test_every_step_trains_forward_and_backward(models):
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for name, model in models.items():
        model.train().zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
        assert grads["fc.weight"].abs().sum() > 0 and any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("stem")), name
        assert model.split_points == ["stem", *STAGES]
        model.eval()


def test_gradient_layer_groups_find_stem_norm_and_head(models):
    for name, model in models.items():
        groups = parameter_groups(model)
        assert groups["stem"] and all(n.startswith("stem.") for n in groups["stem"]), name
        assert groups["head"] == ["fc.weight", "fc.bias"], name
        norm_modules = {n.rsplit(".", 1)[0] for n in groups["norm"]}
        kinds = {type(model.get_submodule(m)).__name__ for m in norm_modules}
        assert kinds == ({"BatchNorm2d"} if STEP_NUMBERS[name] < 12 else
                         {"LayerNorm2d"} | ({"LayerNorm"} if STEP_NUMBERS[name] >= 13 else set())), name


def test_layernorm_over_channels_matches_a_per_position_layer_norm():
    norm = LayerNorm2d(8, eps=1e-6)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(2, 8, 5, 5)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] + norm.bias[:, None, None]
    assert torch.allclose(norm(x), expected, atol=1e-5)


@pytest.fixture(scope="module")
def small_cifar(data_root):
    """CIFAR-10 cut to 256 training and 64 test images: the deploy path needs a stored, trained
    model, not a good one (training measures accuracy on the whole test set otherwise)."""
    from dataclasses import replace

    from models.datasets import load_dataset

    ds = load_dataset("cifar10", data_root)
    return replace(ds, x_train=ds.x_train[:256], y_train=ds.y_train[:256], x_test=ds.x_test[:64],
                   y_test=ds.y_test[:64])


def test_convnext_deploys_through_onnx_runtime(tmp_path, small_cifar):
    """The real deploy path (train, store, deploy) of the last step, which holds every kind of layer
    the morph has but BatchNorm (channel LayerNorms in the stem, blocks and downsampling layers,
    layer scale, stochastic depth): ONNX Runtime's head and tail match torch's on CIFAR-10 images,
    and the head's channel LayerNorm is ONNX's LayerNormalization."""
    import onnx

    from models.artifacts import ArtifactStore
    from models.datasets import to_tensor
    from models.deploy import deploy
    from models.onnx_runtime import head_session
    from models.training import TrainOptions, train

    arch, split = "morph-14-convnext", "stage3"
    store = ArtifactStore(tmp_path)
    model, manifest = train(TrainOptions(arch=arch, dataset="cifar10", epochs=1, scheme="full"),
                            progress=False, dataset=small_cifar)
    store.save_model(arch, model.state_dict(), manifest)
    images = to_tensor(small_cifar.x_test[:16])
    record = deploy(store, arch, split, check_inputs=images)
    assert record["onnx_max_abs_diff"] < 1e-4 and record["tail_onnx_max_abs_diff"] < 1e-4
    head_bytes = (store.deployment_dir(record["deployment_id"]) / "head.onnx").read_bytes()
    assert "LayerNormalization" in {node.op_type for node in onnx.load_from_string(head_bytes).graph.node}
    got = head_session(head_bytes).run(None, {"input": images.numpy()})[0]
    assert got.shape == (16, *record["feature_shape"])
    with torch.no_grad():
        want = split_model(model.eval(), split)[0](images).numpy()
    assert np.abs(got - want).max() < 1e-4 and np.abs(want).max() > 0.1


def test_any_config_builds_and_bad_ones_are_named():
    model = morph_net(MorphConfig(width=8, depths=(1, 1, 1, 1)), num_classes=3, input_shape=(1, 16, 20))
    assert model(torch.rand(2, 1, 16, 20)).shape == (2, 3)
    with pytest.raises(SplitlabError, match="activations='one' needs the ConvNeXt block layout"):
        morph_net(MorphConfig(activations="one"))
    with pytest.raises(SplitlabError, match="norm must be one of"):
        morph_net(MorphConfig(norm="gn"))
    with pytest.raises(SplitlabError, match="depths must be four"):
        morph_net(MorphConfig(depths=(1, 1)))
    with pytest.raises(SplitlabError, match="at least 16x16 pixels, got 8x8"):
        build_model("morph-14-convnext", input_shape=(3, 8, 8))
    with pytest.raises(SplitlabError, match="steps 1 to 14, got 15"):
        step_change(15)
    assert step_change(1) == {} and step_change(12) == {"norm": ("bn", "ln")}


def test_docstring_table_states_the_built_sizes():
    """The module docstring's table (parameters, MMAC per image) is what the builders build."""
    import models.morph as morph

    lines = {}  # the first table naming each step (the training table follows it)
    for line in morph.__doc__.splitlines():
        if line[:1].isdigit() and "``morph-" in line:
            lines.setdefault(line.split()[1].strip("`"), line)
    for step, name, _, params, macs in morph.parameter_table():
        assert lines[name].split()[-2:] == [f"{params:,}", f"{macs:.1f}"], name


def test_stochastic_depth_drops_whole_examples_and_trains_k_models_together():
    """ConvNeXt's stochastic depth drops a block's branch per example (kept ones scaled by 1/(1-p)),
    is the identity in eval mode, and draws its masks under vmap: fit_many (LiRA's reference
    models) trains the last step."""
    from models.fit import fit_many

    drop = DropPath(0.5).train()
    out = drop(torch.ones(2000, 3, 2, 2))
    per_example = out[:, 0, 0, 0]
    assert set(per_example.unique().tolist()) == {0.0, 2.0} and torch.equal(out, per_example[:, None, None, None].expand_as(out))
    assert 0.45 < (per_example == 0).float().mean() < 0.55
    assert torch.equal(drop.eval()(torch.ones(4, 3)), torch.ones(4, 3))
    torch.manual_seed(0)
    models = [build_model("morph-14-convnext") for _ in range(2)]
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    results = fit_many(models, x, y, [list(range(16)), list(range(16, 32))], [0, 1], epochs=1, batch_size=8,
                       progress=False)
    assert all(np.isfinite(r.last_loss) for r in results)
    assert not torch.equal(models[0].fc.weight, models[1].fc.weight)
