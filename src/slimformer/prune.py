"""Pruning: structured (heads and FFN neurons physically removed) and dynamic (gradual magnitude).

Structured pruning is a plan, then an application. Importance is measured on validation
data; the plan (JSON: layer, kind, indices, scores) names what goes; small per-module
functions apply it (``model.prune_heads`` and ``prune_linear_layer``), leaving smaller weight
matrices that a dense kernel runs faster. Hugging Face configs record pruned heads per
layer (``config.pruned_heads``) but only one ``intermediate_size``, so the same number of FFN
neurons is removed from every layer (each layer picks its own least important ones); the
saved directory then reloads with ``from_pretrained`` at the reduced shapes.

Dynamic pruning zeroes individual weights by magnitude on the cubic schedule of Zhu & Gupta
(2017) while a KD fine-tune recovers. The zeros shrink the compressed file, not the dense
kernels' work: no latency gain is claimed for it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from slimformer.adapters import adapter_for, ffn_magnitudes, shrink_linear
from slimformer.config import PruneDynamicConfig, PruneStructuredConfig
from slimformer.errors import CheckpointError, ConfigError
from slimformer.io import sha256_file, write_json
from slimformer.kd import KDLoss, kd_fit, load_teacher_logits
from slimformer.model_stats import macs_per_sequence, model_metrics
from slimformer.modeling import count_parameters, load_classifier, load_tokenizer, save_model
from slimformer.training import (
    Batch, Encoded, batch_order, collate, encode_splits, epoch_steps, evaluate, progress, run_fingerprint, world,
)  # fmt: skip

# ------------------------------------------------------------------------------ importance


def _val_batches(data: Encoded, pad_id: int, batch_size: int, max_batches: int, seed: int) -> list[Batch]:
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

# ------------------------------------------------------------------------------ plan


def _lowest(scores: torch.Tensor, k: int) -> list[int]:
    """Positions of the ``k`` smallest scores; ties broken by position (deterministic)."""
    return sorted(torch.argsort(scores, stable=True)[:k].tolist())


def _round(xs: torch.Tensor) -> list[float]:
    return [float(f"{x:.6g}") for x in xs.tolist()]


def plan_heads(
    model: PreTrainedModel, scores: list[torch.Tensor], fraction: float, scope: str
) -> list[list[int]]:
    """Positions (in each layer's present heads) to remove; every layer keeps at least one head."""
    layers = adapter_for(model).layers(model)
    key = "prune_structured.heads_fraction"
    if scope == "per_layer":
        out = []
        for i, layer in enumerate(layers):
            k = round(fraction * layer.num_heads)
            if k >= layer.num_heads:
                limit = (layer.num_heads - 0.5) / layer.num_heads
                raise ConfigError(
                    f"{key}: got {fraction}, which would remove all {layer.num_heads} heads of layer {i}; "
                    f"allowed: a fraction that leaves every layer a head (< {limit:.3f})"
                )
            out.append(_lowest(scores[i], k))
        return out
    total = sum(layer.num_heads for layer in layers)
    k = round(fraction * total)
    if k > total - len(layers):
        raise ConfigError(
            f"{key}: got {fraction}, which would remove {k} of {total} heads; allowed: at most "
            f"{total - len(layers)} (every one of the {len(layers)} layers keeps a head)"
        )
    flat = sorted((float(s), i, h) for i, sc in enumerate(scores) for h, s in enumerate(sc))
    left = [layer.num_heads for layer in layers]
    chosen: list[list[int]] = [[] for _ in layers]
    for _, i, h in flat:
        if sum(map(len, chosen)) == k:
            break
        if left[i] > 1:  # never empty a layer: its attention block would have no output
            chosen[i].append(h)
            left[i] -= 1
    return [sorted(c) for c in chosen]


def plan_neurons(model: PreTrainedModel, scores: list[torch.Tensor], fraction: float) -> list[list[int]]:
    """The same number of lowest-scoring FFN neurons in every layer (HF stores one intermediate_size)."""
    sizes = {layer.ffn_in.out_features for layer in adapter_for(model).layers(model)}
    if len(sizes) != 1:
        raise CheckpointError(f"FFN widths differ between layers ({sorted(sizes)}); cannot be saved as one config")
    (size,) = sizes
    k = round(fraction * size)
    if k >= size:
        raise ConfigError(
            f"prune_structured.neurons_fraction: got {fraction}, which would remove all {size} FFN neurons "
            "of every layer; allowed: a smaller fraction"
        )
    return [_lowest(s, k) for s in scores]


def make_plan(
    model: PreTrainedModel, head_scores: list[torch.Tensor], neuron_scores: list[torch.Tensor],
    cfg: PruneStructuredConfig,
) -> dict[str, Any]:  # fmt: skip
    """The JSON plan: per layer, which heads (config numbering) and FFN neurons go, with every score."""
    layers = adapter_for(model).layers(model)
    heads = plan_heads(model, head_scores, cfg.heads_fraction, cfg.heads_scope)
    neurons = plan_neurons(model, neuron_scores, cfg.neurons_fraction)
    entries = []
    for i, layer in enumerate(layers):
        entries.append({
            "layer": i, "kind": "heads", "indices": [layer.head_ids[p] for p in heads[i]],
            "head_ids": list(layer.head_ids), "scores": _round(head_scores[i]),
        })  # fmt: skip
        entries.append({"layer": i, "kind": "neurons", "indices": neurons[i], "scores": _round(neuron_scores[i])})
    return {
        "version": 1,
        "model_type": model.config.model_type,
        "head_importance": cfg.head_importance,
        "neuron_importance": cfg.neuron_importance,
        "heads_scope": cfg.heads_scope,
        "heads_fraction": cfg.heads_fraction,
        "neurons_fraction": cfg.neurons_fraction,
        "entries": entries,
    }


# ------------------------------------------------------------------------------ application


def _layer(model: PreTrainedModel, index: int):
    layers = adapter_for(model).layers(model)
    if not 0 <= index < len(layers):
        raise ConfigError(f"prune plan: layer {index} does not exist; the model has layers 0..{len(layers) - 1}")
    return layers[index]


def prune_layer_heads(model: PreTrainedModel, index: int, heads: Sequence[int]) -> None:
    """Remove heads (config numbering) of layer ``index``: q/k/v rows and output columns go."""
    layer = _layer(model, index)
    missing = sorted(set(heads) - set(layer.head_ids))
    if missing:
        raise ConfigError(f"prune plan: layer {index} has no head {missing[0]}; present: {list(layer.head_ids)}")
    if len(set(heads)) >= layer.num_heads:
        raise ConfigError(f"prune plan: removing every head of layer {index} is not allowed")
    if heads:
        model.prune_heads({index: list(heads)})


def prune_layer_neurons(model: PreTrainedModel, index: int, neurons: Sequence[int]) -> None:
    """Remove FFN neurons of layer ``index``: rows of the up-projection, columns of the down-projection."""
    layer = _layer(model, index)
    size = layer.ffn_in.out_features
    bad = [n for n in neurons if not 0 <= n < size]
    if bad:
        raise ConfigError(f"prune plan: layer {index} has no FFN neuron {bad[0]} (it has {size})")
    keep = torch.tensor(sorted(set(range(size)) - set(neurons)), dtype=torch.long)
    if len(keep) == 0:
        raise ConfigError(f"prune plan: removing every FFN neuron of layer {index} is not allowed")
    shrink_linear(layer.ffn_in, keep, dim=0)
    shrink_linear(layer.ffn_out, keep, dim=1)


APPLY: dict[str, Callable[[PreTrainedModel, int, Sequence[int]], None]] = {
    "heads": prune_layer_heads,
    "neurons": prune_layer_neurons,
}


def apply_plan(model: PreTrainedModel, plan: dict[str, Any]) -> PreTrainedModel:
    """Apply ``plan`` to ``model`` in place and record the new FFN width in its config."""
    for entry in plan["entries"]:
        if entry["kind"] not in APPLY:
            raise ConfigError(f"prune plan: unknown kind {entry['kind']!r}; allowed: {', '.join(APPLY)}")
        APPLY[entry["kind"]](model, int(entry["layer"]), [int(i) for i in entry["indices"]])
    adapter = adapter_for(model)
    sizes = {layer.ffn_in.out_features for layer in adapter.layers(model)}
    if len(sizes) != 1:
        raise ConfigError(f"prune plan: FFN widths would differ between layers ({sorted(sizes)}); HF configs hold one")
    setattr(model.config, adapter.ffn_key, sizes.pop())
    return model


def structure(model: PreTrainedModel) -> dict[str, Any]:
    """Heads and FFN neurons per layer and in total."""
    layers = adapter_for(model).layers(model)
    heads = [layer.num_heads for layer in layers]
    neurons = [layer.ffn_in.out_features for layer in layers]
    return {"heads": sum(heads), "neurons": sum(neurons), "heads_per_layer": heads, "neurons_per_layer": neurons}


# ------------------------------------------------------------------------------ latency


@torch.inference_mode()
def measure_latency(models: dict[str, nn.Module], batch: Batch, rounds: int, warmup: int = 3) -> dict[str, dict]:
    """Forward-pass latency (ms) of each model on the same ``batch``, timed in interleaved rounds.

    Interleaving (and reversing the order every other round) makes machine drift and
    cache effects hit every model alike.
    """
    for m in models.values():
        m.eval()
        for _ in range(warmup):
            m(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            models[name](input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {
        name: {
            "p50_ms": round(statistics.median(ts), 3),
            "p90_ms": round(float(np.percentile(ts, 90)), 3),
            "mean_ms": round(statistics.fmean(ts), 3),
        }
        for name, ts in times.items()
    }


def latency_batch(data: Encoded, pad_id: int, size: int = 32) -> Batch:
    """The first ``size`` test sentences, padded to the longest: the same real batch for every model."""
    return collate(data, list(range(min(size, len(data)))), pad_id)


# ------------------------------------------------------------------------------ structured stage


def prune_structured(
    cfg: PruneStructuredConfig,
    student_dir: str | Path,
    data_dir: str | Path,
    logits_path: str | Path,
    out_dir: str | Path,
    plan_path: str | Path,
    ckpt_dir: str | Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Score, plan, remove heads and FFN neurons, recover with KD; write model, plan and metrics."""
    t_start = time.perf_counter()
    student_dir, data_dir, t = Path(student_dir), Path(data_dir), cfg.train
    model = load_classifier(student_dir)
    tokenizer = load_tokenizer(student_dir)
    pad = tokenizer.pad_token_id
    logits = load_teacher_logits(logits_path, data_dir, t.max_length, "prune_structured.train.max_length")
    splits = encode_splits(tokenizer, data_dir, t.max_length)
    before_model = copy.deepcopy(model)
    before = model_metrics(model, splits, logits, pad, t.eval_batch_size, t.max_length) | structure(model)

    batches = _val_batches(splits["val"], pad, t.eval_batch_size, cfg.importance_batches, t.seed)
    cache: dict = {}  # gradient head scores and Taylor neuron scores share one backward pass
    head_scores = HEAD_IMPORTANCE[cfg.head_importance](model, batches, cache)
    neuron_scores = NEURON_IMPORTANCE[cfg.neuron_importance](model, batches, cache)
    plan = make_plan(model, head_scores, neuron_scores, cfg)
    apply_plan(model, plan)
    model.zero_grad(set_to_none=True)
    no_recovery = {s: evaluate(model, splits[s], t.eval_batch_size, pad)["accuracy"] for s in ("val", "test")}
    unrecovered = {k: v.detach().clone() for k, v in model.state_dict().items()}

    loss = KDLoss(logits["train"], cfg.alpha, cfg.temperature)
    fingerprint = run_fingerprint(
        t, cfg.to_dict(), sha256_file(student_dir / "model.safetensors"), sha256_file(logits_path), world()[1]
    )
    result = kd_fit(model, splits, loss, t, pad, ckpt_dir, fingerprint, "prune_structured", on_epoch)
    if world()[0] != 0:
        return {}
    # Model selection on validation, as for epochs: the pruned model before recovery is a candidate too.
    recovery_kept = result.best_val.get("val_accuracy", -1.0) >= no_recovery["val"]
    if not recovery_kept:
        model.load_state_dict(unrecovered)
    after = model_metrics(model, splits, logits, pad, t.eval_batch_size, t.max_length) | structure(model)
    batch = latency_batch(splits["test"], pad)
    lat = measure_latency({"before": before_model, "after": model}, batch, cfg.latency_rounds)
    seq = batch.input_ids.shape[1]
    macs_before, macs_after = macs_per_sequence(before_model, seq), macs_per_sequence(model, seq)
    write_json(plan_path, plan)
    save_model(model, tokenizer, out_dir, extra={"stage": "prune_structured", "plan": Path(plan_path).name})
    reload_diff = _reload_max_diff(model, out_dir, batch)
    return {
        "before": before,
        "after": after,
        "test_accuracy_before_recovery": no_recovery["test"],
        "val_accuracy_before_recovery": no_recovery["val"],
        "recovery_kept": recovery_kept,
        "removed": {
            "heads": before["heads"] - after["heads"],
            "heads_fraction": 1 - after["heads"] / before["heads"],
            "neurons": before["neurons"] - after["neurons"],
            "neurons_fraction": 1 - after["neurons"] / before["neurons"],
            "params_fraction": 1 - after["params"]["total"] / before["params"]["total"],
            "non_embedding_params_fraction": 1 - after["params"]["non_embedding"] / before["params"]["non_embedding"],
        },
        "latency_batch32": {
            "batch_size": int(batch.input_ids.shape[0]), "seq_len": seq, "rounds": cfg.latency_rounds,
            "threads": torch.get_num_threads(), "before": lat["before"], "after": lat["after"],
            "latency_ratio": round(lat["after"]["p50_ms"] / lat["before"]["p50_ms"], 4),
            "flops_ratio": round(macs_after / macs_before, 4),
        },  # fmt: skip
        "reload_max_abs_diff": reload_diff,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "resumed_from_epoch": result.resumed_from_epoch,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


@torch.inference_mode()
def _reload_max_diff(model: PreTrainedModel, out_dir: str | Path, batch: Batch) -> float:
    """Reload the saved directory with ``from_pretrained`` and compare logits on ``batch``."""
    again = load_classifier(out_dir)
    a = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    b = again(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    diff = float((a - b).abs().max())
    if diff > 1e-4:
        raise CheckpointError(f"{out_dir}: reloaded model differs from the pruned one (max |diff| {diff:.2e})")
    return diff


# ------------------------------------------------------------------------------ gradual magnitude pruning


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


def file_sizes(path: str | Path) -> dict[str, int]:
    """Bytes of a file on disk and inside a deflate-compressed zip archive."""
    path = Path(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(path, path.name)
    return {"dense_bytes": path.stat().st_size, "zip_bytes": len(buf.getvalue())}


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


def prune_dynamic(
    cfg: PruneDynamicConfig,
    pruned_dir: str | Path,
    data_dir: str | Path,
    logits_path: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Gradual magnitude pruning during a KD fine-tune; masks made permanent; writes model and metrics."""
    t_start = time.perf_counter()
    pruned_dir, data_dir, t = Path(pruned_dir), Path(data_dir), cfg.train
    model = load_classifier(pruned_dir)
    tokenizer = load_tokenizer(pruned_dir)
    pad = tokenizer.pad_token_id
    logits = load_teacher_logits(logits_path, data_dir, t.max_length, "prune_dynamic.train.max_length")
    splits = encode_splits(tokenizer, data_dir, t.max_length)
    before = model_metrics(model, splits, logits, pad, t.eval_batch_size, t.max_length)

    end = schedule_end(cfg, epoch_steps(len(splits["train"]), t.batch_size))
    weights = prunable_weights(model, cfg.prune_embeddings, cfg.prune_classifier)
    pruner = MagnitudePruner(
        weights, cfg.initial_sparsity, cfg.final_sparsity, cfg.begin_step, end, cfg.frequency, cfg.ranking
    )

    def log(epoch: int, metrics: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(epoch, metrics | {"sparsity": sparsity_report(model, weights)["overall"]})

    loss = KDLoss(logits["train"], cfg.alpha, cfg.temperature)
    fingerprint = run_fingerprint(
        t, cfg.to_dict(), sha256_file(pruned_dir / "model.safetensors"), sha256_file(logits_path), world()[1]
    )
    result = kd_fit(model, splits, loss, t, pad, ckpt_dir, fingerprint, "prune_dynamic", log, on_step=pruner)
    pruner.finalize()
    if world()[0] != 0:
        return {}
    after = model_metrics(model, splits, logits, pad, t.eval_batch_size, t.max_length)
    save_model(model, tokenizer, out_dir, extra={"stage": "prune_dynamic", "final_sparsity": cfg.final_sparsity})
    return {
        "before": before,
        "after": after,
        "sparsity": sparsity_report(model, weights),
        "target_sparsity": cfg.final_sparsity,
        "schedule": {"initial": cfg.initial_sparsity, "final": cfg.final_sparsity, "begin_step": cfg.begin_step,
                     "end_step": end, "frequency": cfg.frequency, "ranking": cfg.ranking},
        "size_before": file_sizes(pruned_dir / "model.safetensors"),
        "size_after": file_sizes(Path(out_dir) / "model.safetensors"),
        "params": count_parameters(model),
        "note": NOTE,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "resumed_from_epoch": result.resumed_from_epoch,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
