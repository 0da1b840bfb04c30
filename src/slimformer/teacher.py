"""Teacher fine-tuning: a pretrained encoder of a supported family becomes a sequence classifier.

With ``teacher.train.epochs: 0`` an already fine-tuned checkpoint is the teacher as it is:
its own head, its rows put in ``data.labels`` order by class name, evaluated, not trained.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from slimformer.config import TeacherConfig
from slimformer.data import load_labels, load_split
from slimformer.errors import CheckpointError
from slimformer.families import check_checkpoint, head_labels
from slimformer.io import sha256_file
from slimformer.modeling import count_parameters, load_classifier, load_tokenizer, resolve_checkpoint, save_model
from slimformer.seed import set_seed
from slimformer.training import encode, encode_splits, evaluate, fit, run_fingerprint, world


def finetune(
    cfg: TeacherConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cfg.checkpoint`` on the prepared splits; write the best model to ``out_dir``.

    Returns the metrics written to ``teacher.json`` (rank 0 only writes files under DDP).
    """
    data_dir = Path(data_dir)
    labels = load_labels(data_dir)
    t = cfg.train
    check_checkpoint(cfg.checkpoint, labels, trained_head=t.epochs == 0)  # before any training starts
    src = resolve_checkpoint(cfg.checkpoint)
    tokenizer = load_tokenizer(src)
    if t.epochs == 0:
        return use_trained_head(cfg, src, tokenizer, labels, data_dir, out_dir, ckpt_dir, on_epoch)
    set_seed(t.seed)  # the new classification head is initialised here: seeded, so reruns repeat
    model = load_classifier(src, labels)
    splits = encode_splits(tokenizer, data_dir, t.max_length)
    fingerprint = run_fingerprint(t, cfg.checkpoint, sha256_file(data_dir / "train.jsonl"), world()[1])
    result = fit(
        model, splits["train"], splits["val"], t, tokenizer.pad_token_id, ckpt_dir, fingerprint,
        on_epoch=on_epoch, desc="teacher",
    )  # fmt: skip
    if world()[0] != 0:
        return {}
    test = evaluate(model, splits["test"], t.eval_batch_size, tokenizer.pad_token_id)
    save_model(model, tokenizer, out_dir, extra={"source_checkpoint": cfg.checkpoint, "labels": labels})
    return {
        "val_accuracy": result.best_val["val_accuracy"],
        "val_macro_f1": result.best_val["val_macro_f1"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "best_epoch": result.best_epoch,
        "params": count_parameters(model),
        "train_seconds": round(result.train_seconds, 1),
        "resumed_from_epoch": result.resumed_from_epoch,
        "processes": world()[1],
    }


def _head_output(model: PreTrainedModel) -> nn.Linear:
    """The classification head's last linear map: the one whose output rows are the classes."""
    n = model.config.num_labels
    base = {id(m) for m in model.base_model.modules()}
    outs = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == n and id(m) not in base]
    if not outs:
        raise CheckpointError(f"{model.config.model_type}: no classification head with {n} outputs found")
    return outs[-1]


def order_head(model: PreTrainedModel, labels: list[str]) -> list[int]:
    """Permute the head's output rows so that row ``i`` is ``labels[i]``; return the old row of each label.

    The match is by class name (``config.id2label``); a checkpoint whose classes are not
    exactly ``labels`` is an error naming both lists.
    """
    head = head_labels(model.config.to_dict()) or []
    if sorted(head) != sorted(labels):
        raise CheckpointError(
            f"the checkpoint's head classes {head} do not match data.labels {list(labels)}; "
            "with teacher.train.epochs 0 they must be the same names (any order)"
        )
    order = [head.index(name) for name in labels]
    lin = _head_output(model)
    with torch.no_grad():
        lin.weight.copy_(lin.weight[order].clone())
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[order].clone())
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    return order


def use_trained_head(
    cfg: TeacherConfig, src: Path, tokenizer, labels: list[str], data_dir: Path, out_dir: str | Path,
    ckpt_dir: str | Path, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``teacher.train.epochs: 0``: the checkpoint as the teacher, head reordered to ``labels``, evaluated only.

    ``ckpt_dir`` is created empty (nothing to resume) and the curves get one point, epoch 0,
    so the stage's declared outputs exist as after training.
    """
    t = cfg.train
    model = load_classifier(src)  # its own head: no labels passed, nothing re-initialised
    order = order_head(model, labels)
    if world()[0] != 0:
        return {}
    splits = {s: encode(tokenizer, load_split(data_dir / f"{s}.jsonl"), t.max_length) for s in ("val", "test")}
    out: dict[str, Any] = {}
    for split, enc in splits.items():
        m = evaluate(model, enc, t.eval_batch_size, tokenizer.pad_token_id)
        out |= {f"{split}_accuracy": m["accuracy"], f"{split}_macro_f1": m["macro_f1"]}
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    if on_epoch is not None:
        on_epoch(0, {"val_accuracy": out["val_accuracy"], "val_macro_f1": out["val_macro_f1"]})
    save_model(model, tokenizer, out_dir, extra={"source_checkpoint": cfg.checkpoint, "labels": labels, "trained": False})
    return out | {
        "best_epoch": 0,
        "trained": False,
        "head_rows": order,  # the checkpoint's row of each of data.labels
        "params": count_parameters(model),
        "train_seconds": 0.0,
        "resumed_from_epoch": None,
        "processes": world()[1],
    }
