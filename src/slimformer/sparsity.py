"""Gradual magnitude pruning (Zhu & Gupta 2017): the cubic schedule, magnitude masks, the pruner, sparsity.

The zeros shrink the compressed file, not the dense kernels' work: no latency gain is claimed for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from slimformer.adapters import adapter_for
from slimformer.config import PruneDynamicConfig
from slimformer.errors import ConfigError


def cubic_sparsity(step: int, initial: float, final: float, begin: int, end: int) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3``, clamped to [t0, t0 + n*dt]."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1 - (step - begin) / (end - begin)) ** 3


def prunable_weights(
    model: PreTrainedModel, prune_embeddings: bool = False, prune_classifier: bool = False
) -> dict[str, nn.Parameter]:
    """Weights GMP may zero, by parameter name: every linear weight in the blocks, plus opt-ins.

    ``prune_classifier`` adds the linear maps outside the blocks (pooler and classifier);
    ``prune_embeddings`` adds the embedding tables. Biases and LayerNorms are never pruned.
    """
    inside = {id(lin.weight) for layer in adapter_for(model).layers(model) for lin in layer.linears().values()}
    extra: set[int] = set()
    for m in model.modules():
        if prune_classifier and isinstance(m, nn.Linear) and id(m.weight) not in inside:
            extra.add(id(m.weight))
        if prune_embeddings and isinstance(m, nn.Embedding):
            extra.add(id(m.weight))
    return {n: p for n, p in model.named_parameters() if id(p) in inside | extra}


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, ranking: str) -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing the ``round(sparsity * n)`` smallest-magnitude weights.

    ``ranking="global"`` ranks all weights together (one threshold), ``"per_layer"`` each tensor.
    Ties are broken by position, so the masks are deterministic.
    """
    def lowest(flat: torch.Tensor) -> torch.Tensor:
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat.abs(), stable=True)[: round(sparsity * flat.numel())]] = False
        return keep

    if ranking == "per_layer":
        return {n: lowest(w.detach().flatten()).view_as(w) for n, w in weights.items()}
    flat = lowest(torch.cat([w.detach().flatten() for w in weights.values()]))
    out, start = {}, 0
    for n, w in weights.items():
        out[n] = flat[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


class MagnitudePruner:
    """Gradual magnitude pruning as an ``on_step(step)`` callback of the training loop.

    At every ``frequency``-th step in ``[begin, end]`` masks are recomputed at the scheduled
    sparsity; after every optimizer step the current masks are re-applied, because AdamW's
    momentum would otherwise revive pruned weights. A resumed run rebuilds its masks from
    the weights (already-zero weights are the smallest, so they stay pruned).
    """

    def __init__(
        self, weights: dict[str, nn.Parameter], initial: float, final: float, begin: int, end: int,
        frequency: int, ranking: str,
    ) -> None:  # fmt: skip
        self.weights, self.initial, self.final = weights, initial, final
        self.begin, self.end, self.frequency, self.ranking = begin, end, frequency, ranking
        self.masks: dict[str, torch.Tensor] | None = None
        self.target = 0.0

    def __call__(self, step: int) -> None:
        if step < self.begin:
            return
        scheduled = step <= self.end and ((step - self.begin) % self.frequency == 0 or step == self.end)
        if self.masks is None or scheduled:
            self.target = cubic_sparsity(step, self.initial, self.final, self.begin, self.end)
            self.masks = magnitude_masks(self.weights, self.target, self.ranking)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for n, w in self.weights.items():
            w.mul_(self.masks[n])

    def finalize(self) -> None:
        """Prune to the final sparsity and drop the masks: the zeros are now plain weights."""
        self.target = self.final
        self.masks = magnitude_masks(self.weights, self.final, self.ranking)
        self.apply()
        self.masks = None


def sparsity_report(model: PreTrainedModel, weights: dict[str, nn.Parameter]) -> dict[str, Any]:
    """Fraction of exact zeros: per block (layer), per prunable tensor group outside blocks, overall."""
    adapter = adapter_for(model)
    block_of = {
        id(lin.weight): f"layer_{i}"
        for i, layer in enumerate(adapter.layers(model)) for lin in layer.linears().values()
    }  # fmt: skip
    zeros: dict[str, list[int]] = {}
    for n, w in weights.items():
        group = block_of.get(id(w), n.rsplit(".", 1)[0])
        z = zeros.setdefault(group, [0, 0])
        z[0] += int((w == 0).sum())
        z[1] += w.numel()
    total_zero = sum(z for z, _ in zeros.values())
    total = sum(n for _, n in zeros.values())
    all_params = sum(p.numel() for p in model.parameters())
    all_zero = sum(int((p == 0).sum()) for p in model.parameters())
    return {
        "overall": total_zero / total,
        "per_layer": {g: z / n for g, (z, n) in zeros.items()},
        "prunable_weights": total,
        "zero_weights": total_zero,
        "all_params_sparsity": all_zero / all_params,
    }


NOTE = (
    "Unstructured sparsity: the zeroed weights stay in dense matrices, so dense CPU kernels do the same "
    "work and latency does not improve; the gain is in the compressed file size (zip_bytes) and, later, "
    "in sparse-aware runtimes. Structured pruning (prune_structured) is what makes the model faster."
)


def schedule_end(cfg: PruneDynamicConfig, steps_per_epoch: int) -> int:
    """The last sparsity update: ``end_step``, or 3/4 of the first epoch when it is 0.

    The ramp must end within the first epoch: the trainer keeps the best epoch's weights,
    and every epoch it can pick must already be at the final sparsity.
    """
    end = cfg.end_step or max(cfg.begin_step + 1, round(0.75 * steps_per_epoch))
    if end > steps_per_epoch:
        which = "end_step" if cfg.end_step else "begin_step"
        raise ConfigError(
            f"prune_dynamic.{which}: the sparsity ramp would end at step {end}; allowed: at most {steps_per_epoch} "
            "(the steps of one epoch), so that every epoch the trainer can keep is at the final sparsity"
        )
    return end
