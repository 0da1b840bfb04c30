from pathlib import Path

import numpy as np
import pytest
import torch

from slimformer.config import TrainConfig
from slimformer.data import Example
from slimformer.modeling import load_classifier, load_tokenizer
from slimformer.training import batch_order, classification_metrics, collate, encode, fit, macro_f1


def _data(tokenizer, tiny_rows):
    ex = [Example(r["text"], r["label"]) for r in tiny_rows]
    return encode(tokenizer, ex[:48], 32), encode(tokenizer, ex[48:], 32)


def test_batch_order_covers_every_index_once_and_groups_lengths():
    lengths = [int(x) for x in np.random.default_rng(0).integers(3, 60, size=1000)]
    grouped = batch_order(lengths, 32, shuffle=True, seed=1, group_by_length=True)
    plain = batch_order(lengths, 32, shuffle=True, seed=1, group_by_length=False)
    for order in (grouped, plain):
        assert sorted(i for b in order for i in b) == list(range(1000))
    assert grouped == batch_order(lengths, 32, shuffle=True, seed=1, group_by_length=True)

    def padding(order):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in order)

    assert padding(grouped) < 0.2 * padding(plain)


def test_collate_pads_to_longest_in_batch(tiny_bert_dir):
    tok = load_tokenizer(tiny_bert_dir)
    data = encode(tok, [Example("short", 0), Example("a much longer sentence than that", 1)], 64)
    b = collate(data, [0, 1], tok.pad_token_id)
    assert b.input_ids.shape == (2, len(data.input_ids[1]))
    assert b.attention_mask.sum(1).tolist() == [len(data.input_ids[0]), len(data.input_ids[1])]
    assert (b.input_ids[0, len(data.input_ids[0]) :] == tok.pad_token_id).all()


def test_metrics_against_hand_computed_values():
    labels = np.array([0, 0, 1, 1, 1])
    logits = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [1, 0]], dtype=np.float32)
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(0.6)
    # class 0: tp=1 fp=1 fn=1 -> 0.5; class 1: tp=2 fp=1 fn=1 -> 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert macro_f1(np.array([1, 1]), np.array([1, 1]), 2) == pytest.approx(0.5)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_fit_learns_a_separable_task(tmp_path: Path, tiny_bert_dir, tiny_rows):
    model = load_classifier(tiny_bert_dir)
    tok = load_tokenizer(tiny_bert_dir)
    train, val = _data(tok, tiny_rows)
    cfg = TrainConfig(epochs=12, batch_size=16, lr=3e-3, warmup_ratio=0.0, num_threads=1)
    res = fit(model, train, val, cfg, tok.pad_token_id, tmp_path / "ckpt", "fp")
    # A randomly initialised tiny BERT starts slowly; the loss must fall and val must be solved.
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"] - 0.02
    assert res.best_val["val_accuracy"] == 1.0
    assert [h["epoch"] for h in res.history] == list(range(1, 13))


def test_interrupted_fit_resumes_to_the_same_weights(tmp_path: Path, tiny_bert_dir, tiny_rows):
    tok = load_tokenizer(tiny_bert_dir)
    train, val = _data(tok, tiny_rows)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-3, num_threads=1)

    straight = load_classifier(tiny_bert_dir)
    fit(straight, train, val, cfg, tok.pad_token_id, tmp_path / "a", "fp")

    def stop_in_epoch_2(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    first = load_classifier(tiny_bert_dir)
    with pytest.raises(KeyboardInterrupt):
        fit(first, train, val, cfg, tok.pad_token_id, tmp_path / "b", "fp", on_epoch=stop_in_epoch_2)
    resumed = load_classifier(tiny_bert_dir)
    res = fit(resumed, train, val, cfg, tok.pad_token_id, tmp_path / "b", "fp")
    assert res.resumed_from_epoch == 1
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    # A different fingerprint (other params or data) must not resume a foreign run.
    other = load_classifier(tiny_bert_dir)
    assert fit(other, train, val, cfg, tok.pad_token_id, tmp_path / "b", "other").resumed_from_epoch == 0


def test_finetune_from_a_headless_checkpoint_repeats_exactly(tmp_path: Path, tiny_bert_dir, tiny_rows):
    """Like MiniLM, a checkpoint without a classification head: the new head is seeded, so a rerun
    from scratch with the same seed reproduces the weights and the accuracy exactly (on CPU)."""
    from safetensors.torch import load_file
    from transformers import BertModel

    from conftest import write_jsonl
    from slimformer.config import DataConfig, TeacherConfig
    from slimformer.data import prepare
    from slimformer.teacher import finetune

    headless = tmp_path / "headless"
    BertModel.from_pretrained(tiny_bert_dir).save_pretrained(headless, safe_serialization=True)
    load_tokenizer(tiny_bert_dir).save_pretrained(headless)
    data = tmp_path / "data"
    prepare(DataConfig(source=str(write_jsonl(tmp_path / "rows.jsonl", tiny_rows)), min_rows_per_class=5), data)
    cfg = TeacherConfig.from_dict({"checkpoint": str(headless), "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "num_threads": 1}})
    runs = [finetune(cfg, data, tmp_path / f"out{i}", tmp_path / f"ckpt{i}") for i in range(2)]
    assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"] and runs[0]["val_accuracy"] == runs[1]["val_accuracy"]
    a, b = (load_file(tmp_path / f"out{i}" / "model.safetensors") for i in range(2))
    assert a.keys() == b.keys() and "classifier.weight" in a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
