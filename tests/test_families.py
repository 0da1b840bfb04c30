"""Every supported family through every compression step, on tiny random-initialised checkpoints
with a tokenizer of the family's own kind (tests/family_helpers.py): early refusal, student
initialisation, structured pruning and reload, gradual magnitude pruning, vocabulary trimming,
QAT wrapping, TorchScript/ONNX/fused-ONNX export with parity, PTQ (dynamic, static, QDQ) and
the one-step optimum baseline. No network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from engine_helpers import write_data
from family_helpers import FAMILIES, corpus_sentences, make_checkpoint
from transformers import AutoModelForSequenceClassification

from slimformer.adapters import ADAPTERS, adapter_for
from slimformer.config import ConfigError, DistillConfig, ExportConfig, PTQConfig, PruneStructuredConfig, QATConfig
from slimformer.config import TeacherConfig, TrainConfig
from slimformer.distill import build_student
from slimformer.engines import verify_engine
from slimformer.errors import CheckpointError
from slimformer.export import build_engine
from slimformer.families import SUPPORTED, check_checkpoint
from slimformer.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE
from slimformer.model_stats import macs_per_sequence
from slimformer.modeling import load_classifier, load_tokenizer
from slimformer.prune import apply_plan, make_plan, structure
from slimformer.qat import FakeQuantLinear, unwrap, wrap
from slimformer.quantize import VARIANTS, ptq
from slimformer.sparsity import MagnitudePruner, prunable_weights, sparsity_report
from slimformer.teacher import finetune, order_head
from slimformer.training import collate, encode
from slimformer.vocab import remap_table, trim_unsupported, trim_vocab

EXPORT = ExportConfig(batch_sizes=(1, 8), lengths=(8, 32), min_agreement=0.5)
LAYERS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: make_checkpoint(f, root / f, layers=LAYERS) for f in FAMILIES}


def batches_of(path: Path, data_dir: Path, n: int = 2, size: int = 8):
    """``n`` validation batches tokenized by the checkpoint's own tokenizer."""
    from slimformer.data import load_split

    tok = load_tokenizer(path)
    enc = encode(tok, load_split(data_dir / "val.jsonl"), 32)
    return [collate(enc, list(range(i * size, (i + 1) * size)), tok.pad_token_id) for i in range(n)]


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


# ------------------------------------------------------------------------------ the families table


def test_every_supported_family_has_an_adapter_and_an_ort_model_type():
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    assert set(SUPPORTED) == set(ADAPTERS) == set(FAMILIES)
    assert all(f.ort_model_type in MODEL_TYPES for f in SUPPORTED.values())


def test_checkpoints_have_the_family_tokenizer_kind(checkpoints):
    kinds = {"wordpiece": "WordPiece", "byte_level_bpe": "BPE", "unigram": "Unigram"}
    for fam, path in checkpoints.items():
        state = json.loads((path / "tokenizer.json").read_text())
        assert state["model"]["type"] == kinds[SUPPORTED[fam].tokenizer], fam
        assert load_classifier(path).config.model_type == fam


# ------------------------------------------------------------------------------ refused early


def test_unsupported_family_is_refused_naming_it_and_the_supported(tmp_path, checkpoints):
    bad = tmp_path / "gpt2"
    shutil.copytree(checkpoints["bert"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=r"model_type 'gpt2' is not supported; supported families: bert, distilbert, roberta, xlm-roberta, electra"):
        check_checkpoint(str(bad), ["rotten", "fresh"])
    (bad / "config.json").write_text(json.dumps(cfg | {"model_type": "deberta-v2"}))
    with pytest.raises(CheckpointError, match="'deberta-v2' is not supported"):
        check_checkpoint(str(bad), ["rotten", "fresh"])


def test_missing_safetensors_and_misfit_heads_are_refused(tmp_path, checkpoints):
    assert check_checkpoint(str(checkpoints["roberta"]), ["rotten", "fresh"])["tokenizer"] == "byte_level_bpe"
    d = tmp_path / "nosafe"
    shutil.copytree(checkpoints["roberta"], d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        check_checkpoint(str(d), ["rotten", "fresh"])
    with pytest.raises(CheckpointError, match=r"head has 2 outputs, but data.labels has 3"):
        check_checkpoint(str(checkpoints["roberta"]), ["a", "b", "c"])
    with pytest.raises(CheckpointError, match=r"\['rotten', 'fresh'\] do not match data.labels \['neg', 'pos'\]"):
        check_checkpoint(str(checkpoints["roberta"]), ["neg", "pos"], trained_head=True)


def test_only_the_teacher_may_train_zero_epochs():
    assert TeacherConfig.from_dict({"train": {"epochs": 0}}, prefix="teacher").train.epochs == 0
    with pytest.raises(ConfigError, match=r"distill.train.epochs: got 0, allowed: an integer >= 1"):
        DistillConfig.from_dict({"train": {"epochs": 0}}, prefix="distill")
    with pytest.raises(ConfigError, match="epochs: got 0"):
        TrainConfig(epochs=0)


# ------------------------------------------------------------------------------ an already fine-tuned teacher


def test_trained_head_is_reordered_by_name(checkpoints, data_dir):
    model = load_classifier(checkpoints["electra"])
    b = batches_of(checkpoints["electra"], data_dir, n=1)[0]
    before = logits(model, b)
    assert order_head(model, ["fresh", "rotten"]) == [1, 0]
    torch.testing.assert_close(logits(model, b), before.flip(-1), rtol=0, atol=0)
    assert model.config.id2label == {0: "fresh", 1: "rotten"}
    with pytest.raises(CheckpointError, match=r"\['fresh', 'rotten'\] do not match data.labels \['x', 'y'\]"):
        order_head(model, ["x", "y"])


def test_epochs_zero_evaluates_the_checkpoint_without_training(tmp_path, checkpoints, data_dir):
    cfg = TeacherConfig.from_dict(
        {"checkpoint": str(checkpoints["distilbert"]), "train": {"epochs": 0, "max_length": 32}}, prefix="teacher"
    )
    seen = []
    m = finetune(cfg, data_dir, tmp_path / "teacher", tmp_path / "ckpt", on_epoch=lambda e, x: seen.append(e))
    assert m["trained"] is False and m["best_epoch"] == 0 and seen == [0] and (tmp_path / "ckpt").is_dir()
    out = load_classifier(tmp_path / "teacher")
    src = load_classifier(checkpoints["distilbert"])
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in out.state_dict().items())  # nothing trained
    from slimformer.data import load_split
    from slimformer.training import classification_metrics, predict_logits

    tok = load_tokenizer(checkpoints["distilbert"])
    test = encode(tok, load_split(data_dir / "test.jsonl"), 32)
    expected = classification_metrics(predict_logits(src, test, 16, tok.pad_token_id), np.asarray(test.labels))
    assert m["test_accuracy"] == expected["accuracy"]  # the checkpoint's own accuracy, unchanged


# ------------------------------------------------------------------------------ every stage function, every family


@pytest.mark.parametrize("fam", FAMILIES)
def test_student_starts_from_teacher_layers(fam, checkpoints):
    teacher = load_classifier(checkpoints[fam])
    a = adapter_for(teacher)
    cfg = DistillConfig.from_dict({"depth_multiplier": 0.5, "ffn_multiplier": 0.5, "init_layers": [1]})
    student, layer_map = build_student(teacher, cfg)
    assert layer_map == (1,) and getattr(student.config, a.depth_key) == 1
    assert getattr(student.config, a.ffn_key) == getattr(teacher.config, a.ffn_key) // 2
    s, t = a.layers(student)[0], a.layers(teacher)[1]
    assert torch.equal(s.query.weight, t.query.weight) and torch.equal(s.attn_out.weight, t.attn_out.weight)
    assert s.ffn_in.out_features == t.ffn_in.out_features // 2
    assert torch.equal(a.embeddings(student).word_embeddings.weight, a.embeddings(teacher).word_embeddings.weight)
    assert 0 < macs_per_sequence(student, 32) < macs_per_sequence(teacher, 32)


@pytest.mark.parametrize("measure", [("gradient", "taylor"), ("entropy", "magnitude")])
@pytest.mark.parametrize("fam", FAMILIES)
def test_structured_pruning_removes_heads_and_neurons_and_reloads(fam, measure, tmp_path, checkpoints, data_dir):
    model = load_classifier(checkpoints[fam])
    a = adapter_for(model)
    val = batches_of(checkpoints[fam], data_dir)
    heads, neurons = measure
    cfg = PruneStructuredConfig(heads_fraction=0.5, neurons_fraction=0.5, head_importance=heads, neuron_importance=neurons)
    plan = make_plan(model, HEAD_IMPORTANCE[heads](model, val), NEURON_IMPORTANCE[neurons](model, val), cfg)
    before = sum(p.numel() for p in model.parameters())
    apply_plan(model, plan)
    assert structure(model)["heads"] == LAYERS * 2 and structure(model)["neurons_per_layer"] == [32] * LAYERS
    assert sum(p.numel() for p in model.parameters()) < before
    assert all(layer.query.out_features == layer.num_heads * layer.head_size for layer in a.layers(model))
    assert sum(layer.attn_out.in_features for layer in a.layers(model)) == LAYERS * 2 * a.layers(model)[0].head_size
    out = logits(model, val[0])
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m", local_files_only=True).eval()
    assert getattr(again.config, a.ffn_key) == 32 and len(again.config.pruned_heads) == LAYERS
    assert structure(again) == structure(model)
    torch.testing.assert_close(logits(again, val[0]), out, rtol=0, atol=0)


@pytest.mark.parametrize("fam", FAMILIES)
def test_gradual_magnitude_pruning_hits_its_sparsity(fam, checkpoints):
    model = load_classifier(checkpoints[fam])
    weights = prunable_weights(model)
    assert len(weights) == LAYERS * 6  # six linear maps per block, found through the family's adapter
    pruner = MagnitudePruner(weights, 0.0, 0.6, 0, 1, 1, "per_layer")
    pruner.finalize()
    report = sparsity_report(model, weights)
    assert abs(report["overall"] - 0.6) < 0.01 and set(report["per_layer"]) == {f"layer_{i}" for i in range(LAYERS)}


@pytest.mark.parametrize("fam", FAMILIES)
def test_vocabulary_trimming_keeps_tokenization_or_says_why_not(fam, checkpoints):
    tok = load_tokenizer(checkpoints[fam])
    texts = list(corpus_sentences())
    reason = trim_unsupported(tok)
    kind = SUPPORTED[fam].tokenizer
    if kind != "wordpiece":
        assert reason and {"byte_level_bpe": "byte-level BPE", "unigram": "Unigram"}[kind] in reason
        return
    assert reason is None
    student = load_classifier(checkpoints[fam])
    new_tok, keep, full_rows = trim_vocab(student, tok, texts)
    assert len(keep) < len(tok) and student.get_input_embeddings().weight.shape[0] == len(keep)
    table = remap_table(keep, len(tok), -1).tolist()
    old_ids = tok(texts, truncation=False)["input_ids"]
    new_ids = new_tok(texts, truncation=False)["input_ids"]
    assert all([table[t] for t in o] == n for o, n in zip(old_ids, new_ids, strict=True))  # every corpus sentence
    torch.testing.assert_close(student.get_input_embeddings().weight, full_rows[torch.tensor(keep)])


@pytest.mark.parametrize("fam", FAMILIES)
def test_qat_wraps_every_block_linear(fam, checkpoints):
    model = load_classifier(checkpoints[fam])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = wrap(model, QATConfig())
    assert len(names) == LAYERS * 6 and all(isinstance(model.get_submodule(n), FakeQuantLinear) for n in names)
    ids = torch.tensor([[model.config.pad_token_id + 1, 7, 9, 11]])
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (1, 2)
    assert set(unwrap(model)) == set(names)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def engines(tmp_path_factory, checkpoints, data_dir) -> dict[str, dict[str, Path]]:
    """fp32 TorchScript, ONNX and fused-ONNX engines of every family, from head-pruned models."""
    root = tmp_path_factory.mktemp("family_engines")
    out: dict[str, dict[str, Path]] = {}
    for fam, path in checkpoints.items():
        model = load_classifier(path)
        model.prune_heads({0: [1], 1: [0, 2]})  # uneven heads per layer, as pruning leaves them
        src = root / f"{fam}_pruned"
        model.save_pretrained(src, safe_serialization=True)
        load_tokenizer(path).save_pretrained(src)
        out[fam] = {"source": src}
        for exporter in ("torchscript", "onnx", "onnx_ortopt"):
            out[fam][exporter] = root / f"{fam}_{exporter}"
            build_engine(exporter, src, EXPORT, data_dir, out[fam][exporter])
    return out


@pytest.mark.parametrize("fam", FAMILIES)
def test_engines_take_ids_and_mask_only_and_match_pytorch(fam, engines):
    for exporter in ("torchscript", "onnx", "onnx_ortopt"):
        m = verify_engine(engines[fam][exporter])
        assert m["status"] == "ok" and m["parity"]["max_abs_diff"] <= EXPORT.atol, (fam, exporter, m["parity"])
    graph = onnx.load(str(engines[fam]["onnx"] / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]  # no token_type_ids, for any family
    opt = verify_engine(engines[fam]["onnx_ortopt"])
    assert opt["source_model_type"] == fam and opt["ort_model_type"] == SUPPORTED[fam].ort_model_type
    assert opt["fusion"].split(":")[0] in ("fused", "partial", "none")


@pytest.mark.parametrize("fam", FAMILIES)
def test_ptq_engines_of_every_family(fam, tmp_path, engines, data_dir):
    cfg = PTQConfig.from_dict({"static": {"num_batches": 2, "batch_size": 8}, "num_threads": 1, "max_accuracy_drop": 0.5})
    outs = {k: tmp_path / v for k, v in VARIANTS.items()}
    metrics = ptq(engines[fam]["onnx"], data_dir, cfg, EXPORT, outs)
    for kind, d in outs.items():
        m = verify_engine(d)
        assert m["status"] == "ok" and m["precision"] == "int8", (fam, kind)
        assert np.isfinite(metrics[kind]["test_accuracy"])


@pytest.mark.parametrize("fam", FAMILIES)
def test_onestep_optimum_baseline_of_every_family(fam, tmp_path, checkpoints):
    from slimformer.baselines import build_onestep_baseline

    m = build_onestep_baseline(checkpoints[fam], tmp_path / "onestep", "optimum")
    assert m["status"] == "ok" and "optimum_error" not in m, m.get("optimum_error")
    verify_engine(tmp_path / "onestep")


@pytest.mark.parametrize("fam", FAMILIES)
def test_report_parameter_groups_cover_every_family(fam, checkpoints):
    from slimformer.report import parameter_groups

    groups = parameter_groups(checkpoints[fam])
    assert groups["other"] == 0, groups  # every tensor lands in a named part
    assert groups["total"] == sum(p.numel() for p in load_classifier(checkpoints[fam]).parameters())
    assert min(groups["embeddings"], groups["attention"], groups["ffn"], groups["classifier"]) > 0
