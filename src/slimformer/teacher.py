"""Teacher fine-tuning: a pretrained BERT-family encoder becomes a sequence classifier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.config import TeacherConfig
from slimformer.data import load_labels, load_split
from slimformer.io import sha256_file
from slimformer.modeling import count_parameters, load_classifier, load_tokenizer, resolve_checkpoint, save_model
from slimformer.seed import set_seed
from slimformer.training import classification_metrics, encode, fit, predict_logits, run_fingerprint, world


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
    src = resolve_checkpoint(cfg.checkpoint)
    tokenizer = load_tokenizer(src)
    t = cfg.train
    set_seed(t.seed)  # the new classification head is initialised here: seeded, so reruns repeat
    model = load_classifier(src, labels)
    splits = {s: encode(tokenizer, load_split(data_dir / f"{s}.jsonl"), t.max_length) for s in ("train", "val", "test")}
    fingerprint = run_fingerprint(t, cfg.checkpoint, sha256_file(data_dir / "train.jsonl"), world()[1])
    result = fit(
        model, splits["train"], splits["val"], t, tokenizer.pad_token_id, ckpt_dir, fingerprint,
        on_epoch=on_epoch, desc="teacher",
    )  # fmt: skip
    if world()[0] != 0:
        return {}
    test_logits = predict_logits(model, splits["test"], t.eval_batch_size, tokenizer.pad_token_id)
    test = classification_metrics(test_logits, np.asarray(splits["test"].labels))
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
