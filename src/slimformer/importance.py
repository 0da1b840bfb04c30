"""Importance of attention heads and FFN neurons, measured on validation batches.

Each measure is a registry entry ``fn(model, batches, cache) -> per layer scores`` (higher =
more important): gradient (Michel et al. 2019) and entropy for heads, first-order Taylor
(Molchanov et al. 2017) and weight magnitude for neurons. Structured pruning ranks by them;
the report plots the entropy of every head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import transformers
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from slimformer.adapters import adapter_for, ffn_magnitudes
from slimformer.training import Batch, Encoded, batch_order, collate, progress


def importance_batches(data: Encoded, pad_id: int, batch_size: int, max_batches: int, seed: int) -> list[Batch]:
    """Batches of ``data`` (all, or a seeded random ``max_batches`` of them)."""
    order = batch_order([len(x) for x in data.input_ids], batch_size, max_batches > 0, seed, True)
    if max_batches > 0:
        order = order[:max_batches]
    return [collate(data, idx, pad_id) for idx in order]


@contextlib.contextmanager
def gates(model: PreTrainedModel) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Multiplicative gates, all ones, on every head's context and every FFN neuron's activation.

    Yields ``(head_gates, neuron_gates)``: per layer tensors ``(heads,)`` and ``(intermediate,)``.
    Gating the input of the attention output projection is the same as Michel et al.'s
    head mask on the attention probabilities, but works with SDPA and with layers that
    already lost heads (HF's ``head_mask`` argument needs the same head count in every layer).
    """
    head_g, neuron_g, handles = [], [], []
    for layer in adapter_for(model).layers(model):
        hg = torch.ones(layer.num_heads, requires_grad=True)
        ng = torch.ones(layer.ffn_in.out_features, requires_grad=True)
        handles.append(layer.attn_out.register_forward_pre_hook(_gate_hook(hg, layer.head_size)))
        handles.append(layer.ffn_out.register_forward_pre_hook(_gate_hook(ng, 1)))
        head_g.append(hg)
        neuron_g.append(ng)
    try:
        yield head_g, neuron_g
    finally:
        for h in handles:
            h.remove()


def _gate_hook(gate: torch.Tensor, group: int):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (args[0] * gate.repeat_interleave(group),)  # (batch, seq, units * group)

    return hook


def gate_gradients(
    model: PreTrainedModel, batches: list[Batch], cache: dict | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Sum over batches of ``|dL/d gate|`` (L = cross-entropy on the labels) for heads and neurons.

    For a neuron this is ``|sum_tokens activation * dL/d activation|``: first-order Taylor importance.
    One backward pass gives both; ``cache`` (a dict shared by one scoring run) keeps the result
    so that head and neuron scores do not pay for it twice.
    """
    if cache is not None and "gate_gradients" in cache:
        return cache["gate_gradients"]
    model.eval()  # importance of the deterministic network: no dropout
    with gates(model) as (head_g, neuron_g):
        acc_h = [torch.zeros_like(g) for g in head_g]
        acc_n = [torch.zeros_like(g) for g in neuron_g]
        for b in progress(batches, desc="importance (gradients)", unit="batch"):
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            grads = torch.autograd.grad(F.cross_entropy(logits, b.labels), head_g + neuron_g)
            for a, g in zip(acc_h + acc_n, grads, strict=True):
                a += g.abs()
    if cache is not None:
        cache["gate_gradients"] = (acc_h, acc_n)
    return acc_h, acc_n


def gradient_head_importance(
    model: PreTrainedModel, batches: list[Batch], cache: dict | None = None
) -> list[torch.Tensor]:
    """Michel et al. (2019): ``sum |dL/d head_gate|``, normalised to unit L2 norm in each layer.

    Per layer ``(heads,)``; the normalisation makes scores comparable across layers for a
    global ranking, as in the paper.
    """
    heads, _ = gate_gradients(model, batches, cache)
    return [h / h.norm().clamp_min(1e-12) for h in heads]


@torch.inference_mode()
def entropy_head_importance(
    model: PreTrainedModel, batches: list[Batch], cache: dict | None = None
) -> list[torch.Tensor]:
    """``1 - mean normalised attention entropy`` per head ``(heads,)``: focused heads score high.

    Entropy of each real query's attention row is divided by ``log(real tokens)``, so a head
    attending uniformly scores 0 whatever the sentence length.
    """
    model.eval()
    sums: list[torch.Tensor] | None = None
    count = 0.0
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # SDPA falls back to eager for attentions: expected
    try:
        for b in progress(batches, desc="head importance (entropy)", unit="batch"):
            out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_attentions=True)
            mask = b.attention_mask.float()  # (batch, seq)
            norm = mask.sum(-1).clamp_min(2).log()[:, None, None]  # (batch, 1, 1)
            per_layer = []
            for p in out.attentions:  # (batch, heads, seq, seq)
                ent = -(p * p.clamp_min(1e-12).log()).sum(-1) / norm  # (batch, heads, seq)
                per_layer.append((ent * mask[:, None, :]).sum((0, 2)))  # (heads,)
            sums = per_layer if sums is None else [s + x for s, x in zip(sums, per_layer, strict=True)]
            count += float(mask.sum())
    finally:
        transformers.logging.set_verbosity(verbosity)
    return [1 - s / count for s in sums]


def taylor_neuron_importance(
    model: PreTrainedModel, batches: list[Batch], cache: dict | None = None
) -> list[torch.Tensor]:
    """``sum |activation x gradient|`` per FFN neuron ``(intermediate,)`` (Molchanov et al. 2017)."""
    _, neurons = gate_gradients(model, batches, cache)
    return neurons


def magnitude_neuron_importance(
    model: PreTrainedModel, batches: list[Batch], cache: dict | None = None
) -> list[torch.Tensor]:
    """``||W_in[n, :]|| * ||W_out[:, n]||`` per FFN neuron ``(intermediate,)``; needs no data."""
    return [ffn_magnitudes(layer) for layer in adapter_for(model).layers(model)]


# Each measure: fn(model, validation batches, cache) -> per layer scores, higher = more important.
Importance = Callable[[PreTrainedModel, list[Batch], dict | None], list[torch.Tensor]]
HEAD_IMPORTANCE: dict[str, Importance] = {
    "gradient": gradient_head_importance,
    "entropy": entropy_head_importance,
}
NEURON_IMPORTANCE: dict[str, Importance] = {
    "taylor": taylor_neuron_importance,
    "magnitude": magnitude_neuron_importance,
}
