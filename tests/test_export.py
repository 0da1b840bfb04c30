"""Exporters and the parity gate, on a tiny randomly initialised BERT (real MiniLM tokenizer)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from engine_helpers import write_data

from slimformer import config as config_module
from slimformer.config import ExportConfig
from slimformer.engines import ENGINE_FILES, MANIFEST, ParityError, TorchRunner, load_engine, verify_engine
from slimformer.engines.gate import gate_inputs, parity_probes
from slimformer.export import EXPORTERS, LogitsOnly, build_engine, quiet_torch_deprecations
from slimformer.io import sha256_file
from slimformer.modeling import load_classifier, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
CFG = ExportConfig(batch_sizes=(1, 8, 32), lengths=(8, 24, 64), agreement_rows=0, min_agreement=0.9)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pruned_bert_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """The tiny BERT with heads pruned unevenly per layer (as the compression stages leave it)."""
    model = load_classifier(tiny_bert_dir)
    model.prune_heads({0: [1], 1: [0, 2]})
    out = tmp_path_factory.mktemp("pruned")
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(tiny_bert_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engines(tmp_path_factory, pruned_bert_dir, data_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engines")
    for name in ("onnx", "torchscript"):
        build_engine(name, pruned_bert_dir, CFG, data_dir, root / f"tiny_fp32_{name}")
    return {"onnx": root / "tiny_fp32_onnx", "torchscript": root / "tiny_fp32_torchscript", "root": root}


def random_batch(seed: int, batch: int, seq: int, vocab: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 1000 + vocab, (batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    for r in range(1, batch):
        mask[r, rng.integers(1, seq + 1) :] = 0
    return ids, mask


def _stage_module():
    spec = importlib.util.spec_from_file_location("export_stage", REPO / "stages" / "export.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def test_registry_has_every_exporter():
    assert set(EXPORTERS) == {"torchscript", "torchscript_int8", "onnx", "onnx_ortopt", "tensorrt_fp16", "tensorrt_int8"}
    assert sorted(_stage_module().EXPORTERS) == sorted(EXPORTERS)  # the stage script's --exporter choices


def test_probes_have_exact_shapes_and_real_padding(pruned_bert_dir, data_dir):
    tok = load_tokenizer(pruned_bert_dir)
    probes = gate_inputs(tok, data_dir, CFG).probes
    assert [(p.batch_size, p.length) for p in probes] == [(b, n) for b in (1, 8, 32) for n in (8, 24, 64)]
    for p in probes:
        assert p.input_ids.shape == p.attention_mask.shape == (p.batch_size, p.length)
        assert p.attention_mask[0].all()  # row 0 fills the length
        assert (p.input_ids[:, 0] == tok.cls_token_id).all()
    assert any((p.attention_mask == 0).any() for p in probes)
    again = parity_probes(tok, ["one two three"] * 3, (2,), (8,), seed=0)
    assert again[0].input_ids.shape == (2, 8)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_float_engines_match_pytorch_on_unseen_shapes(engines, pruned_bert_dir, fmt):
    """Dynamic batch and sequence axes: shapes never seen at export time still match PyTorch."""
    runner = load_engine(engines[fmt], num_threads=1, trust_torchscript=True)  # built by this test
    reference = TorchRunner(load_classifier(pruned_bert_dir))
    for seed, (batch, seq) in enumerate([(1, 3), (5, 17), (32, 64), (2, 100)]):
        ids, mask = random_batch(seed, batch, seq)
        np.testing.assert_allclose(runner(ids, mask), reference(ids, mask), atol=CFG.atol, rtol=0)


def test_onnx_manifest_and_file(engines, pruned_bert_dir):
    d = engines["onnx"]
    m = verify_engine(d)
    assert m["format"] == "onnx" and m["precision"] == "fp32" and m["status"] == "ok"
    assert m["exporter"] == "torch.onnx dynamo" and m["opset"] == CFG.opset
    assert m["source_model"] == str(pruned_bert_dir) and m["labels"] == ["rotten", "fresh"]
    assert {"model.onnx", "tokenizer.json", "vocab.txt"} <= set(m["files"])
    assert all(sha256_file(d / f) == h for f, h in m["files"].items())
    assert not (d / "model.onnx.data").exists() and sorted(p.name for p in d.iterdir() if "onnx" in p.name) == ["model.onnx"]
    model = onnx.load(str(d / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert all(isinstance(x, str) for shape in dims for x in shape)  # both axes symbolic
    parity = m["parity"]
    assert parity["kind"] == "atol" and parity["max_abs_diff"] <= CFG.atol and len(parity["cases"]) == 9
    assert load_tokenizer(d).vocab_size == load_tokenizer(pruned_bert_dir).vocab_size


def test_ortopt_records_recipe_and_matches(tmp_path, pruned_bert_dir, data_dir):
    m = build_engine("onnx_ortopt", pruned_bert_dir, CFG, data_dir, tmp_path / "ortopt")
    assert m["optimizer"] == "onnxruntime.transformers.optimizer" and m["attempts"][-1]["recipe"] == m["recipe"]
    assert m["parity"]["max_abs_diff"] <= CFG.atol
    ops = {n.op_type for n in onnx.load(str(tmp_path / "ortopt" / "model.onnx")).graph.node}
    assert "SkipLayerNormalization" in ops  # fused graph, still runs on the CPU EP (the gate ran it)


def test_int8_torchscript_agrees_with_float(tmp_path, pruned_bert_dir, data_dir):
    m = build_engine("torchscript_int8", pruned_bert_dir, CFG, data_dir, tmp_path / "ts8")
    assert m["precision"] == "int8" and m["parity"]["kind"] == "agreement"
    assert m["parity"]["agreement"] >= CFG.min_agreement and m["parity"]["rows"] == 40
    runner, reference = load_engine(tmp_path / "ts8", trust_torchscript=True), TorchRunner(load_classifier(pruned_bert_dir))
    ids, mask = random_batch(0, 8, 24)
    out, ref = runner(ids, mask), reference(ids, mask)
    assert out.shape == ref.shape
    # int8 noise bound: SQNR of the logits (centred per row: the class offset carries no signal) >= 15 dB
    centred = ref - ref.mean(1, keepdims=True)
    noise = (out - out.mean(1, keepdims=True)) - centred
    assert 10 * np.log10((centred**2).sum() / (noise**2).sum()) >= 15


def shifted_exporter(source_dir, cfg, out_dir, probes):
    """A wrong exporter: TorchScript of the model with its classifier bias moved by 0.5."""
    model = load_classifier(source_dir)
    with torch.no_grad():
        model.classifier.bias += 0.5
    example = (torch.from_numpy(probes[-1].input_ids), torch.from_numpy(probes[-1].attention_mask))
    with quiet_torch_deprecations():
        torch.jit.save(torch.jit.trace(LogitsOnly(model).eval(), example), str(out_dir / "model.ts"))
    return {"format": "torchscript", "precision": "fp32"}


def test_parity_failure_leaves_nothing_half_written(tmp_path, monkeypatch, engines, pruned_bert_dir, data_dir):
    monkeypatch.setitem(EXPORTERS, "torchscript", shifted_exporter)
    small = ExportConfig(batch_sizes=(1, 4), lengths=(8, 16))
    pattern = r"max \|logit - pytorch logit\| = 0\.5 > atol 0\.0001 at batch size \d+, length \d+, row \d+"
    with pytest.raises(ParityError, match=pattern):  # a new directory: never appears
        build_engine("torchscript", pruned_bert_dir, small, data_dir, tmp_path / "new")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))
    before = verify_engine(engines["torchscript"])  # an existing engine: left as it was
    with pytest.raises(ParityError):
        build_engine("torchscript", pruned_bert_dir, small, data_dir, engines["torchscript"])
    assert verify_engine(engines["torchscript"]) == before


def test_tensorrt_exporters_skip_with_reason(engines, data_dir):
    for name in ("tensorrt_fp16",):
        out = engines["root"] / name
        m = build_engine(name, engines["onnx"], CFG, data_dir, out)
        assert m["status"] == "skipped" and "tensorrt" in m["reason"] and m["format"] == "tensorrt"
        assert sorted(p.name for p in out.iterdir()) == [MANIFEST]  # no engine file, nothing faked
        assert m["precision"] == "fp16" and "parity" in m and m["parity"] == {}


def test_tensorrt_stage_skips_without_importing_torch(engines, data_dir, tmp_path):
    """Where TensorRT is absent, stages/export.py writes the skipped engine in a process that never
    imports torch (about a second per tensorrt@ stage instead of ten)."""
    params = tmp_path / "params.yaml"
    params.write_text("export:\n  batch_sizes: [1, 8, 32]\n  lengths: [8, 24, 64]\n", encoding="utf-8")
    out, metrics = tmp_path / "engines" / "tensorrt_fp16", tmp_path / "m.json"
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "stages" / "export.py"), "--params", str(params),
                           "--exporter", "tensorrt_fp16", "--source", str(engines["onnx"]), "--data", str(data_dir),
                           "--out", str(out), "--metrics", str(metrics)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "tensorrt_fp16 skipped: " in proc.stdout
    m = json.loads((out / MANIFEST).read_text())
    assert m["status"] == "skipped" and m["files"] == {} and sorted(p.name for p in out.iterdir()) == [MANIFEST]
    assert m["format"] == "tensorrt" and m["precision"] == "fp16" and m["variant"] == "tensorrt_fp16"
    assert m["labels"] == json.loads((engines["onnx"] / MANIFEST).read_text())["labels"] and "tensorrt" in m["reason"]
    assert json.loads(metrics.read_text()) == {"variant": "tensorrt_fp16", "status": "skipped", "format": "tensorrt",
                                               "precision": "fp16", "reason": m["reason"]}  # fmt: skip


def test_tensorrt_int8_needs_the_qdq_engine(engines, data_dir, tmp_path):
    with pytest.raises(config_module.ConfigError, match="needs the QDQ int8 ONNX engine with symmetric scales"):
        build_engine("tensorrt_int8", engines["onnx"], CFG, data_dir, tmp_path / "trt8")


def test_export_stage_script(tmp_path, monkeypatch, pruned_bert_dir, data_dir):
    """stages/export.py: params section -> one engine + metrics JSON."""
    from slimformer.config import QuantizeConfig

    monkeypatch.setitem(config_module.SECTIONS, "export", ExportConfig)
    monkeypatch.setitem(config_module.SECTIONS, "quantize", QuantizeConfig)
    params = tmp_path / "params.yaml"
    params.write_text("export:\n  batch_sizes: [1, 4]\n  lengths: [8, 16]\n  num_threads: 1\n", encoding="utf-8")
    stage = _stage_module()
    args = argparse.Namespace(params=str(params), exporter="torchscript", source=str(pruned_bert_dir), data=str(data_dir),
                              out=str(tmp_path / "engines" / "final_fp32_torchscript"), metrics=str(tmp_path / "m.json"))  # fmt: skip
    stage.run(args)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["variant"] == "final_fp32_torchscript" and metrics["status"] == "ok"
    assert metrics["engine_bytes"] == (tmp_path / "engines" / "final_fp32_torchscript" / ENGINE_FILES["torchscript"]).stat().st_size
    assert metrics["parity_max_abs_diff"] <= 1e-4
    torch.set_num_threads(2)
