"""Attention anatomy of a model directory: how sharply each remaining head attends, on validation batches.

Runs the model (torch); the report stage imports this lazily and hands the result to the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimformer.adapters import adapter_for
from slimformer.config import ReportConfig
from slimformer.data import load_split
from slimformer.modeling import load_classifier, load_tokenizer
from slimformer.importance import entropy_head_importance
from slimformer.training import batch_order, collate, encode


def attention_entropy(model_dir: str | Path, data_dir: str | Path, cfg: ReportConfig) -> dict[str, Any]:
    """Mean normalised attention entropy of every head (0: attends to one token, 1: uniform) on validation batches.

    Uses the pruning stage's entropy measure (importance = 1 - entropy). Heads removed by
    structured pruning are absent; ``head_ids`` gives each remaining head's original number.
    """
    model = load_classifier(model_dir)
    tok = load_tokenizer(model_dir)
    data = encode(tok, load_split(Path(data_dir) / "val.jsonl"), cfg.max_length)
    order = batch_order([len(x) for x in data.input_ids], cfg.entropy_batch_size, shuffle=True, seed=0, group_by_length=False)
    batches = [collate(data, rows, tok.pad_token_id) for rows in order[: cfg.entropy_batches]]
    importance = entropy_head_importance(model, batches)
    layers = adapter_for(model).layers(model)
    return {
        "batches": len(batches),
        "rows": sum(len(b.labels) for b in batches),
        "layers": [
            {"layer": i, "head_ids": list(layer.head_ids), "entropy": [round(1 - float(x), 4) for x in imp]}
            for i, (layer, imp) in enumerate(zip(layers, importance, strict=True))
        ],
    }
