"""ResNet-50 morphed into ConvNeXt-T in the 14 steps of paper 000, at CPU scale.

Paper 000 (``../shared/papers/000_11769f52c2347cab.txt``, "Morph ResNet-50 to ConvNeXt-T") walks
ConvNeXt's roadmap (Liu et al., "A ConvNet for the 2020s", CVPR 2022) one change at a time and
attacks every intermediate network; gradient inversion jumps at the patchify stem (step 4), at
removing activations (10) and at BN -> LN (12). To ask the same question here, every step is a
buildable, trainable, deployable architecture of the zoo.

**One builder, one config per step.** :class:`MorphConfig` holds every design choice the roadmap
touches; :data:`STEPS` lists the paper's 14 steps as *changes*, each applied to the config of the
step before (``dataclasses.replace``), so what a step changes is data (``step_change(n)``), not a
diff between 14 classes. :func:`morph_net` builds any config, not only the 14.

====  ==================================  ==========================================================  =========  ====
step  architecture                        change to the previous step                                    params  MMAC
====  ==================================  ==========================================================  =========  ====
1     ``morph-01-resnet50``               (start: ResNet-50)                                            579,994   8.4
2     ``morph-02-channel-dim``            width 16 -> 24                                              1,296,610  18.7
3     ``morph-03-stage-ratio``            depths (1,1,2,1) -> (1,1,3,1)                               1,454,434  21.2
4     ``morph-04-patchify``               stem overlapping -> patchify                                1,454,074  20.6
5     ``morph-05-resnextify``             depthwise False -> True                                       852,514  12.7
6     ``morph-06-inverted-bottleneck``    inverted False -> True                                        499,306   9.7
7     ``morph-07-kernel-size``            spatial_first False -> True, kernel 3 -> 7                    494,602   7.1
8     ``morph-08-new-stem``               stem_activation True -> False                                 494,602   7.1
9     ``morph-09-gelu``                   activation relu -> gelu                                       494,602   7.1
10    ``morph-10-fewer-activations``      activations all -> one                                        494,602   7.1
11    ``morph-11-fewer-norms``            norms all -> one                                              491,842   7.1
12    ``morph-12-layernorm``              norm bn -> ln                                                 492,586   7.1
13    ``morph-13-separate-downsampling``  downsampling in-block -> separate, head_norm False -> True    670,714   8.8
14    ``morph-14-convnext``               layer_scale 0 -> 1e-6, drop_path 0 -> 0.1                     671,266   8.8
====  ==================================  ==========================================================  =========  ====

(Counts for 10 classes and 3x32x32 inputs, from :func:`parameter_table`; MACs of one forward
pass, half the FLOPs :func:`models.flops.count_flops` counts.)

**The steps as taken here** (the paper numbers them 1-14; its slides name them, ConvNeXt's
roadmap says what each changes):

1. *ResNet-50*: stem conv-BN-ReLU-max-pool; stages of bottleneck blocks (1x1 reduce, 3x3, 1x1
   expand to 4x; BN after every conv; ReLU after the first two and after the residual sum); the
   first block of stages 2-4 strides (in its 3x3 conv, ResNet v1.5) with a 1x1 projection shortcut.
2. *Channel dim*: the spatial convs' width 64 -> 96 (here 16 -> 24), ConvNeXt's widening, which
   its roadmap makes part of ResNeXt-ify and the paper makes a step of its own.
3. *Stage ratio*: blocks per stage (3,4,6,3) -> (3,3,9,3).
4. *Patchify*: the stem's overlapping conv and max-pool -> one non-overlapping conv, stride =
   kernel (ImageNet 4x4/4; here 2x2/2), still followed by the stem's BN and ReLU.
5. *ResNeXt-ify*: the spatial conv depthwise (groups = channels).
6. *Inverted bottleneck*: the residual stream narrow (w) and the middle wide (4w): 1x1 expand,
   depthwise 3x3, 1x1 reduce.
7. *Kernel sizes*: the depthwise conv moved up to the block's first layer (before the 1x1s, as
   attention before the MLP) and 3x3 -> 7x7; ConvNeXt's roadmap makes these two sub-steps, the
   paper one.
8. *New stem*: the paper's slides name this step without defining it. Taken here as ConvNeXt's
   stem, the patchify conv followed by a norm only: the stem's activation goes (step 4 changed the
   stem's convolution, this its tail). Say so wherever a result of this step is compared.
9. *ReLU to GELU*: every activation.
10. *Removing activations*: one activation per block, between the two 1x1 convs (none after the
    residual sum).
11. *Removing BN*: one norm per block, after the depthwise conv (the shortcut's projection keeps
    its norm until step 13 removes the projection).
12. *BN to LN*: every norm a LayerNorm over channels (torchvision's ``LayerNorm2d``).
13. *Separate downsampling*: blocks never stride; a LayerNorm and a 2x2 stride-2 conv open stages
    2-4 (shortcuts become identities), and a LayerNorm follows the global pooling (ConvNeXt adds
    these norms in the same step).
14. *ConvNeXt*: ConvNeXt-T's last details: layer scale (a per-channel gain on each block's branch,
    initialised to 1e-6) and stochastic depth (rate rising linearly to 0.1 over the blocks).

**CPU scale** (the testbed trains on 2 shared cores; the paper trained ImageNet-sized networks):

* 32x32 CIFAR-10 inputs. The stem downsamples by 2, not 4 (ImageNet's 224 -> 56 would leave 8x8
  here and 1x1 in stage 4): ResNet's stem becomes a 3x3 stride-1 conv and a 3x3 stride-2 max-pool
  (overlapping, as ImageNet's 7x7/2 + max-pool), the patchify stem a 2x2 stride-2 conv (stride =
  kernel, as ImageNet's 4x4/4). Stages then run at 16, 8, 4 and 2 pixels.
* Widths / 4: the spatial convs of stage 1 have 16 channels (ResNet-50's 64) and 24 from step 2 on
  (ConvNeXt-T's 96), doubling per stage; expansion ratio 4 as in both papers.
* Depths / 3: (3,4,6,3) -> (1,1,2,1) and (3,3,9,3) -> (1,1,3,1), so stage 3 still gains blocks.
* Everything else (kernels 3 and 7, expansion 4, layer scale 1e-6, stochastic depth 0.1, LN eps
  1e-6) as in the papers. PyTorch's default initialisation everywhere, so that no step changes the
  initialisation scheme beside the architecture. Conv biases only where no BatchNorm follows
  (ResNet has none, ConvNeXt has them everywhere; a bias before BatchNorm is cancelled exactly).

**Split points** are the same five names in every step: ``stem``, ``stage1`` .. ``stage4`` (from
step 13 a stage's downsampling layer is the first layer of that stage, ``stageN.down``, as
ConvNeXt's ``downsample_layers[N]`` precedes ``stages[N]``), so one split point means the same
place, at the same resolution, along the whole morph. The layer groups of
:mod:`attacker.attacks.gradient.layers` find ``stem`` (the child of that name), ``head`` (``fc``)
and ``norm`` (BatchNorm2d; ``LayerNorm2d`` is an ``nn.LayerNorm``; the post-pooling ``norm``).

LayerNorm over channels of NCHW maps permutes to channels-last and back around ``F.layer_norm``;
the TorchScript exporter writes that as Transpose + LayerNormalization (opset 17). Deployed with
``python -m models deploy ID --split all`` after training, ONNX Runtime's heads differed from
torch's by at most 2.9e-6 (step 14), 8.6e-6 (step 7) and 1.8e-5 (step 1, BatchNorm) against the
deploy check's 1e-4, tails by at most 7.6e-6 (tested through :func:`models.deploy.deploy`).

**Training budget** (``python -m models train --arch A --dataset cifar10 --limit 10000 --epochs E
--eval-each-epoch --threads 1``: the default privacy scheme, so the members are its 6,250 target
images of the 25,000 in ``cifar10/train.npz``; Adam 1e-3, cosine decay over E epochs, batch 128, no
augmentation; 1 torch thread under ``nice`` on a machine shared at load 9-16, so seconds are rough
and "quiet epoch" is the fastest epoch of a run):

===========================  ======  ========================  =========  =========  ============
step                         epochs  test acc (epoch 5/10/15)  best test  train acc  s (quiet ep)
===========================  ======  ========================  =========  =========  ============
1 ``morph-01-resnet50``      5       .493                      .493       .964       365 (16)
7 ``morph-07-kernel-size``   5       .412                      .413       .915       241 (18)
14 ``morph-14-convnext``     5       .393                      .393       .422       207 (20)
1 ``morph-01-resnet50``      15      .470 / .493 / .496        .497       1.000      1064 (34)
7 ``morph-07-kernel-size``   15      .402 / .413 / .410        .413       1.000      538 (18)
14 ``morph-14-convnext``     15      .422 / .461 / .467        .468       .757       586 (19)
===========================  ======  ========================  =========  =========  ============

No budget here gives the paper's comparable accuracies (82-85 % for every step at full scale).
Five epochs leave ConvNeXt underfitting (42 % train: its layer scale starts every branch at 1e-6)
while ResNet-50 already overfits; at 15 epochs ResNet-50 and ConvNeXt end within 3 points (49.6 %
and 46.7 %), but the middle steps overfit fastest (step 7: 100 % train, 41 % test from epoch 10
on), so more epochs do not close their gap. Random crop + flip (``--augment``) did not help within
the budget: ConvNeXt reached 43.4 % after 11 of 15 epochs (run cut short), below the unaugmented
run's 46 %. Five epochs is what the study uses (``benchmarks/configs/architectures-matched.yaml``):
all 14 steps then measured 0.39-0.54 test accuracy (ResNet-50 0.49, ConvNeXt 0.39, steps 2-3 the
highest at 0.53-0.54), 21-56 s each to train on a quiet core, against 44-45 % for the
ResNets and transformers of the head-to-head comparison; each step's accuracy is reported next to
its attack figures.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import torch
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from .architectures import SplitNet, _fc_block
from .errors import SplitlabError
from .flops import count_flops

EXPANSION = 4      # bottleneck: stream = 4 x width; inverted: hidden = 4 x stream (both papers)
LN_EPS = 1e-6      # ConvNeXt's LayerNorm epsilon
MIN_SIDE = 16      # stem /2 and three stride-2 stages: 16 px leaves 2x2 for stage 4's downsampling
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
NORMS = ("bn", "ln")


@dataclass(frozen=True)
class MorphConfig:
    """Every design choice the ResNet -> ConvNeXt roadmap touches (defaults: step 1, ResNet-50)."""

    width: int = 16                       # stage-1 channels of the spatial conv (ResNet-50: 64)
    depths: tuple[int, ...] = (1, 1, 2, 1)  # blocks per stage (ResNet-50: 3,4,6,3)
    stem: str = "overlapping"             # conv 3x3/1 + max-pool 3x3/2 | "patchify": conv 2x2/2
    stem_activation: bool = True          # stem ends conv, norm, activation (ResNet) or conv, norm
    depthwise: bool = False               # spatial conv dense, or depthwise (groups = channels)
    inverted: bool = False                # bottleneck (stream 4w, middle w) or inverted (stream w, middle 4w)
    spatial_first: bool = False           # the spatial conv moved up to the block's first layer
    kernel: int = 3                       # spatial conv kernel
    activation: str = "relu"              # relu | gelu
    activations: str = "all"              # after convs 1, 2 and the residual sum | "one": after the expanding 1x1
    norms: str = "all"                    # after every conv | "one": after the spatial conv only
    norm: str = "bn"                      # bn (BatchNorm2d) | ln (LayerNorm over channels)
    downsampling: str = "in-block"        # first block of stages 2-4 strides | "separate": norm + 2x2/2 conv
    head_norm: bool = False               # LayerNorm after global pooling
    layer_scale: float = 0.0              # initial per-channel gain on each block's branch (0: none)
    drop_path: float = 0.0                # stochastic depth rate of the last block (linear from 0)

    def validate(self) -> None:
        def bad(what):
            raise SplitlabError(f"morph config: {what} (config {self})")

        if self.width < 1:
            bad(f"width must be positive, got {self.width}")
        if len(self.depths) != 4 or min(self.depths) < 1:
            bad(f"depths must be four positive block counts, got {self.depths}")
        if self.stem not in ("overlapping", "patchify"):
            bad(f"stem must be 'overlapping' or 'patchify', got {self.stem!r}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            bad(f"kernel must be odd and positive, got {self.kernel}")
        if self.activation not in ACTIVATIONS:
            bad(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.norm not in NORMS:
            bad(f"norm must be one of {NORMS}, got {self.norm!r}")
        for name in ("activations", "norms"):
            value = getattr(self, name)
            if value not in ("all", "one"):
                bad(f"{name} must be 'all' or 'one', got {value!r}")
            if value == "one" and not (self.inverted and self.spatial_first):
                bad(f"{name}='one' needs the ConvNeXt block layout (inverted=True, spatial_first=True)")
        if self.spatial_first and not self.inverted:
            bad("spatial_first needs inverted=True (the depthwise conv moves up in the inverted bottleneck)")
        if self.downsampling not in ("in-block", "separate"):
            bad(f"downsampling must be 'in-block' or 'separate', got {self.downsampling!r}")
        if self.layer_scale < 0 or not 0 <= self.drop_path < 1:
            bad("layer_scale must be >= 0 and drop_path in [0, 1)")

    def stream(self, stage: int) -> int:
        """Channels of the residual stream (a block's input and output) in ``stage`` (0-based)."""
        return self.width * (1 if self.inverted else EXPANSION) * 2 ** stage

    def middle(self, stage: int) -> int:
        """Channels between a block's 1x1 convs: the bottleneck's narrow middle or the inverted wide one."""
        return self.width * (EXPANSION if self.inverted else 1) * 2 ** stage


# The paper's 14 steps: (architecture name, the paper's label, the change to the previous config).
STEPS: tuple[tuple[str, str, dict], ...] = (
    ("morph-01-resnet50", "ResNet-50", {}),
    ("morph-02-channel-dim", "Channel dim", {"width": 24}),
    ("morph-03-stage-ratio", "Stage ratio", {"depths": (1, 1, 3, 1)}),
    ("morph-04-patchify", "Patchify", {"stem": "patchify"}),
    ("morph-05-resnextify", "ResNeXtify", {"depthwise": True}),
    ("morph-06-inverted-bottleneck", "Inv bottleneck", {"inverted": True}),
    ("morph-07-kernel-size", "Kernel sizes", {"spatial_first": True, "kernel": 7}),
    ("morph-08-new-stem", "New stem", {"stem_activation": False}),
    ("morph-09-gelu", "ReLU to GELU", {"activation": "gelu"}),
    ("morph-10-fewer-activations", "Removing Act", {"activations": "one"}),
    ("morph-11-fewer-norms", "Removing BN", {"norms": "one"}),
    ("morph-12-layernorm", "BN to LN", {"norm": "ln"}),
    ("morph-13-separate-downsampling", "Sep downsamp", {"downsampling": "separate", "head_norm": True}),
    ("morph-14-convnext", "ConvNeXt", {"layer_scale": 1e-6, "drop_path": 0.1}),
)


def _configs() -> dict[str, MorphConfig]:
    configs, config = {}, MorphConfig()
    for name, _, change in STEPS:
        config = replace(config, **change)
        config.validate()
        configs[name] = config
    return configs


CONFIGS: dict[str, MorphConfig] = _configs()
STEP_NUMBERS: dict[str, int] = {name: i for i, (name, _, _) in enumerate(STEPS, start=1)}  # the paper's numbers


def step_change(step: int) -> dict:
    """The fields step ``step`` (the paper's number, 1-14) changes, as ``{field: (before, after)}``
    (empty for step 1, the starting point)."""
    if not 1 <= step <= len(STEPS):
        raise SplitlabError(f"the morph has steps 1 to {len(STEPS)}, got {step}")
    if step == 1:
        return {}
    before, after = (asdict(CONFIGS[STEPS[i][0]]) for i in (step - 2, step - 1))
    return {f.name: (before[f.name], after[f.name]) for f in fields(MorphConfig) if before[f.name] != after[f.name]}


class LayerScale(nn.Module):
    """ConvNeXt's per-channel gain on a block's branch, ``gamma`` initialised to ``init``."""

    def __init__(self, channels: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), float(init)))

    def forward(self, x):
        return self.gamma * x


class DropPath(nn.Module):
    """Stochastic depth: in training, each example's branch is dropped with probability ``p`` (and
    kept ones scaled by 1 / (1 - p)). torchvision's ``StochasticDepth`` draws its mask in place on a
    fresh tensor, which ``vmap`` refuses (:func:`models.fit.fit_many`, reference models for LiRA);
    this draws it from the batch with ``rand_like``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        return x * ((torch.rand_like(x[:, :1, :1, :1]) < keep).to(x.dtype) / keep)


class MorphBlock(nn.Module):
    """``act(shortcut(x) + drop_path(scale(branch(x))))``; absent parts are identities."""

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module, scale: nn.Module, drop_path: nn.Module,
                 act: nn.Module):
        super().__init__()
        self.branch, self.shortcut, self.scale, self.drop_path, self.act = branch, shortcut, scale, drop_path, act

    def forward(self, x):
        return self.act(self.shortcut(x) + self.drop_path(self.scale(self.branch(x))))


def _norm(cfg: MorphConfig, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if cfg.norm == "bn" else LayerNorm2d(channels, eps=LN_EPS)


def _conv(cfg: MorphConfig, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
          padding: int = 0, normed: bool = False) -> nn.Conv2d:
    """A conv with a bias unless a BatchNorm follows (which would cancel it)."""
    return nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=not (normed and cfg.norm == "bn"))


def _stem(cfg: MorphConfig, channels: int) -> nn.Sequential:
    if cfg.stem == "patchify":
        layers = OrderedDict(conv=_conv(cfg, channels, cfg.width, 2, stride=2, normed=True))
    else:
        layers = OrderedDict(conv=_conv(cfg, channels, cfg.width, 3, padding=1, normed=True))
    layers["norm"] = _norm(cfg, cfg.width)
    if cfg.stem_activation:
        layers["act"] = ACTIVATIONS[cfg.activation]()
    if cfg.stem == "overlapping":
        layers["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
    return nn.Sequential(layers)


def _block(cfg: MorphConfig, cin: int, stage: int, stride: int, drop: float) -> MorphBlock:
    cout, mid = cfg.stream(stage), cfg.middle(stage)

    def spatial(c):
        return (c, c, cfg.kernel, stride, c if cfg.depthwise else 1, cfg.kernel // 2)

    if cfg.spatial_first:  # depthwise kxk on the input, 1x1 expand, 1x1 reduce (ConvNeXt)
        convs = [spatial(cin), (cin, mid, 1, 1, 1, 0), (mid, cout, 1, 1, 1, 0)]
        spatial_at, expand_at = 0, 1
    else:  # 1x1 to the middle width, kxk there, 1x1 to the stream (ResNet, inverted or not)
        convs = [(cin, mid, 1, 1, 1, 0), spatial(mid), (mid, cout, 1, 1, 1, 0)]
        spatial_at, expand_at = 1, None
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (ci, co, k, s, g, p) in enumerate(convs):
        normed = cfg.norms == "all" or i == spatial_at
        layers[f"conv{i + 1}"] = _conv(cfg, ci, co, k, s, g, p, normed=normed)
        if normed:
            layers[f"norm{i + 1}"] = _norm(cfg, co)
        if (cfg.activations == "all" and i < 2) or i == expand_at:
            layers[f"act{i + 1}"] = ACTIVATIONS[cfg.activation]()
    shortcut: nn.Module = nn.Identity()
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(OrderedDict(conv=_conv(cfg, cin, cout, 1, stride, normed=True),
                                             norm=_norm(cfg, cout)))
    return MorphBlock(
        nn.Sequential(layers), shortcut,
        LayerScale(cout, cfg.layer_scale) if cfg.layer_scale > 0 else nn.Identity(),
        DropPath(drop) if drop > 0 else nn.Identity(),
        ACTIVATIONS[cfg.activation]() if cfg.activations == "all" else nn.Identity())


def morph_net(cfg: MorphConfig, num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0) -> SplitNet:
    """Build ``cfg`` as a flat :class:`SplitNet`: stem, stage1..stage4, pool, flatten, [norm], fc."""
    cfg.validate()
    channels, height, width = input_shape
    if min(height, width) < MIN_SIDE:
        raise SplitlabError(f"the morph networks downsample 16-fold: inputs must be at least {MIN_SIDE}x{MIN_SIDE} "
                            f"pixels, got {height}x{width}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=_stem(cfg, channels))
    rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
    cin = cfg.width
    for stage, depth in enumerate(cfg.depths):
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        stride = 1 if stage == 0 else 2
        if stage and cfg.downsampling == "separate":
            blocks["down"] = nn.Sequential(OrderedDict(
                norm=_norm(cfg, cin), conv=_conv(cfg, cin, cfg.stream(stage), 2, stride=2)))
            cin, stride = cfg.stream(stage), 1
        for i in range(depth):
            blocks[str(i)] = _block(cfg, cin, stage, stride if i == 0 else 1, rates.pop(0))
            cin = cfg.stream(stage)
        layers[f"stage{stage + 1}"] = nn.Sequential(blocks)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    if cfg.head_norm:
        layers["norm"] = nn.LayerNorm(cin, eps=LN_EPS)
    _fc_block(layers, "fc", cin, num_classes, dropout)
    return SplitNet(layers, ["stem", "stage1", "stage2", "stage3", "stage4"])


def _builder(cfg: MorphConfig) -> Callable[..., SplitNet]:
    def build(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0) -> SplitNet:
        return morph_net(cfg, num_classes, input_shape, dropout)
    return build


BUILDERS: dict[str, Callable[..., SplitNet]] = {name: _builder(cfg) for name, cfg in CONFIGS.items()}
DEFAULT_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {name: (3, 32, 32) for name in CONFIGS}


def parameter_table(num_classes: int = 10, input_shape=(3, 32, 32)) -> list[tuple[int, str, str, int, float]]:
    """(paper step, name, label, parameters, MMAC per image) of every step: the docstring's table."""
    rows = []
    for step, (name, label, _) in enumerate(STEPS, start=1):
        model = BUILDERS[name](num_classes=num_classes, input_shape=input_shape)
        macs = count_flops(model.eval(), torch.zeros(1, *input_shape)) / 2
        rows.append((step, name, label, sum(p.numel() for p in model.parameters()), macs / 1e6))
    return rows
