"""Black-box model inversion: learn an inverse network g from queried pairs (He et al. 2019, Alg. 2).

The attacker sends auxiliary images x through the head (the edge's public ``/v1/infer``, the
features observed at the tap; or the head run offline), trains g to minimise ||g(f1(x)) - x||^2,
and outputs g(captured features).

Inverse-net architecture (:func:`inverse_network`). It is built from what a black-box attacker
sees - the feature shape (at the tap), the input shape (the public API) and the features' layout
(the deployment record's ``feature_layout``, or the public architecture's) - not from the head's
structure:

0. layout: features are taken channels first, (C, H, W); a channel-last (H, W, C) grid (swin-mini's
   stages, layout ``nhwc``) is permuted to it first (read as (C, H, W), swin-mini's 16x16x32 stage1
   would be 16 channels on a 16x32 grid); ``tokens`` must be (tokens, dim) and are flattened;

1. entry: a 3x3 conv (features with channels) or a linear layer to a (width, H/4, W/4) map (flat
   features, and a transformer's (tokens, dim) features flattened: the tap sees no token grid,
   and vit-mini's class token has no place in one), then ReLU;
2. growth to the input size: if the features are at most 6 pixels smaller than the image, one
   transposed conv with kernel ``H - h + 1`` (the exact adjoint shape of a valid conv); otherwise
   stride-2 transposed convs (kernel 4) until the map is at least the image size, then a valid conv
   of kernel ``h - H + 1`` to trim it (bilinear resizing if that kernel would exceed 7); each + ReLU;
3. refinement: a 3x3 conv + ReLU and a linear 3x3 conv to C channels; the output is clamped to
   [0, 1] only when reconstructing (a sigmoid output saturates on MNIST's black background and
   stalls training at a blank image);
4. plus a linear skip path from the features straight to pixels (a 3x3 conv, or the transposed
   conv of step 2, or a 3x3 conv and bilinear upsampling; a linear layer for flat features). The
   first layers (conv1, conv11) are linear in the image, so their inverse is nearly linear and a
   ReLU decoder alone approximates it only to ~37 dB; the skip lets g represent it exactly.

For the paper's split points this gives (``width`` w, 64 by default):

| split | features | g (body; skip) |
|---|---|---|
| lenet5 conv1 | 8x24x24 | conv3 8->w, convT5 (24->28), conv3, conv3 w->1; convT5 8->1 |
| lenet5 relu2 | 16x8x8 | conv3 16->w, 2x convT4/2 (8->16->32), conv5 valid (32->28), conv3, conv3 w->1; conv3 16->1 + bilinear |
| he-cifar-cnn conv11 | 64x32x32 | conv3 64->w, conv3, conv3 w->3; conv3 64->3 |
| he-cifar-cnn relu22 | 128x16x16 | conv3 128->w, convT4/2 (16->32), conv3, conv3 w->3; conv3 128->3 + bilinear |
| he-cifar-cnn relu32 | 128x8x8 | conv3 128->w, 2x convT4/2 (8->16->32), conv3, conv3 w->3; conv3 128->3 + bilinear |

Closed-form skip (``skip_fit="lstsq"``, the default): where the skip path is a single stride-1
convolution or transposed convolution (conv1, conv11 here), it is first fitted alone by ridge
least squares on the queried pairs (:func:`fit_linear_skip`, on up to ``lstsq_samples`` pixels; from
the cached features, or at most 2000 images queried for it when they do not fit ``max_cache_mb``),
then frozen, and the body (its last layer zeroed, so g starts as that linear inverse) learns the
non-linear residual; it is kept only if it lowers the error on the auxiliary images, and not
trained at all when the linear inverse is already within 60 dB (MSE 1e-6) of them. Gradient descent only approaches the linear inverse slowly (CIFAR conv11:
35 dB after 10 epochs); least squares solves it at once (see ``benchmarks/results/he2019.md``).
Other skips (with upsampling, or linear for flat features) are trained with the body.

Training: the testbed's one loop (:func:`models.fit.fit`: Adam with ``lr``, cosine decay,
mini-batches of ``batch_size`` in an order seeded by ``seed``, ``epochs`` passes over the auxiliary
set). Features are queried once and cached when they fit in ``max_cache_mb``; otherwise each
mini-batch is queried again (more queries, same result). On ``device="cuda"`` the network, the
cached features and the auxiliary images move to the GPU; the least-squares fit of the skip path
stays on the CPU (float64 normal equations, solved once before training).

Adaptive (the knowledge's ``defences``, :mod:`.known_defence`): the attacker's queries return clean
features and it knows the deployment's defence, so it trains g on defended features as the edge
would send them: the least-squares skip is fitted on one draw of the defence, and every training
mini-batch draws afresh (more draws of the noise or the dropout masks than one query per image).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from models.architectures import FEATURE_LAYOUTS, feature_channels
from models.fit import fit as train_network

from ..base import AttackParameterError, as_float_tensor, check_choice, check_positive, check_positive_int
from .base import InversionAttack, InversionParams
from .knowledge import BlackBoxKnowledge
from .known_defence import defence_layers


def _growth(c: int, size: tuple[int, int], target: tuple[int, int]) -> tuple[list[nn.Module], tuple[int, int]]:
    (h, w), (H, W) = size, target
    layers: list[nn.Module] = []
    if h <= H and w <= W and H - h <= 6 and W - w <= 6:
        if (h, w) != (H, W):
            layers += [nn.ConvTranspose2d(c, c, (H - h + 1, W - w + 1)), nn.ReLU()]
        return layers, (H, W)
    while h < H or w < W:
        layers += [nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.ReLU()]
        h, w = 2 * h, 2 * w
    if (h, w) != (H, W):
        kh, kw = h - H + 1, w - W + 1
        if kh <= 7 and kw <= 7:
            layers += [nn.Conv2d(c, c, (kh, kw)), nn.ReLU()]
        else:
            layers += [nn.Upsample(size=(H, W), mode="bilinear", align_corners=False)]
    return layers, (H, W)


LSTSQ_MAX_IMAGES = 2000  # images queried for the least-squares fit when the features are not cached
LINEAR_ENOUGH = 1e-6     # MSE (PSNR 60 dB) below which the fitted linear inverse is used alone


class ChannelsFirst(nn.Module):
    """(N, H, W, C) grids to (N, C, H, W) maps."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f.permute(0, 3, 1, 2)


class InverseNet(nn.Module):
    """``body(e) + skip(e)`` with ``e = entry(f)``: a non-linear decoder plus a linear path from
    features to pixels; ``entry`` puts the features in the layout both take (channels first)."""

    def __init__(self, body: nn.Module, skip: nn.Module, entry: nn.Module | None = None):
        super().__init__()
        self.body, self.skip = body, skip
        self.entry = entry or nn.Identity()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = self.entry(f)
        return self.body(f) + self.skip(f)


def _linear_skip(feature_shape, input_shape) -> nn.Module:
    C, H, W = input_shape
    if len(feature_shape) != 3:  # flat, or (tokens, dim) flattened first
        flatten = [nn.Flatten()] if len(feature_shape) > 1 else []
        return nn.Sequential(*flatten, nn.Linear(math.prod(feature_shape), C * H * W), nn.Unflatten(1, (C, H, W)))
    cf, h, w = feature_shape
    if h <= H and w <= W and H - h <= 6 and W - w <= 6:
        return nn.ConvTranspose2d(cf, C, (H - h + 1, W - w + 1)) if (h, w) != (H, W) else nn.Conv2d(cf, C, 3, padding=1)
    return nn.Sequential(nn.Conv2d(cf, C, 3, padding=1), nn.Upsample(size=(H, W), mode="bilinear", align_corners=False))


def _patches(skip: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """(N * H * W, K) rows: the features each output pixel of ``skip`` sees (its receptive field)."""
    if isinstance(skip, nn.ConvTranspose2d):  # = a valid conv over the features zero-padded by kernel - 1
        kh, kw = skip.kernel_size
        cols = nn.functional.unfold(feats, (kh, kw), padding=(kh - 1, kw - 1))
    else:
        cols = nn.functional.unfold(feats, skip.kernel_size, padding=skip.padding)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def fits_in_closed_form(skip: nn.Module) -> bool:
    """Whether :func:`fit_linear_skip` applies: one stride-1 (transposed) convolution."""
    return isinstance(skip, (nn.Conv2d, nn.ConvTranspose2d)) and skip.stride == (1, 1) and skip.dilation == (1, 1) \
        and skip.groups == 1 and (isinstance(skip, nn.Conv2d) or skip.padding == (0, 0))


RIDGES = (1e-10, 1e-8, 1e-6, 1e-4)  # relative ridge strengths tried by fit_linear_skip


def _set_linear(skip: nn.Module, solution: torch.Tensor, channels: int) -> None:
    """Load a (K + 1, C) least-squares solution (weights, then bias) into ``skip``."""
    weights, bias = solution[:-1].T.float(), solution[-1].float()  # (C, K), (C,)
    if isinstance(skip, nn.ConvTranspose2d):
        kh, kw = skip.kernel_size
        w = weights.reshape(channels, -1, kh, kw)  # the equivalent valid conv's kernel: (out, in, kh, kw)
        skip.weight.copy_(w.flip(2, 3).transpose(0, 1))
    else:
        skip.weight.copy_(weights.reshape(skip.weight.shape))
    skip.bias.copy_(bias)


@torch.no_grad()
def fit_linear_skip(skip: nn.Module, feats: torch.Tensor, images: torch.Tensor, max_samples: int = 200_000,
                    ridge: float | None = None, seed: int = 0, chunk: int = 32) -> float:
    """Set ``skip``'s weights and bias to the ridge least-squares map from features to pixels.

    Accumulates the normal equations over chunks of images (float64 sums of float32 products),
    on a random subset of at most ``max_samples`` output pixels, and solves them with a ridge of
    ``ridge`` times the mean diagonal. With ``ridge=None`` a tenth of the images is held out and
    the ridge in :data:`RIDGES` that fits them best is used: the system is rank-deficient (a
    pixel's receptive field has fewer degrees of freedom than the features that see it) and the
    best damping depends on the images (on the He et al. CIFAR conv11 cells 1e-6 gave 70.6 dB on
    one auxiliary set and 46.7 on another, 1e-9 the other way round). Returns the mean squared
    error on the held-out images (or on up to 512 of the fitting images when ``ridge`` is given).
    """
    if not fits_in_closed_form(skip):
        raise ValueError(f"no closed-form fit for {skip}")
    n, c = images.shape[:2]
    held = max(1, n // 10) if ridge is None and n >= 2 else 0
    fit_n = n - held
    per_image = images.shape[2] * images.shape[3]
    keep = min(1.0, max_samples / (fit_n * per_image))
    gen = torch.Generator().manual_seed(seed)
    gram = rhs = None
    for i in range(0, fit_n, chunk):
        j = min(fit_n, i + chunk)
        a = _patches(skip, feats[i:j])
        a = torch.cat([a, torch.ones(len(a), 1)], 1)
        y = images[i:j].flatten(2).transpose(1, 2).reshape(-1, c)
        if keep < 1.0:
            pick = torch.rand(len(a), generator=gen) < keep
            a, y = a[pick], y[pick]
        gram = (a.T @ a).double() + (0 if gram is None else gram)
        rhs = (a.T @ y).double() + (0 if rhs is None else rhs)
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    scale = gram.diagonal().mean()
    if not held:
        _set_linear(skip, torch.linalg.solve(gram + (1e-6 if ridge is None else ridge) * scale * eye, rhs), c)
        k = min(512, n)
        return float((skip(feats[:k]) - images[:k]).pow(2).mean())
    val_f, val_x = feats[fit_n:][:256], images[fit_n:][:256]
    best = None
    for r in RIDGES:
        solution = torch.linalg.solve(gram + r * scale * eye, rhs)
        _set_linear(skip, solution, c)
        err = float((skip(val_f) - val_x).pow(2).mean())
        if best is None or err < best[0]:
            best = (err, solution)
    _set_linear(skip, best[1], c)
    return best[0]


def inverse_network(feature_shape, input_shape, width: int = 64, layout: str = "nchw") -> InverseNet:
    """The inverse network g for features of ``feature_shape`` laid out as ``layout`` (``nchw``:
    (C, H, W), flat, or (tokens, dim) flattened; ``nhwc``: (H, W, C) grids, permuted to (C, H, W)
    first; ``tokens``: (tokens, dim), flattened) and images of ``input_shape``."""
    if layout not in FEATURE_LAYOUTS:
        raise AttackParameterError(f"unknown feature layout {layout!r}; known: {', '.join(FEATURE_LAYOUTS)}")
    entry = None
    if layout == "nhwc":
        if len(feature_shape) != 3:
            raise AttackParameterError(f"features of layout nhwc must be (H, W, C) grids, got shape "
                                       f"{tuple(feature_shape)}: no inverse network for them")
        h, w, c = feature_shape
        feature_shape, entry = (c, h, w), ChannelsFirst()
    elif layout == "tokens" and len(feature_shape) != 2:
        raise AttackParameterError(f"features of layout tokens must be (tokens, dim), got shape "
                                   f"{tuple(feature_shape)}: no inverse network for them")
    C, H, W = input_shape
    if len(feature_shape) == 3:
        h, w = feature_shape[1:]
        layers: list[nn.Module] = [nn.Conv2d(feature_shape[0], width, 3, padding=1), nn.ReLU()]
    elif len(feature_shape) in (1, 2):  # flat, or a transformer's (tokens, dim): flattened
        h, w = max(1, math.ceil(H / 4)), max(1, math.ceil(W / 4))
        layers = [nn.Flatten()] if len(feature_shape) == 2 else []
        layers += [nn.Linear(math.prod(feature_shape), width * h * w), nn.ReLU(), nn.Unflatten(1, (width, h, w))]
    else:
        raise AttackParameterError(f"features of shape {tuple(feature_shape)} are neither flat, (tokens, dim) nor "
                                   "(C, H, W): no inverse network for them")
    grow, _ = _growth(width, (h, w), (H, W))
    layers += grow
    layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, C, 3, padding=1)]
    return InverseNet(nn.Sequential(*layers), _linear_skip(tuple(feature_shape), tuple(input_shape)), entry)


@dataclass
class BlackBoxParams(InversionParams):
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 64
    weight_decay: float = 0.0
    skip_fit: str = "lstsq"       # "lstsq": solve a single-conv skip path in closed form; "none": train it
    lstsq_samples: int = 200_000  # pixels used by the least-squares fit
    query_batch: int = 256        # images per query call
    max_cache_mb: float = 1024.0  # cache queried features up to this size
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        super().validate()
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_positive_int("width", self.width)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_choice("skip_fit", self.skip_fit, ("lstsq", "none"))
        check_positive_int("lstsq_samples", self.lstsq_samples)
        check_positive_int("query_batch", self.query_batch)
        check_positive("max_cache_mb", self.max_cache_mb, allow_zero=True)
        check_positive_int("seed", self.seed, minimum=0)


def _sum_of_squares(output: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """He et al.'s training loss: ||g(f1(x)) - x||^2 per image, averaged over the batch."""
    return (output - images).pow(2).flatten(1).sum(1).mean()


class BlackBoxAttack(InversionAttack):
    """Train an inverse network on (aux image, queried features) pairs; reconstruct = g(features)."""

    name = "blackbox"
    Params = BlackBoxParams
    Knowledge = BlackBoxKnowledge

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        out = self.knowledge.query(images)
        feats = as_float_tensor("query result", out)
        if len(feats) != len(images):
            raise ValueError(f"the query returned {len(feats)} feature rows for {len(images)} images")
        self.queries += len(images)
        return feats

    def fit(self, knowledge: BlackBoxKnowledge) -> "BlackBoxAttack":
        super().fit(knowledge)
        p = self.params
        started = time.perf_counter()
        self.queries = 0
        aux = knowledge.aux_images
        first = self._query(aux[:1])
        self.feature_shape = tuple(first.shape[1:])
        per_image_mb = first.numel() * 4 / 2**20
        cached = None
        if per_image_mb * len(aux) <= p.max_cache_mb:
            cached = torch.cat([self._query(aux[i:i + p.query_batch]) for i in range(0, len(aux), p.query_batch)])
        torch.manual_seed(p.seed)
        defence = None
        if knowledge.defences:  # adaptive: the known defence applied to the clean queried features
            defence = defence_layers(knowledge.defences, feature_channels(self.feature_shape, knowledge.feature_layout),
                                     layout=knowledge.feature_layout).to(self.device)
        net = inverse_network(self.feature_shape, knowledge.input_shape, p.width, knowledge.feature_layout)
        self.skip_mse, self.body_kept = None, None
        fit_feats = cached
        closed_form = p.skip_fit == "lstsq" and fits_in_closed_form(net.skip)
        if closed_form and fit_feats is None:
            # too many features to cache: fit the skip on as many images as the cache allows
            m = min(len(aux), LSTSQ_MAX_IMAGES, int(p.max_cache_mb / per_image_mb))
            if m >= 1:
                fit_feats = torch.cat([self._query(aux[i:min(m, i + p.query_batch)]) for i in range(0, m, p.query_batch)])
        if defence is not None and fit_feats is not None:
            with torch.no_grad():
                fit_feats = defence(fit_feats.to(self.device)).cpu()
        if closed_form and fit_feats is not None:
            self.skip_mse = fit_linear_skip(net.skip, net.entry(fit_feats), aux[:len(fit_feats)], p.lstsq_samples,
                                            seed=p.seed)
            net.skip.requires_grad_(False)
            last = net.body[-1]
            nn.init.zeros_(last.weight)  # g starts as the fitted linear inverse
            nn.init.zeros_(last.bias)
        # a linear inverse that is already exact to 60 dB leaves the body nothing to learn but noise
        epochs = 0 if self.skip_mse is not None and self.skip_mse < LINEAR_ENOUGH else p.epochs
        inputs = cached if cached is not None else (lambda idx: self._query(aux[idx]))

        def augment(feats: torch.Tensor, _generator) -> torch.Tensor:  # the defence drawn afresh per batch
            with torch.no_grad():
                return defence(feats.to(self.device))

        result = train_network(net, inputs, aux, loss=_sum_of_squares, epochs=epochs, batch_size=p.batch_size,
                               lr=p.lr, weight_decay=p.weight_decay, seed=p.seed, device=self.device,
                               augment=None if defence is None else augment,
                               progress=p.progress, desc=f"blackbox inverse net ({knowledge.setting})", leave=False)
        if self.skip_mse is not None:
            self.body_kept = False
        if self.skip_mse is not None and epochs:  # keep the body only if it beats the linear inverse
            with torch.no_grad():
                k = min(512, len(fit_feats))
                sample, feats = aux[:k].to(self.device), fit_feats[:k].to(self.device)
                with_body = (net(feats) - sample).pow(2).mean().item()
                skip_only = (net.skip(net.entry(feats)) - sample).pow(2).mean().item()
            if skip_only <= with_body:
                nn.init.zeros_(net.body[-1].weight)
                nn.init.zeros_(net.body[-1].bias)
            self.body_kept = skip_only > with_body
        self.inverse_net = net
        self.final_loss = result.last_loss if result.steps else float("nan" if self.skip_mse is None else self.skip_mse)
        self.fit_seconds = time.perf_counter() - started
        return self

    def fit_stats(self) -> dict:
        self._require_fit("fit_stats")
        return {"queries": self.queries, "final_train_loss": self.final_loss, "aux_count": len(self.knowledge.aux_images),
                "linear_skip_mse": self.skip_mse, "body_kept": self.body_kept}

    def reconstruct(self, features) -> torch.Tensor:
        self._require_fit("reconstruct")
        feats = as_float_tensor("features", features, self.feature_shape)
        with torch.no_grad():
            return torch.cat([self.inverse_net(feats[i:i + 256].to(self.device)).cpu()
                              for i in range(0, len(feats), 256)]).clamp_(0, 1)
