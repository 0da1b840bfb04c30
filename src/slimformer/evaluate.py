"""The one prediction and accuracy path for runners (engines, or a PyTorch model behind a Runner).

Encoded examples become length-grouped batches padded to their own longest sentence
(:func:`padded_batches`, the order ``training.batch_order`` gives without shuffling); a runner's
logits are put back in row order (:func:`runner_logits`); accuracy and macro-F1 are
scikit-learn's through :func:`slimformer.training.classification_metrics`. Used by PTQ, QAT,
the parity gate's agreement batches and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from slimformer.data import Example
from slimformer.engines import Runner
from slimformer.training import Encoded, batch_order, classification_metrics, collate, encode


@dataclass(frozen=True)
class LabelledBatch:
    rows: list[int]  # which rows of the split, in batch order
    input_ids: np.ndarray  # (batch, seq) int64
    attention_mask: np.ndarray  # (batch, seq) int64
    labels: np.ndarray  # (batch,) int64


def padded(data: Encoded, rows: list[int], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` of an Encoded split padded to their longest sentence: (input_ids, attention_mask) int64."""
    b = collate(data, rows, pad_id)
    return b.input_ids.numpy(), b.attention_mask.numpy()


def padded_batches(data: Encoded, pad_id: int, batch_size: int) -> list[LabelledBatch]:
    """Every row of ``data`` in length-grouped batches of ``batch_size``, each padded to its longest sentence."""
    order = batch_order([len(x) for x in data.input_ids], batch_size, shuffle=False, seed=0, group_by_length=True)
    out = []
    for rows in order:
        b = collate(data, rows, pad_id)
        out.append(LabelledBatch(rows, b.input_ids.numpy(), b.attention_mask.numpy(), b.labels.numpy()))
    return out


def labelled_batches(tokenizer, examples: list[Example], max_length: int, batch_size: int) -> list[LabelledBatch]:
    """``examples`` tokenized (truncated to ``max_length``) and batched as :func:`padded_batches`."""
    return padded_batches(encode(tokenizer, examples, max_length), tokenizer.pad_token_id, batch_size)


def runner_logits(runner: Runner, batches: list[LabelledBatch]) -> np.ndarray:
    """Logits (n, classes) of ``runner`` on every row of ``batches``, in row order."""
    out: np.ndarray | None = None
    for b in batches:
        logits = runner(b.input_ids, b.attention_mask)
        if out is None:
            out = np.zeros((sum(len(x.rows) for x in batches), logits.shape[-1]), dtype=np.float32)
        out[b.rows] = logits
    assert out is not None, "empty split"
    return out


def batch_labels(batches: list[LabelledBatch]) -> np.ndarray:
    """The labels of every row of ``batches``, in row order."""
    out = np.zeros(sum(len(b.rows) for b in batches), dtype=np.int64)
    for b in batches:
        out[b.rows] = b.labels
    return out


def runner_metrics(runner: Runner, batches: list[LabelledBatch]) -> dict[str, float]:
    """Accuracy and macro-F1 of ``runner`` over ``batches``."""
    return classification_metrics(runner_logits(runner, batches), batch_labels(batches))


def served_and_batched(runner: Runner, data: Encoded, pad_id: int, batch_size: int) -> dict[str, Any]:
    """Accuracy and macro-F1 one sentence per call (``accuracy``, as served) and in padded batches of
    ``batch_size`` (``accuracy_padded``), with the share of rows predicted alike both ways."""
    labels = np.asarray(data.labels)
    single = runner_logits(runner, padded_batches(data, pad_id, 1))
    batched = runner_logits(runner, padded_batches(data, pad_id, batch_size))
    served, padded_ = classification_metrics(single, labels), classification_metrics(batched, labels)
    same = single.argmax(-1) == batched.argmax(-1)
    return {
        **served,
        "accuracy_padded": padded_["accuracy"],
        "macro_f1_padded": padded_["macro_f1"],
        "batch_agreement": float(same.mean()),
        "batch_disagreements": int((~same).sum()),
        "test_rows": len(data),
    }
