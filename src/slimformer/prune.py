"""Pruning: structured (heads and FFN neurons physically removed) and dynamic (gradual magnitude).

Structured pruning is a plan, then an application. Importance is measured on validation
data (:mod:`slimformer.importance`); the plan (JSON: layer, kind, indices, scores) names what goes; small per-module
functions apply it (``model.prune_heads`` and ``prune_linear_layer``), leaving smaller weight
matrices that a dense kernel runs faster. Hugging Face configs record pruned heads per
layer (``config.pruned_heads``) but only one ``intermediate_size``, so the same number of FFN
neurons is removed from every layer (each layer picks its own least important ones); the
saved directory then reloads with ``from_pretrained`` at the reduced shapes.

Dynamic pruning zeroes individual weights by magnitude on the cubic schedule of Zhu & Gupta
(2017) while a KD fine-tune recovers (schedule, masks and pruner: :mod:`slimformer.sparsity`).
The zeros shrink the compressed file, not the dense kernels' work: no latency gain is claimed for it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from slimformer.adapters import adapter_for, shrink_linear
from slimformer.config import PruneDynamicConfig, PruneStructuredConfig
from slimformer.errors import CheckpointError, ConfigError
from slimformer.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE, importance_batches
from slimformer.io import write_json
from slimformer.kd import KDLoss, kd_fingerprint, kd_fit
from slimformer.logit_cache import load_teacher_logits
from slimformer.measure import file_sizes, percentiles, time_calls
from slimformer.model_stats import macs_per_sequence, model_metrics
from slimformer.modeling import count_parameters, load_classifier, load_tokenizer, save_model
from slimformer.sparsity import NOTE, MagnitudePruner, prunable_weights, schedule_end, sparsity_report
from slimformer.training import Batch, Encoded, collate, encode_splits, epoch_steps, evaluate, world

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
    cache effects hit every model alike. The timer and percentiles are :mod:`slimformer.measure`'s.
    """
    args = [(batch.input_ids, batch.attention_mask)]
    calls = {name: (lambda ids, mask, m=m: m(input_ids=ids, attention_mask=mask)) for name, m in models.items()}
    for m in models.values():
        m.eval()
        for _ in range(warmup):
            m(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name] += time_calls(calls[name], args)
    return {
        name: {k: round(v, 3) for k, v in percentiles(ts, (50, 90)).items()} | {"mean_ms": round(float(np.mean(ts)), 3)}
        for name, ts in times.items()
    }


def latency_batch(data: Encoded, pad_id: int, size: int = 32) -> Batch:
    """The first ``size`` test sentences, padded to the longest: the same real batch for every model."""
    return collate(data, list(range(min(size, len(data)))), pad_id)


# ------------------------------------------------------------------------------ structured stage


def _kd_inputs(
    model_dir: Path, data_dir: Path, logits_path: str | Path, max_length: int, section: str
) -> tuple[PreTrainedModel, Any, dict[str, torch.Tensor], dict[str, Encoded]]:
    """What a pruning stage starts from: the model and its tokenizer, the teacher logits, the encoded splits."""
    model = load_classifier(model_dir)
    tokenizer = load_tokenizer(model_dir)
    logits = load_teacher_logits(logits_path, data_dir, max_length, f"{section}.train.max_length")
    return model, tokenizer, logits, encode_splits(tokenizer, data_dir, max_length)


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
    model, tokenizer, logits, splits = _kd_inputs(student_dir, data_dir, logits_path, t.max_length, "prune_structured")
    pad = tokenizer.pad_token_id
    before_model = copy.deepcopy(model)
    before = model_metrics(model, splits, logits, pad, t.eval_batch_size, t.max_length) | structure(model)

    batches = importance_batches(splits["val"], pad, t.eval_batch_size, cfg.importance_batches, t.seed)
    cache: dict = {}  # gradient head scores and Taylor neuron scores share one backward pass
    head_scores = HEAD_IMPORTANCE[cfg.head_importance](model, batches, cache)
    neuron_scores = NEURON_IMPORTANCE[cfg.neuron_importance](model, batches, cache)
    plan = make_plan(model, head_scores, neuron_scores, cfg)
    apply_plan(model, plan)
    model.zero_grad(set_to_none=True)
    no_recovery = {s: evaluate(model, splits[s], t.eval_batch_size, pad)["accuracy"] for s in ("val", "test")}
    unrecovered = {k: v.detach().clone() for k, v in model.state_dict().items()}

    loss = KDLoss(logits["train"], cfg.alpha, cfg.temperature)
    fingerprint = kd_fingerprint(t, cfg.to_dict(), student_dir, logits_path)
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
    model, tokenizer, logits, splits = _kd_inputs(pruned_dir, data_dir, logits_path, t.max_length, "prune_dynamic")
    pad = tokenizer.pad_token_id
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
    fingerprint = kd_fingerprint(t, cfg.to_dict(), pruned_dir, logits_path)
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
