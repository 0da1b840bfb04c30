"""Knowledge distillation: a compound-scaled student learns the teacher's soft targets.

* The student is the teacher's config scaled by depth and width multipliers; where widths
  match it starts from named teacher layers, embeddings and head (DistilBERT-style).
* The loss and its fit are :mod:`slimformer.kd`'s, the cached teacher logits (and their
  augmented sentences) :mod:`slimformer.logit_cache`'s; vocabulary trimming is :mod:`slimformer.vocab`'s.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from slimformer.adapters import adapter_for, ffn_magnitudes, shrink_linear
from slimformer.config import DistillConfig
from slimformer.data import load_labels, load_split
from slimformer.errors import ConfigError
from slimformer.kd import KDLoss, kd_fingerprint, kd_fit
from slimformer.logit_cache import augmented_rows, load_teacher_logits
from slimformer.model_stats import macs_per_sequence, model_metrics
from slimformer.modeling import count_parameters, load_classifier, load_tokenizer, save_model
from slimformer.seed import set_seed
from slimformer.training import Encoded, encode_splits, world
from slimformer.vocab import trim_unsupported, trim_vocab, vocab_effect

# ------------------------------------------------------------------------------ student construction


def student_config(teacher_config, depth_multiplier: float, width_multiplier: float):
    """The teacher's config scaled down: layers by depth, heads (fixed head size) and FFN by width."""
    a = adapter_for(teacher_config)
    depth_key, hidden_key, heads_key, ffn_key = a.depth_key, a.hidden_key, a.heads_key, a.ffn_key
    cfg = copy.deepcopy(teacher_config)
    depth = getattr(cfg, depth_key)
    setattr(cfg, depth_key, max(1, round(depth * depth_multiplier)))
    if width_multiplier != 1:
        heads, hidden = getattr(cfg, heads_key), getattr(cfg, hidden_key)
        new_heads = max(1, round(heads * width_multiplier))
        setattr(cfg, heads_key, new_heads)
        setattr(cfg, hidden_key, new_heads * (hidden // heads))
        setattr(cfg, ffn_key, max(1, round(getattr(cfg, ffn_key) * width_multiplier)))
    cfg.pruned_heads = {}
    return cfg


def resolve_init_layers(init_layers: Sequence[int], teacher_depth: int, student_depth: int) -> tuple[int, ...]:
    """Teacher layer per student layer: the configured list, or evenly spaced from bottom to top."""
    if not init_layers:
        if student_depth == 1:
            return (teacher_depth - 1,)
        return tuple(round(i * (teacher_depth - 1) / (student_depth - 1)) for i in range(student_depth))
    layers = tuple(init_layers)
    bad = [i for i in layers if i >= teacher_depth]
    if bad:
        raise ConfigError(
            f"distill.init_layers: got {list(layers)}, but the teacher has no layer {bad[0]}; "
            f"allowed: indices 0..{teacher_depth - 1}"
        )
    if len(layers) != student_depth:
        raise ConfigError(
            f"distill.init_layers: got {len(layers)} layers {list(layers)}, but the student has {student_depth} "
            "(distill.depth_multiplier); name one teacher layer per student layer, or [] for evenly spaced"
        )
    return layers


def copy_teacher_layers(student: PreTrainedModel, teacher: PreTrainedModel, layer_map: Sequence[int]) -> None:
    """Copy teacher block ``layer_map[i]`` into student block ``i``, and every non-block weight by name."""
    adapter = adapter_for(teacher)
    s_blocks, t_blocks = adapter.blocks(student), adapter.blocks(teacher)
    for i, j in enumerate(layer_map):
        s_blocks[i].load_state_dict(t_blocks[j].state_dict())
    prefix = next(n for n, m in student.named_modules() if m is s_blocks) + "."
    t_state = teacher.state_dict()
    rest = {k: t_state[k] for k in student.state_dict() if not k.startswith(prefix)}
    student.load_state_dict(rest, strict=False)


def keep_strongest_neurons(model: PreTrainedModel, fraction: float) -> int:
    """Keep ``round(fraction * width)`` FFN neurons in every layer, the largest by
    ``||W_in[n, :]|| * ||W_out[:, n]||``; record the new width in the config. Returns it."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    k = max(1, round(fraction * layers[0].ffn_in.out_features))
    for layer in layers:
        keep = ffn_magnitudes(layer).topk(k).indices.sort().values
        shrink_linear(layer.ffn_in, keep, dim=0)
        shrink_linear(layer.ffn_out, keep, dim=1)
    setattr(model.config, adapter.ffn_key, k)
    return k


def build_student(teacher: PreTrainedModel, cfg: DistillConfig) -> tuple[PreTrainedModel, tuple[int, ...] | None]:
    """A student per ``cfg`` and the teacher layers it was initialised from (None: random init).

    Where widths match, the student's blocks are copies of the named teacher blocks; with
    ``ffn_multiplier < 1`` each copy then keeps only its strongest FFN neurons.
    """
    adapter = adapter_for(teacher)
    config = student_config(teacher.config, cfg.depth_multiplier, cfg.width_multiplier)
    t_depth = getattr(teacher.config, adapter.depth_key)
    layer_map = resolve_init_layers(cfg.init_layers, t_depth, getattr(config, adapter.depth_key))
    set_seed(cfg.train.seed)
    widths_match = getattr(config, adapter.hidden_key) == getattr(teacher.config, adapter.hidden_key)
    if not widths_match:
        ffn = max(1, round(getattr(config, adapter.ffn_key) * cfg.ffn_multiplier))
        setattr(config, adapter.ffn_key, ffn)
        return AutoModelForSequenceClassification.from_config(config), None
    t_pruned = teacher.config.pruned_heads or {}  # a head-pruned teacher layer stays head-pruned in its copy
    config.pruned_heads = {i: list(t_pruned.get(j, [])) for i, j in enumerate(layer_map) if t_pruned.get(j)}
    student = AutoModelForSequenceClassification.from_config(config)
    copy_teacher_layers(student, teacher, layer_map)
    if cfg.ffn_multiplier < 1:
        keep_strongest_neurons(student, cfg.ffn_multiplier)
    return student, layer_map


def distill(
    cfg: DistillConfig,
    teacher_dir: str | Path,
    data_dir: str | Path,
    logits_path: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Build, (optionally) vocabulary-trim and distil a student; write it to ``out_dir``.

    Returns the metrics for ``distill.json`` (empty on non-zero ranks under DDP).
    """
    t_start = time.perf_counter()
    teacher_dir, data_dir, t = Path(teacher_dir), Path(data_dir), cfg.train
    labels = load_labels(data_dir)
    teacher = load_classifier(teacher_dir, labels)
    full_tok = tokenizer = load_tokenizer(teacher_dir)
    logits = load_teacher_logits(logits_path, data_dir, t.max_length, "distill.train.max_length")
    student, layer_map = build_student(teacher, cfg)
    keep, teacher_ids = None, None
    train_texts = [ex.text for ex in load_split(data_dir / "train.jsonl")]
    skipped = trim_unsupported(full_tok) if cfg.trim_vocab else None
    if cfg.trim_vocab and skipped is None:
        tokenizer, keep, full_rows = trim_vocab(student, full_tok, train_texts)
        teacher_ids = torch.tensor(keep)  # the live teacher (hidden-state loss) takes the old ids
    splits = encode_splits(tokenizer, data_dir, t.max_length)
    pad = tokenizer.pad_token_id
    aug_texts, aug_logits = augmented_rows(logits, logits_path, train_texts, cfg.augment, full_tok.mask_token)
    train, train_logits = splits["train"], logits["train"]
    if aug_texts:  # labels -1: soft targets only
        aug_ids = tokenizer(aug_texts, truncation=True, max_length=t.max_length)["input_ids"]
        train = Encoded(train.input_ids + aug_ids, train.labels + [-1] * len(aug_ids))
        train_logits = torch.cat([train_logits, aug_logits])
    loss = KDLoss(
        train_logits, cfg.alpha, cfg.temperature, cfg.hidden_weight,
        teacher if cfg.hidden_weight > 0 else None, layer_map or (), teacher_ids,
    )  # fmt: skip
    fingerprint = kd_fingerprint(t, cfg.to_dict(), teacher_dir, logits_path)
    result = kd_fit(student, splits | {"train": train}, loss, t, pad, ckpt_dir, fingerprint, "distill", on_epoch)
    if world()[0] != 0:
        return {}
    metrics = model_metrics(student, splits, logits, pad, t.eval_batch_size, t.max_length)
    teacher_params = count_parameters(teacher)
    metrics["teacher_params"] = teacher_params
    metrics["non_embedding_params_ratio"] = metrics["params"]["non_embedding"] / teacher_params["non_embedding"]
    metrics["teacher_flops_per_sequence"] = 2 * macs_per_sequence(teacher, t.max_length)
    metrics["init_layers"] = list(layer_map) if layer_map else "random"
    metrics["augment"] = {"copies": cfg.augment.copies, "rows": len(aug_texts), "train_rows": len(train)}
    metrics["vocab"] = {"trimmed": False, "vocab_size": len(tokenizer)}
    if skipped is not None:
        metrics["vocab"]["skipped"] = skipped
    if keep is not None:
        test = load_split(data_dir / "test.jsonl")
        metrics["vocab"] = vocab_effect(
            student, keep, full_rows, full_tok, tokenizer, test, t.max_length, t.eval_batch_size
        )
    metrics |= {"best_epoch": result.best_epoch, "train_seconds": round(result.train_seconds, 1)}
    metrics["resumed_from_epoch"] = result.resumed_from_epoch
    extra = {"stage": "distill", "labels": labels, "init_layers": metrics["init_layers"]}
    save_model(student, tokenizer, out_dir, extra=extra)
    metrics["seconds"] = round(time.perf_counter() - t_start, 1)
    return metrics
