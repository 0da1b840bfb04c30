"""What a trained classifier is, in numbers: accuracy, agreement with the teacher, parameters, MACs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from slimformer.adapters import adapter_for
from slimformer.modeling import count_parameters
from slimformer.training import Encoded, classification_metrics, predict_logits


def macs_per_sequence(model: PreTrainedModel, seq_len: int) -> int:
    """Multiply-accumulates for one sequence of ``seq_len`` tokens, from the actual module shapes.

    Per layer: the six linear maps on every token plus the two attention products
    (``heads * seq^2 * head_size`` each). Linear maps outside the blocks (pooler, classifier)
    run on the [CLS] token only. Embedding lookups, softmax, GELU and LayerNorm are left out.
    """
    adapter = adapter_for(model)
    total, inside = 0, set()
    for layer in adapter.layers(model):
        for lin in layer.linears().values():
            total += seq_len * lin.in_features * lin.out_features
            inside.add(id(lin))
        total += 2 * layer.num_heads * seq_len * seq_len * layer.head_size
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m) not in inside:
            total += m.in_features * m.out_features
    return total


def agreement(logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Fraction of examples where student and teacher predict the same class."""
    return float((logits.argmax(-1) == teacher_logits.argmax(-1)).mean())


def model_metrics(
    model: PreTrainedModel, splits: dict[str, Encoded], teacher_logits: dict[str, torch.Tensor],
    pad_id: int, batch_size: int, seq_len: int,
) -> dict[str, Any]:  # fmt: skip
    """Val/test accuracy and macro-F1, agreement with the teacher, parameters and FLOPs per sequence."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        logits = predict_logits(model, splits[split], batch_size, pad_id)
        m = classification_metrics(logits, np.asarray(splits[split].labels))
        t = teacher_logits[split].numpy()
        out |= {f"{split}_accuracy": m["accuracy"], f"{split}_macro_f1": m["macro_f1"]}
        out[f"{split}_teacher_agreement"] = agreement(logits, t)
        out[f"teacher_{split}_accuracy"] = classification_metrics(t, np.asarray(splits[split].labels))["accuracy"]
    macs = macs_per_sequence(model, seq_len)
    out["params"] = count_parameters(model)
    out["flops_per_sequence"] = {"seq_len": seq_len, "macs": macs, "flops": 2 * macs}
    return out
