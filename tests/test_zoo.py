"""Every split point of every architecture: head then tail equals the full model."""

import pytest
import torch

from models import SplitlabError, architecture_names, build_model, feature_shapes, split_model
from models.zoo import DEFAULT_INPUT_SHAPES


@pytest.mark.parametrize("arch", architecture_names())
def test_head_then_tail_equals_full_model(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7).eval()
    x = torch.rand(3, *DEFAULT_INPUT_SHAPES[arch])
    with torch.no_grad():
        full = model(x)
        assert full.shape == (3, 7)
        shapes = feature_shapes(model, DEFAULT_INPUT_SHAPES[arch])
        for point in model.split_points:
            head, tail = split_model(model, point)
            feats = head(x)
            assert tuple(feats.shape[1:]) == shapes[point]
            assert (tail(feats) - full).abs().max().item() <= 1e-5, point


def test_split_points_named_as_in_the_papers():
    assert build_model("lenet5").split_points == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1", "fc2"]
    points = build_model("he-cifar-cnn").split_points
    assert {"conv11", "relu22", "relu32", "pool3", "fc1", "fc2"} <= set(points)
    assert len(points) == 6 * 2 + 3 + 2


def test_he_cifar_cnn_shapes():
    model = build_model("he-cifar-cnn")
    assert model.fc1.in_features == 2048 and model.fc1.out_features == 512
    assert model.fc2.out_features == 10
    assert isinstance(model.sigmoid1, torch.nn.Sigmoid)


def test_he_cifar_cnn_keeps_activation_scale_through_the_convs():
    """He initialisation (fan-out mode, as torchvision's VGG): the features at relu32 keep about
    70x more energy than with PyTorch's default, which shrinks the signal at every conv and
    stalled training."""
    torch.manual_seed(0)
    model = build_model("he-cifar-cnn").eval()
    head, _ = split_model(model, "relu32")
    with torch.no_grad():
        feats = head(torch.rand(16, 3, 32, 32))
    conv = model.conv22
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0
    default = build_model("he-cifar-cnn").eval()
    for module in default.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()  # PyTorch's default initialisation
    with torch.no_grad():
        default_feats = split_model(default, "relu32")[0](torch.rand(16, 3, 32, 32))
    assert feats.pow(2).mean() > 20 * default_feats.pow(2).mean()


def test_lenet_matches_he_et_al():
    model = build_model("lenet5")
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel_size) == (1, 8, (5, 5))
    assert model.fc1.in_features == 256 and model.fc3.out_features == 10


def test_mia_cnn_widths_follow_input_channels():
    assert build_model("mia-cnn", input_shape=(3, 32, 32)).conv1.out_channels == 128
    assert build_model("mia-cnn", input_shape=(1, 28, 28)).conv1.out_channels == 32


def test_dropout_is_identity_at_eval():
    torch.manual_seed(0)
    a = build_model("lenet5", dropout=0.5).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(a(x), a(x))


def test_bad_names_are_clear_errors():
    with pytest.raises(SplitlabError, match="unknown architecture 'vgg99'"):
        build_model("vgg99")
    with pytest.raises(SplitlabError, match="unknown split point 'conv9'.*conv1"):
        split_model(build_model("lenet5"), "conv9")
    with pytest.raises(SplitlabError, match="cannot take inputs"):
        build_model("lenet5", input_shape=(1, 4, 4))
