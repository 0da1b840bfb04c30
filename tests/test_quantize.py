"""PTQ (ONNX Runtime dynamic/static, QOperator/QDQ, accuracy fallback) and QAT, on a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from engine_helpers import write_data
from onnx import numpy_helper

from slimformer.config import ConfigError, ExportConfig, PTQConfig, QATConfig, QuantizeConfig
from slimformer.engines import OrtRunner, TorchRunner, load_engine, verify_engine
from slimformer.export import build_engine
from slimformer.modeling import load_classifier
from slimformer.qat import FakeQuantLinear, act_qparams, fake_quant_weight, qat, range_overrides, unwrap, wrap
from slimformer.ort_quant import FeedReader, dynamic_op_types, linear_matmuls, rank_matmuls, sqnr_db, weight_only_int8
from slimformer.quantize import QUANTIZERS, VARIANTS, AccuracyError, fit_accuracy, ptq

EXPORT = ExportConfig(batch_sizes=(1, 8), lengths=(8, 32), min_agreement=0.9)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def fp32_engine(tmp_path_factory, tiny_bert_dir, data_dir) -> Path:
    out = tmp_path_factory.mktemp("engines") / "final_fp32_onnx"
    build_engine("onnx", tiny_bert_dir, EXPORT, data_dir, out)
    return out


@pytest.fixture(scope="module")
def ptq_run(tmp_path_factory, fp32_engine, data_dir):
    root = tmp_path_factory.mktemp("ptq")
    cfg = PTQConfig.from_dict({"static": {"num_batches": 2, "batch_size": 8}, "num_threads": 1})
    outs = {k: root / v for k, v in VARIANTS.items()}
    return ptq(fp32_engine, data_dir, cfg, EXPORT, outs), outs


def test_params_sections_nest_and_validate():
    cfg = QuantizeConfig.from_dict({"ptq": {"method": "static", "static": {"calibration": "percentile"}}}, prefix="quantize")
    assert cfg.ptq.method == "static" and cfg.ptq.static.calibration == "percentile" and cfg.qat.kd_source == "float"
    assert QuantizeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"quantize\.ptq\.method: got 'int4'"):
        QuantizeConfig.from_dict({"ptq": {"method": "int4"}}, prefix="quantize")
    with pytest.raises(ConfigError, match=r"quantize\.ptq\.dynamic\.op_types: got \['Conv'\]"):
        QuantizeConfig.from_dict({"ptq": {"dynamic": {"op_types": ["Conv"]}}}, prefix="quantize")
    with pytest.raises(ConfigError, match=r"export\.lengths: .*max_length=64"):
        ExportConfig.from_dict({"lengths": [8, 128]}, prefix="export")


def test_ptq_engines(ptq_run, fp32_engine):
    metrics, outs = ptq_run
    fp32_bytes = (fp32_engine / "model.onnx").stat().st_size
    expected_ops = {"dynamic": "MatMulInteger", "static": "QLinearMatMul", "static_qdq": "DequantizeLinear"}
    for kind, d in outs.items():
        m = verify_engine(d)
        assert m["status"] == "ok" and m["precision"] == "int8" and m["variant"] == VARIANTS[kind]
        assert m["source_model"] == str(fp32_engine) and m["quant_format"] == {"dynamic": "dynamic", "static": "qoperator",
                                                                                "static_qdq": "qdq_symmetric"}[kind]  # fmt: skip
        assert m["parity"]["kind"] == "agreement" and m["parity"]["agreement"] >= EXPORT.min_agreement
        size = (d / "model.onnx").stat().st_size
        assert size <= 0.3 * fp32_bytes  # int8 embeddings (Gather) included: they are most of the bytes
        assert metrics[kind]["size_ratio"] == pytest.approx(size / fp32_bytes)
        assert abs(metrics[kind]["test_accuracy"] - metrics["fp32"]["test_accuracy"]) <= 0.01
        ops = {n.op_type for n in onnx.load(str(d / "model.onnx")).graph.node}
        assert expected_ops[kind] in ops


def test_qdq_engine_is_symmetric_int8_for_tensorrt(ptq_run):
    _, outs = ptq_run
    model = onnx.load(str(outs["static_qdq"] / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                   and len(n.input) > 2 and n.input[2] in inits]  # fmt: skip
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_int8_logits_sqnr(ptq_run, fp32_engine, data_dir):
    _, outs = ptq_run
    fp32 = load_engine(fp32_engine)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 3000, (16, 24), dtype=np.int64)
    mask = np.ones_like(ids)
    ref = fp32(ids, mask)
    for kind in ("dynamic", "static"):
        out = load_engine(outs[kind])(ids, mask)
        assert sqnr_db(ref - ref.mean(), out - ref.mean()) >= 15, kind


def test_method_selects_engines_others_skipped(tmp_path, fp32_engine, data_dir):
    outs = {k: tmp_path / v for k, v in VARIANTS.items()}
    metrics = ptq(fp32_engine, data_dir, PTQConfig(method="dynamic"), EXPORT, outs)
    assert metrics["dynamic"]["status"] == "ok" and metrics["static"] == {"status": "skipped"}
    for kind in ("static", "static_qdq"):
        m = verify_engine(outs[kind])
        assert m["status"] == "skipped" and "quantize.ptq.method=dynamic" in m["reason"]
        assert not (outs[kind] / "model.onnx").exists()


def test_fused_graph_gets_fused_int8_ops(tmp_path_factory, tiny_bert_dir, data_dir, fp32_engine):
    """ORT's fused graph (Attention, EmbedLayerNormalization) -> QAttention, QEmbedLayerNormalization."""
    root = tmp_path_factory.mktemp("fused")
    fused = root / "final_fp32_ortopt"
    build_engine("onnx_ortopt", tiny_bert_dir, EXPORT, data_dir, fused)
    assert {"Attention", "EmbedLayerNormalization"} <= {n.op_type for n in onnx.load(str(fused / "model.onnx")).graph.node}
    out = root / "ptq_dynamic_int8_ortopt"
    cfg = PTQConfig.from_dict({"num_threads": 1})
    metrics = ptq(fused, data_dir, cfg, EXPORT, {"dynamic": out})
    assert set(metrics) == {"fp32", "dynamic"} and metrics["dynamic"]["status"] == "ok"
    m = verify_engine(out)
    assert m["variant"] == "ptq_dynamic_int8_ortopt" and m["source_model"] == str(fused)
    assert m["parity"]["kind"] == "agreement" and m["parity"]["agreement"] >= EXPORT.min_agreement
    assert m["quantization"]["settings"]["quantized_op_types"] == ["MatMul", "Gather", "Attention", "EmbedLayerNormalization"]
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QAttention", "QEmbedLayerNormalization", "MatMulInteger"} <= ops and "Attention" not in ops
    assert abs(metrics["dynamic"]["test_accuracy"] - metrics["fp32"]["test_accuracy"]) <= 0.01
    assert dynamic_op_types(fused / "model.onnx", ("MatMul",)) == ["MatMul", "Attention"]  # each fused op follows its plain op
    assert dynamic_op_types(fp32_engine / "model.onnx", ("MatMul", "Gather")) == ["MatMul", "Gather"]  # nothing fused


def test_ptq_outputs_must_be_known_kinds(tmp_path, fp32_engine, data_dir):
    for outs in ({}, {"int4": tmp_path / "x"}):
        with pytest.raises(ConfigError, match="ptq writes one or more of dynamic, static, static_qdq"):
            ptq(fp32_engine, data_dir, PTQConfig(), EXPORT, outs)
    assert not (tmp_path / "x").exists()


def test_rank_matmuls_covers_every_linear(fp32_engine):
    model = onnx.load(str(fp32_engine / "model.onnx"))
    linear = linear_matmuls(model)
    assert len(linear) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(1000, 3000, (4, 12), dtype=np.int64), "attention_mask": np.ones((4, 12), np.int64)}]
    ranked = rank_matmuls(fp32_engine / "model.onnx", feeds, per_channel=True, reduce_range=False, symmetric_act=False)
    assert {r["node"] for r in ranked} == set(linear)
    assert [r["sqnr_db"] for r in ranked] == sorted(r["sqnr_db"] for r in ranked)
    assert all(20 < r["sqnr_db"] < 80 for r in ranked)  # int8 on real activations: noisy, not broken


def test_weight_only_int8_keeps_excluded_weights_small(tmp_path, fp32_engine):
    """An excluded MatMul gets float activations but keeps int8 weights: the size budget holds."""
    import shutil

    path = tmp_path / "m.onnx"
    shutil.copy2(fp32_engine / "model.onnx", path)
    nodes = sorted(linear_matmuls(onnx.load(str(path))))[:3]
    weight_bytes = sum(w.nbytes for _, w in (linear_matmuls(onnx.load(str(path)))[n] for n in nodes))
    before = path.stat().st_size
    weight_only_int8(path, nodes)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) == 3
    assert before - path.stat().st_size >= 0.5 * weight_bytes  # int8 is a quarter of fp32 (+ per-channel scales)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 3000, (4, 16), dtype=np.int64)
    mask = np.ones_like(ids)
    ref, out = OrtRunner(fp32_engine / "model.onnx", 1)(ids, mask), OrtRunner(path, 1)(ids, mask)
    assert sqnr_db(ref - ref.mean(), out - ref.mean()) >= 30


def test_feed_reader_ranges():
    feeds = [{"i": np.array([k])} for k in range(5)]
    reader = FeedReader(feeds)
    assert len(reader) == 5 and [int(f["i"][0]) for f in iter(reader.get_next, None)] == [0, 1, 2, 3, 4]
    reader.set_range(1, 3)
    assert [int(f["i"][0]) for f in iter(reader.get_next, None)] == [1, 2]


def test_accuracy_fallback_excludes_worst_first():
    ranked = [{"node": f"n{i}", "sqnr_db": float(i)} for i in range(6)]
    cfg = PTQConfig(max_accuracy_drop=0.01, exclude_step=2, max_excluded_nodes=4)
    calls = []

    def quantize(exclude):
        calls.append(list(exclude))
        return Path(f"m{len(exclude)}.onnx")

    def evaluate(path):  # accuracy recovers once n0..n3 are float
        return {"m0.onnx": 0.80, "m2.onnx": 0.82, "m4.onnx": 0.835}[path.name]

    path, excluded, history = fit_accuracy(quantize, evaluate, 0.84, lambda: ranked, cfg, "v")
    assert path.name == "m4.onnx" and calls == [[], ["n0", "n1"], ["n0", "n1", "n2", "n3"]]
    assert [e["node"] for e in excluded] == ["n0", "n1", "n2", "n3"] and "SQNR" in excluded[0]["why"]
    assert [h["excluded"] for h in history] == [0, 2, 4]
    with pytest.raises(AccuracyError, match=r"v: val accuracy 0\.8350 is 0\.0050 below .* 4 MatMuls given float activations"):
        fit_accuracy(quantize, evaluate, 0.84, lambda: ranked, PTQConfig(max_accuracy_drop=0.001, max_excluded_nodes=4), "v")
    rank_calls = []
    fit_accuracy(quantize, lambda p: 0.84, 0.84, lambda: rank_calls.append(1) or ranked, cfg, "v")
    assert rank_calls == []  # no fallback needed: the model is never ranked


# --------------------------------------------------------------------------- QAT


def test_act_qparams_match_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for lo, hi in [(-1.3, 4.1), (0.2, 3.0), (-5.0, -0.5)]:
        scale, zero = act_qparams(torch.tensor(lo), torch.tensor(hi))
        ort_zero, ort_scale = compute_scale_zp(np.float32(min(lo, 0)), np.float32(max(hi, 0)), np.uint8(0), np.uint8(255), False)
        assert float(scale) == pytest.approx(float(ort_scale), rel=1e-6) and int(zero) == int(ort_zero)


def test_fake_quant_weight_error_and_straight_through_gradient():
    w = torch.randn(6, 10, requires_grad=True)
    q = fake_quant_weight(w, per_channel=True)
    step = w.detach().abs().amax(dim=1, keepdim=True) / 127
    assert ((q - w).abs() <= step / 2 + 1e-7).all() and len(torch.unique(q[0])) <= 255
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through: every weight is inside its range


def test_fake_quant_linear_observes_then_freezes():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    fq = FakeQuantLinear(lin, per_channel=True, ema_decay=0.5, observer_steps=2).train()
    fq(torch.full((2, 4), 2.0))
    assert float(fq.act_min) == 0.0 and float(fq.act_max) == 2.0  # first batch initialises, range holds 0
    fq(torch.full((2, 4), 4.0))
    assert float(fq.act_max) == pytest.approx(3.0)  # EMA
    fq(torch.full((2, 4), 100.0))
    assert float(fq.act_max) == pytest.approx(3.0) and int(fq.observed) == 2  # frozen after observer_steps
    x = torch.rand(5, 4) * 3  # inside the frozen range [0, 3]
    assert torch.allclose(fq(x), lin(x), atol=0.05)  # int8 noise only
    assert (fq(-x) == fq(torch.zeros_like(x))).all()  # below the range: clipped to 0, as uint8 will


def test_wrap_unwrap_roundtrip_and_ranges_reach_onnx(tiny_bert_dir, fp32_engine):
    model = load_classifier(tiny_bert_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = wrap(model, QATConfig())
    assert len(names) == 12 and all(isinstance(model.get_submodule(n), FakeQuantLinear) for n in names)
    for n in names:
        model.get_submodule(n).act_min.fill_(-1.0)
        model.get_submodule(n).act_max.fill_(2.0)
        model.get_submodule(n).observed.fill_(1)
    ranges = unwrap(model)
    assert set(ranges) == set(names) and ranges[names[0]] == (-1.0, 2.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and set(before) == set(model.state_dict())
    overrides = range_overrides(fp32_engine / "model.onnx", model, ranges)  # same weights as the exported model
    assert len(overrides) == 2 * 4  # q/k/v share one input per layer: 4 distinct MatMul inputs per layer
    assert all(v == [{"rmin": np.float32(-1.0), "rmax": np.float32(2.0)}] for v in overrides.values())


def test_qat_end_to_end(tmp_path, tiny_bert_dir, data_dir):
    cfg = QATConfig.from_dict({"calibration_batches": 2, "observer_steps": 2,
                               "train": {"epochs": 1, "batch_size": 8, "lr": 1e-4, "num_threads": 1}})  # fmt: skip
    metrics = qat(tiny_bert_dir, data_dir, cfg, EXPORT, tmp_path / "qat", tmp_path / "qat_int8_onnx", tmp_path / "ckpt")
    for key in ("float_before", "ptq_static_int8", "qat_fake_quant", "qat_int8"):
        assert 0 <= metrics[key]["test_accuracy"] <= 1
    m = verify_engine(tmp_path / "qat_int8_onnx")
    assert m["variant"] == "qat_int8_onnx" and m["precision"] == "int8" and m["quantization"]["pinned_ranges"] == 12
    assert m["quant_format"] == "qdq_float_output"
    assert m["parity"]["agreement"] >= EXPORT.min_agreement
    extra = json.loads((tmp_path / "qat" / "slimformer.json").read_text())["qat"]
    assert len(extra["input_ranges"]) == 12
    model = load_classifier(tmp_path / "qat")  # a plain HF model again: no fake-quant modules left
    assert not any(isinstance(x, FakeQuantLinear) for x in model.modules())
    ids = np.full((2, 8), 2000, dtype=np.int64)
    assert load_engine(tmp_path / "qat_int8_onnx")(ids, np.ones_like(ids)).shape == TorchRunner(model)(ids, np.ones_like(ids)).shape


def test_every_ptq_format_is_a_registry_entry_with_one_signature():
    import inspect

    assert set(QUANTIZERS) == set(VARIANTS)
    for fn in QUANTIZERS.values():
        assert list(inspect.signature(fn).parameters) == ["ctx", "out"]
