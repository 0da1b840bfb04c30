"""Post-training int8 quantization with ONNX Runtime, from the fp32 ONNX engine.

Three int8 engines come out of one fp32 ONNX model:

- ``dynamic``: int8 weights, activations quantized per call (``MatMulInteger``); no
  calibration. The fastest int8 path on AVX2/VNNI CPUs.
- ``static`` (QOperator): int8 weights and uint8 activations with ranges calibrated on real
  training batches (``QLinearMatMul``), for CPU.
- ``static_qdq``: the same calibration, written as QuantizeLinear/DequantizeLinear pairs with
  symmetric int8 activations: the explicit-quantization form TensorRT builds from.

``Gather`` is quantized too: the embedding tables are most of a small model's bytes.

The source may also be ORT's fused graph (``final_fp32_ortopt``: Attention,
EmbedLayerNormalization, SkipLayerNormalization). Dynamic int8 then quantizes the fused
ops as well (``QAttention``, ``QEmbedLayerNormalization``): fewer, larger kernels, which
is what batch-1 latency on a CPU is made of (measured on the default chain: 1.55 ms
against 2.01 ms for the same model's unfused dynamic int8, same accuracy).

Accuracy fallback: if an int8 model loses more than ``max_accuracy_drop`` val accuracy
against the fp32 ONNX model, the MatMuls with the largest *local* quantization error
(SQNR of ``X @ W`` with X and W fake-quantized as ORT will, on real val activations) get
float activations, ``exclude_step`` at a time, until it fits or ``max_excluded_nodes`` is
spent. Their weights stay int8 (weight-only ``DequantizeLinear``), so the size budget holds.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from slimformer.config import ExportConfig, PTQConfig
from slimformer.contract import INPUT_NAMES
from slimformer.data import load_split
from slimformer.engines import ENGINE_FILES, OrtRunner, runtime_versions, source_labels, verify_engine, write_manifest
from slimformer.engines.gate import gate_inputs, seal_engine
from slimformer.errors import ConfigError, SlimformerError
from slimformer.evaluate import labelled_batches, runner_metrics
from slimformer.io import atomic_dir
from slimformer.modeling import load_tokenizer
from slimformer.ort_quant import (
    calibration_batches,
    dynamic_op_types,
    preprocess,
    quantize_dynamic,
    quantize_static,
    rank_matmuls,
    weight_only_int8,
)

VARIANTS = {"dynamic": "ptq_dynamic_int8_onnx", "static": "ptq_static_int8_onnx", "static_qdq": "ptq_static_int8_qdq_onnx"}
# How each engine's int8 is written (the manifest's "quant_format"):
#   qoperator         QLinearMatMul: uint8 activations in and out of every MatMul (ORT CPU)
#   qdq_symmetric     Q/DQ pairs, symmetric int8 activations and weights (what TensorRT builds from)
#   qdq_float_output  Q/DQ on MatMul inputs and weights only, float MatMul outputs (ORT CPU fuses it into
#                     MatMulIntegerToFloat); exactly what QAT's fake quantization simulates
QUANT_FORMATS = {"dynamic": "dynamic", "static": "qoperator", "static_qdq": "qdq_symmetric"}


class AccuracyError(SlimformerError):
    """An int8 model stays further than allowed below its float source, even after the fallback."""


# --------------------------------------------------------------------------- accuracy fallback


def fit_accuracy(
    quantize: Callable[[list[str]], Path],
    evaluate: Callable[[Path], float],
    float_accuracy: float,
    rank: Callable[[], list[dict[str, Any]]],
    cfg: PTQConfig,
    name: str,
) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """Quantize; while val accuracy drops more than allowed, keep the worst-ranked MatMuls in float.

    ``quantize(excluded node names) -> model path``; ``evaluate(path) -> val accuracy``;
    ``rank()`` -> MatMuls worst first (called only if a fallback round is needed). Returns
    (model path, excluded nodes with their SQNR and why, history of rounds). Raises
    AccuracyError once ``max_excluded_nodes`` is spent and the drop still exceeds the budget.
    """
    excluded: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    ranked: list[dict[str, Any]] | None = None
    while True:
        path = quantize([e["node"] for e in excluded])
        acc = evaluate(path)
        drop = float_accuracy - acc
        history.append({"excluded": len(excluded), "val_accuracy": acc, "drop": drop})
        if drop <= cfg.max_accuracy_drop:
            return path, excluded, history
        ranked = rank() if ranked is None else ranked
        room = min(cfg.exclude_step, cfg.max_excluded_nodes - len(excluded), len(ranked) - len(excluded))
        if room <= 0:
            raise AccuracyError(
                f"{name}: val accuracy {acc:.4f} is {drop:.4f} below fp32 ONNX ({float_accuracy:.4f}) "
                f"with {len(excluded)} MatMuls given float activations; allowed drop is quantize.ptq.max_accuracy_drop="
                f"{cfg.max_accuracy_drop} (raise quantize.ptq.max_excluded_nodes, or try another calibration)"
            )
        for r in ranked[len(excluded) : len(excluded) + room]:
            excluded.append(r | {"why": f"lowest local SQNR ({r['sqnr_db']} dB) while the val drop was {drop:.4f}",
                                 "now": "float activations, int8 weights (weight-only)"})


# --------------------------------------------------------------------------- the stage


@dataclass
class _Context:
    """What every quantization method of one PTQ run shares."""

    pre: Path  # the pre-processed fp32 model
    tmp: Path
    cache: Path  # calibration ranges, computed once
    calib: list[dict[str, np.ndarray]]  # calibration feeds (training batches)
    probe_feeds: list[dict[str, np.ndarray]]  # val feeds for the local-error ranking
    cfg: PTQConfig


# (quantize(excluded node names) -> model path, rank() -> MatMuls worst first, settings for the manifest)
Quantizer = tuple[Callable[[list[str]], Path], Callable[[], list[dict[str, Any]]], dict]


def quantize_dynamic_int8(ctx: _Context, out: Path) -> Quantizer:
    """Dynamic int8: weights int8, activations quantized per call; no calibration."""
    d = ctx.cfg.dynamic

    def quantize(exclude: list[str]) -> Path:
        quantize_dynamic(ctx.pre, out, d, exclude)
        weight_only_int8(out, exclude)
        return out

    settings = d.to_dict() | {"quantized_op_types": dynamic_op_types(ctx.pre, d.op_types)}
    return quantize, lambda: rank_matmuls(ctx.pre, ctx.probe_feeds, d.per_channel, d.reduce_range, False), settings


def _static(ctx: _Context, out: Path, form: str) -> Quantizer:
    s = ctx.cfg.static

    def quantize(exclude: list[str]) -> Path:
        quantize_static(ctx.pre, out, s, form, ctx.calib, ctx.cache, exclude)
        weight_only_int8(out, exclude)
        return out

    symmetric = form == "qdq_symmetric"
    return quantize, lambda: rank_matmuls(ctx.pre, ctx.probe_feeds, s.per_channel, s.reduce_range, symmetric), s.to_dict()


def quantize_static_qoperator(ctx: _Context, out: Path) -> Quantizer:
    """Static int8 in QOperator form (QLinearMatMul), ranges calibrated on training batches."""
    return _static(ctx, out, QUANT_FORMATS["static"])


def quantize_static_qdq(ctx: _Context, out: Path) -> Quantizer:
    """Static int8 as symmetric Q/DQ pairs (the form TensorRT builds from), same calibration."""
    return _static(ctx, out, QUANT_FORMATS["static_qdq"])


# PTQ formats by name, like the exporters: fn(ctx, out_path) -> Quantizer
QUANTIZERS: dict[str, Callable[[_Context, Path], Quantizer]] = {
    "dynamic": quantize_dynamic_int8,
    "static": quantize_static_qoperator,
    "static_qdq": quantize_static_qdq,
}


def ptq(
    source_dir: str | Path,
    data_dir: str | Path,
    cfg: PTQConfig,
    export_cfg: ExportConfig,
    out_dirs: dict[str, Path],
) -> dict[str, Any]:
    """Quantize the fp32 ONNX engine in ``source_dir`` into the int8 engines ``out_dirs``.

    ``out_dirs`` maps some of "dynamic", "static", "static_qdq" to engine directories; each
    directory's name is its variant. Engines of a method ``cfg.method`` leaves out get a
    "skipped" manifest, so every declared output exists. Each engine passes the export gate
    (agreement with the fp32 ONNX model). Returns the metrics: fp32 and int8 accuracy (val,
    test), sizes, times, exclusions.
    """
    source_dir, data_dir = Path(source_dir), Path(data_dir)
    if not out_dirs or not set(out_dirs) <= set(VARIANTS):
        raise ConfigError(f"ptq writes one or more of {', '.join(VARIANTS)}, got {sorted(out_dirs)}")
    source = verify_engine(source_dir)
    if source["format"] != "onnx" or source["precision"] != "fp32" or source["status"] != "ok":
        raise ConfigError(f"{source_dir}: PTQ starts from the fp32 ONNX engine, got {source['format']} {source['precision']}")
    fp32_path = source_dir / ENGINE_FILES["onnx"]
    tokenizer = load_tokenizer(source_dir)
    val = labelled_batches(tokenizer, load_split(data_dir / "val.jsonl"), cfg.max_length, cfg.eval_batch_size)
    test = labelled_batches(tokenizer, load_split(data_dir / "test.jsonl"), cfg.max_length, cfg.eval_batch_size)
    fp32 = OrtRunner(fp32_path, cfg.num_threads)
    fp32_val, fp32_test = runner_metrics(fp32, val), runner_metrics(fp32, test)
    inputs = gate_inputs(tokenizer, data_dir, export_cfg)
    metrics: dict[str, Any] = {"fp32": {"val_accuracy": fp32_val["accuracy"], "test_accuracy": fp32_test["accuracy"],
                                        "test_macro_f1": fp32_test["macro_f1"], "onnx_bytes": fp32_path.stat().st_size}}  # fmt: skip
    selected = {"both": set(VARIANTS), "dynamic": {"dynamic"}, "static": {"static", "static_qdq"}}[cfg.method] & set(out_dirs)

    def evaluate(path: Path) -> float:
        return runner_metrics(OrtRunner(path, cfg.num_threads), val)["accuracy"]

    with tempfile.TemporaryDirectory(prefix="ptq.") as tmp_str:
        tmp = Path(tmp_str)
        t0 = time.perf_counter()
        preprocessed = preprocess(fp32_path, tmp / "preprocessed.onnx")
        train = load_split(data_dir / "train.jsonl") if selected - {"dynamic"} else []
        ctx = _Context(tmp / "preprocessed.onnx", tmp, tmp / "calibration.json",
                       calibration_batches(tokenizer, train, cfg.static, cfg.max_length) if train else [],
                       [dict(zip(INPUT_NAMES, (b.input_ids, b.attention_mask), strict=True)) for b in val[:: max(1, len(val) // 4)]],
                       cfg)  # fmt: skip
        shared_seconds = time.perf_counter() - t0
        for kind, out_dir in out_dirs.items():
            variant = out_dir.name
            if kind not in selected:
                _write_skipped(out_dir, source_dir, variant, f"quantize.ptq.method={cfg.method} leaves out {kind}")
                metrics[kind] = {"status": "skipped"}
                continue
            t0 = time.perf_counter()
            quantize, rank, settings = QUANTIZERS[kind](ctx, tmp / f"{kind}.onnx")
            path, excluded, history = fit_accuracy(quantize, evaluate, fp32_val["accuracy"], rank, cfg, variant)
            seconds = time.perf_counter() - t0 + shared_seconds
            info = {"format": "onnx", "precision": "int8", "opset": _opset(path), "quant_format": QUANT_FORMATS[kind],
                    "quantization": {"tool": "onnxruntime.quantization", "settings": settings, "preprocessed": preprocessed,
                                     "excluded_nodes": excluded, "fallback_rounds": history},
                    "build_seconds": round(seconds, 2), "runtime": runtime_versions("onnx", "onnxruntime")}  # fmt: skip
            with atomic_dir(out_dir) as engine_dir:
                shutil.copy2(path, engine_dir / ENGINE_FILES["onnx"])
                seal_engine(engine_dir, info, source_dir, variant, export_cfg, inputs, reference=fp32)
            engine_path = out_dir / ENGINE_FILES["onnx"]
            t = runner_metrics(OrtRunner(engine_path, cfg.num_threads), test)
            metrics[kind] = {
                "status": "ok", "val_accuracy": history[-1]["val_accuracy"], "test_accuracy": t["accuracy"],
                "test_macro_f1": t["macro_f1"], "test_accuracy_drop": fp32_test["accuracy"] - t["accuracy"],
                "onnx_bytes": engine_path.stat().st_size, "size_ratio": engine_path.stat().st_size / fp32_path.stat().st_size,
                "excluded_nodes": len(excluded), "seconds": round(seconds, 1),
            }  # fmt: skip
    return metrics


def _opset(path: Path) -> int | None:
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _write_skipped(out_dir: Path, source_dir: Path, variant: str, reason: str) -> None:
    with atomic_dir(out_dir) as tmp:
        write_manifest(tmp, format="onnx", precision="int8", variant=variant, source_model=str(source_dir),
                       labels=source_labels(source_dir), status="skipped", reason=reason)  # fmt: skip
