"""evaluate: padded batches cover every row once, logits come back in row order, metrics are scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from slimformer.evaluate import padded_batches, runner_logits, runner_metrics, served_and_batched
from slimformer.training import Encoded

DATA = Encoded([[5, 6, 7], [5], [5, 6], [5, 6, 7, 8], [9, 9]], [1, 0, 1, 0, 1])


class LengthRunner:
    """Predicts class 1 for rows with 3+ real tokens, and reports the batch's padded width as a second logit."""

    runtime = "fake"

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        real = attention_mask.sum(1).astype(np.float32)
        return np.stack([np.full_like(real, 2.5), real], axis=1)


def test_padded_batches_cover_every_row_once_padded_to_their_longest():
    batches = padded_batches(DATA, pad_id=0, batch_size=2)
    assert sorted(r for b in batches for r in b.rows) == list(range(5))
    for b in batches:
        assert b.input_ids.shape == (len(b.rows), max(len(DATA.input_ids[r]) for r in b.rows))
        assert b.input_ids.dtype == np.int64 and (b.attention_mask.sum(1) == [len(DATA.input_ids[r]) for r in b.rows]).all()
        assert list(b.labels) == [DATA.labels[r] for r in b.rows]


def test_runner_logits_are_in_row_order_and_metrics_match_sklearn():
    batches = padded_batches(DATA, 0, 2)
    logits = runner_logits(LengthRunner(), batches)
    assert logits[:, 1].tolist() == [3, 1, 2, 4, 2]  # each row's own length, whatever batch it sat in
    preds = logits.argmax(-1)
    got = runner_metrics(LengthRunner(), batches)
    assert got["accuracy"] == pytest.approx(accuracy_score(DATA.labels, preds))
    assert got["macro_f1"] == pytest.approx(f1_score(DATA.labels, preds, average="macro"))


def test_served_and_batched_agree_for_a_batch_independent_runner():
    got = served_and_batched(LengthRunner(), DATA, 0, 4)
    assert got["accuracy"] == got["accuracy_padded"] and got["batch_agreement"] == 1.0 and got["test_rows"] == 5
