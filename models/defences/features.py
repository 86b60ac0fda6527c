"""Feature (deployment-time) defences: what the edge does to its features before they leave the device.

Why they are modules of the head: a feature defence only protects anything if it runs on the device,
before the features reach the channel. So each one is an ``nn.Module`` appended to the head and
exported with it into ``head.onnx`` (random draws become ``RandomNormalLike`` / ``RandomUniformLike``
nodes, so ONNX Runtime draws fresh noise on every call); the cloud, the tap and anyone who downloads
the head see only what the defended head sends. A deployment records its defences in
``deployment.json`` (``feature_defense``: a list of objects, empty when undefended) and in the ONNX
file's metadata (``splitlab.feature_defense``), so the edge's torch runtime can rebuild exactly the
head it was sent without asking anyone.

Spec grammar (``python -m models deploy --defence SPEC``; the same objects as JSON)::

    SPEC    := DEFENCE (('+' | ';') DEFENCE)*          applied left to right
    DEFENCE := NAME [':' KEY '=' VALUE (',' KEY '=' VALUE)*]

    gaussian:sigma=S        x + N(0, S^2), fresh per call           ('noise' is an alias)
    laplace:scale=B         x + Laplace(0, B), fresh per call
    dropout:p=P             each value zeroed with probability P, the rest scaled by 1/(1-P), per call
    quantize:bits=K[,lo=L,hi=H]   clamp to [L, H] and round to 2^K levels; without L/H the range is
                            calibrated at deploy time (min/max of the features of 256 training
                            images) and recorded
    deeper:layers=N | deeper:to=POINT   run N more layers (or up to POINT) on the edge (He et al.'s
                            "make the client-side network deeper"); moves the split point
    nonlinear:kind=tanh|relu|gelu[,seed=S]   an extra activation layer before sending (Zhang et al.,
                            ../shared/papers/000: "insert more activation layers"), in a random basis:
                            y = Q^T act(Q x) with Q a fixed orthogonal channel mixing drawn from S, so
                            the shape and scale stay those the tail expects; the channel axis is the
                            model's (SplitNet.feature_layout): axis 1 of (C, H, W) features, the last
                            of channel-last (H, W, C) grids (Swin) and (tokens, dim) tensors (ViT)

The tail is not retrained: what a defence costs is measured at deploy time (tail accuracy on
held-out images, clean vs defended) and recorded in ``deployment.json``.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar, Literal

import torch
from torch import nn

from ..architectures import channel_axis
from ..errors import SplitlabError

METADATA_KEY = "splitlab.feature_defense"
NONLINEAR_KINDS = ("tanh", "relu", "gelu")


class DefenceError(SplitlabError, ValueError):
    """A defence spec that cannot be used; the message names the defence and the parameter
    (``param``, when there is one: the lab reports it as the field's location)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _number(name: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DefenceError(f"{name} must be a finite number, got {value!r}", _param(name))
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        raise DefenceError(f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, "
                           f"got {value!r}", _param(name))
    return float(value)


def _integer(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DefenceError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}", _param(name))
    return value


def _param(name: str) -> str:
    return name.partition(": ")[2]


# --- the modules exported in the head -------------------------------------------------------------

class AddNoise(nn.Module):
    """x + noise, with Gaussian (``scale`` = sigma) or Laplace (``scale`` = b) noise drawn per call."""

    def __init__(self, kind: str, scale: float):
        super().__init__()
        self.kind, self.scale = kind, float(scale)

    def forward(self, x):
        if self.kind == "gaussian":
            return x + self.scale * torch.randn_like(x)
        u = torch.rand_like(x) - 0.5  # inverse CDF of Laplace(0, b): -b sign(u) log(1 - 2|u|)
        return x - self.scale * torch.sign(u) * torch.log(torch.clamp(1.0 - 2.0 * torch.abs(u), min=1e-12))


class FeatureDropout(nn.Module):
    """Each value kept with probability 1 - p (and scaled by 1 / (1 - p)), in eval mode too."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) / (1.0 - self.p)


class Quantise(nn.Module):
    """Clamp to [lo, hi] and round to ``levels`` evenly spaced values."""

    def __init__(self, levels: int, lo: float, hi: float):
        super().__init__()
        self.lo, self.step = float(lo), (float(hi) - float(lo)) / (levels - 1)
        self.hi = float(hi)

    def forward(self, x):
        return torch.round((torch.clamp(x, self.lo, self.hi) - self.lo) / self.step) * self.step + self.lo


class MixedActivation(nn.Module):
    """``Q^T act(Q x)`` over the channel axis, Q a fixed orthogonal matrix drawn from ``seed``: axis 1
    for ``nchw`` features, the last axis for ``nhwc`` grids and ``tokens`` (each position's, or each
    token's, channels are mixed; positions never are)."""

    def __init__(self, kind: str, channels: int, seed: int, layout: str = "nchw"):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(channels, channels, generator=gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # a uniformly distributed orthogonal matrix
        self.register_buffer("q", q.float(), persistent=False)
        self.act = {"tanh": nn.Tanh(), "relu": nn.ReLU(), "gelu": nn.GELU()}[kind]
        self.channels_last = channel_axis(layout) == -1

    def forward(self, x):
        if self.channels_last:
            return self.act(x @ self.q.T) @ self.q
        last = list(range(x.dim()))
        last = [0] + last[2:] + [1]      # channels last (explicit: ONNX's Transpose takes no negative axes)
        back = [0, x.dim() - 1] + list(range(1, x.dim() - 1))
        y = x.permute(*last)
        return (self.act(y @ self.q.T) @ self.q).permute(*back)


# --- the specs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureDefence:
    """Base of the defence specs; ``random``: draws fresh randomness per call; ``smooth``: a
    deterministic, differentiable map that a white-box attacker knowing the deployment can run."""

    random: ClassVar[bool] = False
    smooth: ClassVar[bool] = False

    @property
    def label(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def module(self, channels: int, layout: str = "nchw") -> nn.Module | None:
        """The layer appended to the head for features with ``channels`` channels laid out as
        ``layout`` (:data:`models.architectures.FEATURE_LAYOUTS`); None: the defence is not a layer,
        e.g. ``deeper``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class RandomDefence(FeatureDefence):
    """A defence drawing fresh randomness on every call, with one positive parameter ``PARAM`` in (0, HI]
    (or (0, HI) when ``HI_OPEN``); its label is the type and the value (``gaussian0.1``)."""

    random: ClassVar[bool] = True
    PARAM: ClassVar[str] = ""
    HI: ClassVar[float] = 1e3
    HI_OPEN: ClassVar[bool] = False

    def __post_init__(self):
        value = _number(f"{self.type}: {self.PARAM}", getattr(self, self.PARAM), 0, self.HI, lo_open=True,
                        hi_open=self.HI_OPEN)
        object.__setattr__(self, self.PARAM, value)

    @property
    def label(self) -> str:
        return f"{self.type}{getattr(self, self.PARAM):g}"


class AdditiveNoise(RandomDefence):
    """Noise of the kind named by ``type``, scaled by ``PARAM``, added to the features (:class:`AddNoise`)."""

    def module(self, channels, layout="nchw"):
        return AddNoise(self.type, getattr(self, self.PARAM))


@dataclass(frozen=True)
class Gaussian(AdditiveNoise):
    """Gaussian noise N(0, sigma^2) added to every feature value, drawn afresh on every call."""

    type: Literal["gaussian"] = "gaussian"
    sigma: float = 0.0
    PARAM: ClassVar[str] = "sigma"


@dataclass(frozen=True)
class Laplace(AdditiveNoise):
    """Laplace noise with scale b (std b*sqrt(2)) added to every feature value, drawn afresh per call."""

    type: Literal["laplace"] = "laplace"
    scale: float = 0.0
    PARAM: ClassVar[str] = "scale"


@dataclass(frozen=True)
class Dropout(RandomDefence):
    """Each feature value zeroed with probability p (the rest scaled by 1/(1-p)), afresh per call."""

    type: Literal["dropout"] = "dropout"
    p: float = 0.0
    PARAM: ClassVar[str] = "p"
    HI: ClassVar[float] = 1.0
    HI_OPEN: ClassVar[bool] = True

    def module(self, channels, layout="nchw"):
        return FeatureDropout(self.p)


@dataclass(frozen=True)
class Quantize(FeatureDefence):
    """Features clamped to [lo, hi] and rounded to 2^bits levels (lo/hi calibrated at deploy when absent)."""

    type: Literal["quantize"] = "quantize"
    bits: int = 0
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self):
        _integer("quantize: bits", self.bits, 1, 16)
        if (self.lo is None) != (self.hi is None):
            raise DefenceError("quantize: give both lo and hi, or neither (calibrated at deploy time)",
                               "lo" if self.lo is None else "hi")
        if self.lo is not None:
            lo = _number("quantize: lo", self.lo, -1e30, 1e30)
            hi = _number("quantize: hi", self.hi, -1e30, 1e30)
            if not hi > lo:
                raise DefenceError(f"quantize: hi must be greater than lo, got lo={lo:g}, hi={hi:g}", "hi")
            object.__setattr__(self, "lo", lo)
            object.__setattr__(self, "hi", hi)

    @property
    def label(self) -> str:
        rng = f"-lo{self.lo:g}-hi{self.hi:g}".replace("+", "") if self.lo is not None else ""  # ids take no "+"
        return f"quantize{self.bits}{rng}"

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    def module(self, channels, layout="nchw"):
        if self.lo is None:
            raise DefenceError("quantize: the range (lo, hi) is not calibrated")
        return Quantise(self.levels, self.lo, self.hi)


@dataclass(frozen=True)
class Deeper(FeatureDefence):
    """Run more layers on the edge: ``layers`` more, or up to the split point ``to`` (moves the split)."""

    type: Literal["deeper"] = "deeper"
    layers: int | None = None
    to: str | None = None
    smooth: ClassVar[bool] = True

    def __post_init__(self):
        if self.layers is None and self.to is None:
            raise DefenceError("deeper: give layers=N (split points further) or to=POINT", "layers")
        if self.layers is not None:
            _integer("deeper: layers", self.layers, 1, 1000)
        if self.to is not None and (not isinstance(self.to, str) or not self.to):
            raise DefenceError(f"deeper: to must be a split point name, got {self.to!r}", "to")

    @property
    def label(self) -> str:
        return f"deeper-{self.to}" if self.to else f"deeper{self.layers}"

    def resolve(self, points: list[str], split: str) -> "Deeper":
        """This defence with both ``to`` and ``layers`` filled in for a head cut at ``split``."""
        if split not in points:
            raise DefenceError(f"deeper: unknown split point {split!r}; choose one of: {', '.join(points)}")
        start = points.index(split)
        if self.to is not None:
            if self.to not in points:
                raise DefenceError(f"deeper: unknown split point {self.to!r}; choose one of: {', '.join(points)}", "to")
            layers = points.index(self.to) - start
            if layers < 1:
                raise DefenceError(f"deeper: {self.to!r} is not after the split point {split!r}", "to")
            if self.layers is not None and self.layers != layers:
                raise DefenceError(f"deeper: to={self.to} is {layers} split points after {split}, not {self.layers}",
                                   "layers")
            return replace(self, layers=layers)
        if start + self.layers >= len(points):
            raise DefenceError(f"deeper: {split!r} has only {len(points) - 1 - start} split points after it, "
                               f"asked for {self.layers}", "layers")
        return replace(self, to=points[start + self.layers])

    def module(self, channels, layout="nchw"):
        return None


@dataclass(frozen=True)
class Nonlinear(FeatureDefence):
    """An extra activation before sending: Q^T act(Q x), Q a fixed orthogonal channel mixing from ``seed``."""

    type: Literal["nonlinear"] = "nonlinear"
    kind: str = "tanh"
    seed: int = 0
    smooth: ClassVar[bool] = True

    def __post_init__(self):
        if self.kind not in NONLINEAR_KINDS:
            raise DefenceError(f"nonlinear: kind must be one of {', '.join(NONLINEAR_KINDS)}, got {self.kind!r}", "kind")
        _integer("nonlinear: seed", self.seed, 0, 2**31 - 1)

    @property
    def label(self) -> str:
        return f"nonlinear-{self.kind}" + (f"{self.seed}" if self.seed else "")

    def module(self, channels, layout="nchw"):
        return MixedActivation(self.kind, channels, self.seed, layout)


DEFENCES: dict[str, type[FeatureDefence]] = {c.type: c for c in (Gaussian, Laplace, Dropout, Quantize, Deeper, Nonlinear)}
ALIASES = {"noise": "gaussian"}  # the lab's original {"type": "noise", "sigma": ...}
REQUIRED = {**{c.type: (c.PARAM,) for c in (Gaussian, Laplace, Dropout)}, "quantize": ("bits",)}


# --- parsing --------------------------------------------------------------------------------------

def from_json(obj: dict) -> FeatureDefence:
    if not isinstance(obj, dict):
        raise DefenceError(f"a defence is an object with a 'type', got {obj!r}")
    kind = obj.get("type")
    kind = ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if not isinstance(kind, str) or kind not in DEFENCES:  # a list or an object is no type either
        raise DefenceError(f"unknown feature defence {obj.get('type')!r}; choose one of {', '.join(DEFENCES)}", "type")
    cls = DEFENCES[kind]
    names = {f.name for f in fields(cls)} - {"type"}
    extra = sorted(set(obj) - names - {"type"})
    if extra:
        raise DefenceError(f"{kind}: unknown parameter(s) {', '.join(extra)}; it takes {', '.join(sorted(names))}",
                           extra[0])
    for name in REQUIRED.get(kind, ()):
        if name not in obj:
            raise DefenceError(f"{kind}: missing parameter {name}", name)
    return cls(**{k: v for k, v in obj.items() if k != "type"})


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_spec(text: str) -> tuple[FeatureDefence, ...]:
    """``gaussian:sigma=0.1+quantize:bits=4`` -> defences; ``''`` or ``none`` -> ()."""
    if not isinstance(text, str):
        raise DefenceError(f"a defence spec is a string, got {text!r}")
    out = []
    for part in text.replace(";", "+").split("+"):
        part = part.strip()
        if not part or part == "none":
            continue
        name, _, params = part.partition(":")
        obj: dict = {"type": name.strip()}
        for item in filter(None, (p.strip() for p in params.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise DefenceError(f"{name}: expected KEY=VALUE, got {item!r} (in {text!r})")
            obj[key.strip()] = _value(value.strip())
        out.append(from_json(obj))
    return check_chain(out)


def defences(value) -> tuple[FeatureDefence, ...]:
    """Any form of a defence chain: None, a spec string, a JSON object or list of them, or defences."""
    if value is None:
        return ()
    if isinstance(value, str):
        return parse_spec(value)
    if isinstance(value, (FeatureDefence, dict)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DefenceError(f"a feature defence is a spec string, an object or a list of objects, got {value!r}")
    return check_chain([v if isinstance(v, FeatureDefence) else from_json(v) for v in value])


def check_chain(chain) -> tuple[FeatureDefence, ...]:
    if sum(isinstance(d, Deeper) for d in chain) > 1:
        raise DefenceError("deeper may be given once (it moves the split point)")
    return tuple(chain)


def label(chain) -> str:
    """``gaussian0.1-quantize4``; ``''`` when undefended."""
    return "-".join(d.label for d in chain)


def id_suffix(chain) -> str:
    """What a deployment id ends with for the requested chain: ``--gaussian0.1``; ``''`` when undefended."""
    return f"--{label(chain)}" if chain else ""


def to_json(chain) -> list[dict]:
    return [d.to_json() for d in chain]


def record_defences(record: dict | None) -> tuple[FeatureDefence, ...]:
    """The defences of a deployment record (a list, or the lab's original single object)."""
    return defences((record or {}).get("feature_defense") or None)


def hides_from_whitebox(chain) -> bool:
    """True when the head sent to the edge differs from anything a white-box attacker can run exactly."""
    return any(d.random or not d.smooth for d in chain)


# --- building the defended head -------------------------------------------------------------------

@dataclass
class DefendedHead:
    module: nn.Sequential                 # the head's layers, then one layer per defence
    split: str                            # the effective split point (``deeper`` moves it)
    defences: tuple[FeatureDefence, ...]  # resolved: deeper's target and quantize's range filled in
    layout: str = "nchw"                  # the features' layout at ``split`` (SplitNet.feature_layout)


def defended_head(model, split: str, chain, input_shape, calibration: torch.Tensor | None = None) -> DefendedHead:
    """``model``'s head at ``split`` followed by the defences of ``chain``.

    ``calibration`` (images) sets the range of a ``quantize`` without one; without images such a
    defence is an error.
    """
    from ..split import split_model

    chain = defences(chain)
    resolved = [d.resolve(model.split_points, split) if isinstance(d, Deeper) else d for d in chain]
    point = next((d.to for d in resolved if isinstance(d, Deeper)), split)
    head, _ = split_model(model, point)
    layout = model.feature_layout(point) if hasattr(model, "feature_layout") else "nchw"
    layers = OrderedDict(head.named_children())
    for i, d in enumerate(resolved):
        current = nn.Sequential(layers).eval()
        if isinstance(d, Quantize) and d.lo is None:
            if calibration is None:
                raise DefenceError("quantize: no range (lo, hi) given and no images to calibrate it on")
            with torch.no_grad():
                feats = current(calibration)
            lo, hi = float(feats.min()), float(feats.max())
            d = resolved[i] = replace(d, lo=lo, hi=hi if hi > lo else lo + 1.0)
        with torch.no_grad():
            channels = int(current(torch.zeros(1, *input_shape)).shape[channel_axis(layout)])
        layer = d.module(channels, layout)
        if layer is not None:
            layers[f"defence{i}_{d.type}"] = layer
    return DefendedHead(nn.Sequential(layers).eval(), point, tuple(resolved), layout)


def rebuild_head(model, split: str, chain, input_shape) -> DefendedHead:
    """The defended head of a deployment from its record: ``split`` is the effective split point
    (a ``deeper`` defence is already in it) and every range is recorded."""
    return defended_head(model, split, [d for d in defences(chain) if not isinstance(d, Deeper)], input_shape)


def whitebox_head(defended: DefendedHead) -> nn.Sequential:
    """What a white-box attacker who knows the deployment can run: the defended head without the
    random and non-differentiable layers (noise, dropout and rounding are replaced by the identity)."""
    kept = OrderedDict()
    for name, layer in defended.module.named_children():
        if name.startswith("defence"):
            d = defended.defences[int(name[len("defence"):].split("_")[0])]
            if d.random or not d.smooth:
                continue
        kept[name] = layer
    return nn.Sequential(kept).eval()


class StraightThrough(nn.Module):
    """A rounding layer whose backward pass is the identity (the straight-through estimator): the
    forward values are exactly the deployed ones, the gradient is that of the unrounded map."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return x + (self.layer(x) - x).detach()


class KeptScale(nn.Module):
    """Dropout's effect on the values it keeps (x / (1 - p)); which it dropped shows in the captured
    features (exact zeros), so an attacker reads the mask there instead of guessing it."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        return x / (1.0 - self.p)


def adaptive_head(defended: DefendedHead) -> nn.Sequential:
    """What an *adaptive* white-box attacker who knows the deployment's defence spec optimises
    through: the defended head with its noise kept (each call draws fresh noise, so averaging a loss
    over calls estimates its expectation over the noise), rounding made straight-through, and
    dropout as the scale of the kept values (the mask is read off the captured features: the
    attacker compares only their non-zero values; averaging over random masks instead pulls the
    dropped values towards zero and did worse, 12.0 vs 13.6 dB naive on lenet5 conv1, p=0.5)."""
    def adaptive(layer):
        if isinstance(layer, Quantise):
            return StraightThrough(layer)
        return KeptScale(layer.p) if isinstance(layer, FeatureDropout) else layer

    layers = OrderedDict((name, adaptive(layer)) for name, layer in defended.module.named_children())
    return nn.Sequential(layers).eval()


def masks_by_zeros(chain) -> bool:
    """Whether the chain drops values (a zero in the sent features may be a dropped value: an
    adaptive attacker leaves zeros out of its feature loss)."""
    return any(isinstance(d, Dropout) for d in chain)


def comparison_tolerance(chain, tolerance: float) -> float | None:
    """How far two runtimes' outputs of a defended head may differ: None when it draws randomness
    (no value comparison), else ``tolerance``, or one quantisation step (a value on a rounding
    boundary may round either way)."""
    if any(d.random for d in chain):
        return None
    steps = [(d.hi - d.lo) / (d.levels - 1) for d in chain if isinstance(d, Quantize)]
    return max([tolerance] + [s * 1.001 for s in steps])


def tag_onnx(onnx_bytes: bytes, chain) -> bytes:
    """The ONNX head with its defences recorded in the model's metadata."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(to_json(chain), sort_keys=True)
    return model.SerializeToString()


def onnx_defences(onnx_bytes: bytes) -> tuple[FeatureDefence, ...]:
    """The defences recorded in an ONNX head's metadata (() for a head without)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return defences(json.loads(entry.value))
    return ()
