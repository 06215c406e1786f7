"""Masked layers with one score tensor per task (edge-popup / SupSup supermasks).

A masked layer holds a fixed weight ``W`` (signed constant ±sqrt(2/fan_in), the relu gain, no
bias) and ``T`` real-valued score tensors shaped like ``W``. Task ``t`` uses
``W ⊙ M_t`` with ``M_t = topk(|s_t|)``: exactly ``k = round(d · numel)`` entries kept per layer,
where the density ``d`` in (0, 1] is the fraction KEPT (SupSup's ``sparsity`` argument).

Rounding: ``k = floor(d · numel + 0.5)`` (half up), clamped to ``[1, numel]``, so a layer never
ends up empty. SupSup's ``GetSubnet`` keeps ``numel - int((1 - d) · numel)`` instead; the two
agree except when ``d · numel`` has a fractional part (they then differ by at most one weight).

The straight-through estimator passes the mask's gradient to ``|s|`` unchanged, so with
``W̃ = W ⊙ M``:  dL/ds_ij = dL/dW̃_ij · w_ij · sign(s_ij)  (edge-popup's input × output-grad × weight).

Per-task normalisation: :class:`MultitaskNonAffineBN` keeps one non-affine BatchNorm per task,
because shared running statistics make a frozen-weight model "forget" (SupSup issue #11).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from subnetviz.errors import ConfigError


def kept_count(numel: int, density: float) -> int:
    """How many of ``numel`` entries a mask of ``density`` keeps: round half up, at least 1."""
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density {density!r} is outside (0, 1]; it is the fraction of weights KEPT.")
    return int(min(numel, max(1, math.floor(density * numel + 0.5))))


def topk_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Bool mask (shape of ``scores``) keeping the ``kept_count`` largest ``|scores|``. Among equal ``|scores|``
    at the cut, which entries are kept is ``torch.topk``'s choice (not the lowest indices; the same on one machine).
    Float scores drawn uniformly almost never tie."""
    flat = scores.detach().abs().flatten()
    k = kept_count(flat.numel(), density)
    idx = torch.topk(flat, k, sorted=False).indices
    out = torch.zeros_like(flat, dtype=torch.bool)
    out[idx] = True
    return out.view_as(scores)


class GetSubnet(torch.autograd.Function):
    """Forward: 0/1 float mask of the top-k of ``abs_scores``. Backward: straight through."""

    @staticmethod
    def forward(ctx, abs_scores: torch.Tensor, density: float) -> torch.Tensor:
        return topk_mask(abs_scores, density).to(abs_scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def signed_constant_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """SupSup's ``signed_constant`` init: ±gain('relu')/sqrt(fan_in), signs from kaiming_uniform(a=√5)."""
    fan_in = weight[0].numel()
    with torch.no_grad():
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=√5) bound; only the sign is kept
        signs = torch.empty_like(weight).uniform_(-bound, bound, generator=generator).sign()
        signs[signs == 0] = 1.0
        weight.copy_(signs * (nn.init.calculate_gain("relu") / math.sqrt(fan_in)))
    return weight


def _score_init(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """kaiming_uniform(a=√5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = int(math.prod(shape[1:]))
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class _MaskedMixin:
    """Shared state of a masked layer: weight, per-task scores, current task, optional alphas."""

    def _init_masked(self, shape: tuple[int, ...], num_tasks: int, density: float, generator) -> None:
        kept_count(1, density)  # validates the density
        self.density = float(density)
        self.weight = nn.Parameter(signed_constant_(torch.empty(shape), generator), requires_grad=False)
        self.scores = nn.ParameterList([nn.Parameter(_score_init(shape, generator)) for _ in range(num_tasks)])
        self.task = 0
        self.alphas: torch.Tensor | None = None  # (T,) superposition weights for one-shot task inference
        self.fixed_masks: dict[int, torch.Tensor] = {}  # task -> bool mask, cached once the task is frozen

    def mask(self, task: int) -> torch.Tensor:
        """Bool mask of ``task`` (shape of ``weight``)."""
        if task in self.fixed_masks:
            return self.fixed_masks[task]
        return topk_mask(self.scores[task], self.density)

    def freeze_mask(self, task: int) -> None:
        """Cache task's mask: its scores no longer change (mask phase over)."""
        self.fixed_masks[task] = topk_mask(self.scores[task], self.density)

    def unfreeze_mask(self, task: int) -> None:
        self.fixed_masks.pop(task, None)

    def effective_weight(self) -> torch.Tensor:
        if self.alphas is not None:
            stacked = torch.stack([self.mask(i).to(self.weight.dtype) for i in range(len(self.alphas))])
            mix = (self.alphas.view(-1, *([1] * self.weight.dim())) * stacked).sum(0)
            return self.weight * mix
        if self.task in self.fixed_masks:
            return self.weight * self.fixed_masks[self.task].to(self.weight.dtype)
        return self.weight * GetSubnet.apply(self.scores[self.task].abs(), self.density)


class MaskedLinear(_MaskedMixin, nn.Module):
    """``y = x (W ⊙ M_task)ᵀ``; x: (N, in_features) -> (N, out_features). No bias."""

    def __init__(self, in_features: int, out_features: int, num_tasks: int, density: float, generator=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_masked((out_features, in_features), num_tasks, density, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight())


class MaskedConv2d(_MaskedMixin, nn.Module):
    """2-D convolution with a per-task supermask; x: (N, C_in, H, W) -> (N, C_out, H', W'). No bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_tasks: int,
        density: float,
        stride: int = 1,
        padding: int = 0,
        generator=None,
    ):
        super().__init__()
        self.stride, self.padding = stride, padding
        self._init_masked((out_channels, in_channels, kernel_size, kernel_size), num_tasks, density, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), stride=self.stride, padding=self.padding)


class MultitaskNonAffineBN(nn.Module):
    """One ``BatchNorm{1,2}d(affine=False)`` per task: running statistics are never shared."""

    def __init__(self, num_features: int, num_tasks: int, dims: int = 2):
        super().__init__()
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.bns = nn.ModuleList([bn(num_features, affine=False) for _ in range(num_tasks)])
        self.task = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.task](x)


class MaskedMLP(nn.Module):
    """``sizes[0] -> ... -> sizes[-1]`` of :class:`MaskedLinear` with ReLU between; shared head.

    Layers are ``layer1 .. layerL`` so mask names read ``layer1.weight``. x: (N, sizes[0]) -> (N, sizes[-1]).
    For text the input is a frozen encoder's pooled features, which makes this the masked head.
    """

    def __init__(self, sizes: tuple[int, ...], num_tasks: int, density: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.sizes = tuple(sizes)
        for i in range(len(sizes) - 1):
            self.add_module(f"layer{i + 1}", MaskedLinear(sizes[i], sizes[i + 1], num_tasks, density, g))
        self.num_tasks = num_tasks

    def masked_layers(self) -> dict[str, MaskedLinear]:
        """Mask name (``layerI.weight``) -> layer, in forward order."""
        return {f"{n}.weight": m for n, m in self.named_children() if isinstance(m, MaskedLinear)}

    def set_task(self, task: int) -> None:
        for m in self.modules():
            if hasattr(m, "task"):
                m.task = task

    def set_alphas(self, alphas: torch.Tensor | None) -> None:
        for m in self.masked_layers().values():
            m.alphas = alphas

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-ReLU output of the last hidden layer (KKT's representation), (N, sizes[-2])."""
        layers = list(self.masked_layers().values())
        h = x
        for i, layer in enumerate(layers[:-1]):
            h = layer(h)
            if i < len(layers) - 2:
                h = F.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked_layers()[f"layer{len(self.sizes) - 1}.weight"](F.relu(self.features(x)))


class DenseMLP(nn.Module):
    """The finetuning baseline: the same widths as :class:`MaskedMLP`, plain ``nn.Linear``, one shared head."""

    def __init__(self, sizes: tuple[int, ...], seed: int = 0):
        super().__init__()
        layers: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            for i in range(len(sizes) - 1):
                layers.append(nn.Linear(sizes[i], sizes[i + 1]))
                if i < len(sizes) - 2:
                    layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
