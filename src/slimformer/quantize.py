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

import contextlib
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from slimformer.config import DynamicPTQConfig, ExportConfig, PTQConfig, StaticPTQConfig
from slimformer.data import Example, load_split
from slimformer.engines import ENGINE_FILES, OrtRunner, Runner, runtime_versions, source_labels, verify_engine, write_manifest
from slimformer.errors import ConfigError, SlimformerError
from slimformer.engines.gate import gate_inputs, seal_engine
from slimformer.io import atomic_dir
from slimformer.modeling import load_tokenizer
from slimformer.training import batch_order, classification_metrics, collate, encode

VARIANTS = {"dynamic": "ptq_dynamic_int8_onnx", "static": "ptq_static_int8_onnx", "static_qdq": "ptq_static_int8_qdq_onnx"}
# How each engine's int8 is written (the manifest's "quant_format"):
#   qoperator         QLinearMatMul: uint8 activations in and out of every MatMul (ORT CPU)
#   qdq_symmetric     Q/DQ pairs, symmetric int8 activations and weights (what TensorRT builds from)
#   qdq_float_output  Q/DQ on MatMul inputs and weights only, float MatMul outputs (ORT CPU fuses it into
#                     MatMulIntegerToFloat); exactly what QAT's fake quantization simulates
QUANT_FORMATS = {"dynamic": "dynamic", "static": "qoperator", "static_qdq": "qdq_symmetric"}
# ORT's fused BERT ops, and the plain op in ``op_types`` whose int8 each one stands for.
FUSED_OP_TYPES = {"Attention": "MatMul", "EmbedLayerNormalization": "Gather"}


class AccuracyError(SlimformerError):
    """An int8 model stays further than allowed below its float source, even after the fallback."""


@dataclass(frozen=True)
class LabelledBatch:
    input_ids: np.ndarray  # (batch, seq) int64
    attention_mask: np.ndarray  # (batch, seq) int64
    labels: np.ndarray  # (batch,) int64


def labelled_batches(tokenizer, examples: list[Example], max_length: int, batch_size: int) -> list[LabelledBatch]:
    """``examples`` tokenized and batched by length (padding to each batch's longest sentence)."""
    data = encode(tokenizer, examples, max_length)
    order = batch_order([len(x) for x in data.input_ids], batch_size, shuffle=False, seed=0, group_by_length=True)
    out = []
    for idx in order:
        b = collate(data, idx, tokenizer.pad_token_id)
        out.append(LabelledBatch(b.input_ids.numpy(), b.attention_mask.numpy(), b.labels.numpy()))
    return out


def runner_metrics(runner: Runner, batches: list[LabelledBatch]) -> dict[str, float]:
    """Accuracy and macro-F1 of ``runner`` over ``batches``."""
    logits = np.concatenate([runner(b.input_ids, b.attention_mask) for b in batches])
    labels = np.concatenate([b.labels for b in batches])
    return classification_metrics(logits, labels)


def calibration_batches(tokenizer, train: list[Example], cfg: StaticPTQConfig, max_length: int) -> list[dict[str, np.ndarray]]:
    """``cfg.num_batches`` feeds of ``cfg.batch_size`` training sentences drawn with ``cfg.seed``.

    Every feed is padded to ``(batch_size, max_length)``: ORT's histogram calibrators
    (entropy, percentile) stack the batches and need one shape.
    """
    rng = random.Random(cfg.seed)
    sample = rng.sample(train, min(len(train), cfg.num_batches * cfg.batch_size))
    feeds = []
    for b in labelled_batches(tokenizer, sample, max_length, cfg.batch_size):
        if len(b.labels) < cfg.batch_size:  # a short last batch would break the common shape
            continue
        ids = np.full((cfg.batch_size, max_length), tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((cfg.batch_size, max_length), dtype=np.int64)
        ids[:, : b.input_ids.shape[1]], mask[:, : b.input_ids.shape[1]] = b.input_ids, b.attention_mask
        feeds.append({"input_ids": ids, "attention_mask": mask})
    if not feeds:
        raise ConfigError(f"calibration needs at least batch_size={cfg.batch_size} training rows, got {len(sample)}")
    return feeds


class FeedReader:
    """ORT ``CalibrationDataReader`` over a fixed list of feeds, readable in ranges (``set_range``)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._i, self._end = 0, len(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= self._end:
            return None
        self._i += 1
        return self.feeds[self._i - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._i, self._end = start_index, min(end_index, len(self.feeds))


# --------------------------------------------------------------------------- ORT calls


@contextlib.contextmanager
def _ort_quiet() -> Iterator[None]:
    """ORT's quantizer logs a pre-processing hint on the root logger at every call; we do pre-process."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def preprocess(fp32_path: Path, out_path: Path) -> str:
    """ORT's recommended pre-processing: symbolic shape inference and basic graph optimisation.

    The dynamo graph clamps positions with ``Min(max_positions, sequence)``, which strict
    symbolic inference cannot merge; ``auto_merge`` resolves it. Returns what was done.
    """
    from onnxruntime.quantization import quant_pre_process  # noqa: PLC0415

    try:
        quant_pre_process(str(fp32_path), str(out_path), auto_merge=True, save_as_external_data=False)
        return "symbolic shape inference (auto_merge) + ORT basic optimisation"
    except Exception:  # noqa: BLE001 - fall back to ONNX's own shape inference
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True, save_as_external_data=False)
        return "ONNX shape inference + ORT basic optimisation (symbolic inference failed)"


def dynamic_op_types(model_path: Path, op_types: tuple[str, ...]) -> list[str]:
    """``op_types``, plus the fused ops of ``model_path`` that stand for one of them (FUSED_OP_TYPES)."""
    present = {n.op_type for n in onnx.load(str(model_path), load_external_data=False).graph.node}
    return [*op_types, *(f for f, plain in FUSED_OP_TYPES.items() if plain in op_types and f in present)]


def quantize_dynamic(fp32_path: Path, out_path: Path, cfg: DynamicPTQConfig, exclude: list[str]) -> None:
    """int8 weights (QInt8), uint8 activations quantized at run time; fused ops too (QAttention)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    op_types = dynamic_op_types(fp32_path, cfg.op_types)
    extra: dict[str, Any] = {"MatMulConstBOnly": True}
    if len(op_types) > len(cfg.op_types):  # ONNX shape inference types no contrib-op output (preprocess's fallback
        # path); without a default the quantizer stops: "Unable to find data type for weight_name=..."
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    with _ort_quiet():
        quantize_dynamic(
            str(fp32_path), str(out_path), op_types_to_quantize=op_types, per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
            extra_options=extra,
        )  # fmt: skip


def quantize_static(
    fp32_path: Path, out_path: Path, cfg: StaticPTQConfig, form: str, feeds: list[dict[str, np.ndarray]],
    cache: Path, exclude: list[str], overrides: dict[str, list[dict]] | None = None,
) -> None:  # fmt: skip
    """Calibrated int8 in ``form``: "qoperator", "qdq_symmetric" or "qdq_float_output" (see QUANT_FORMATS).

    The calibration ranges are computed once and kept in ``cache`` (JSON), so the second format
    and every fallback round reuse them. ``overrides`` (TensorQuantOverrides) pin the ranges
    of named tensors, e.g. the activation ranges learned by QAT.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]  # fmt: skip
    # One batch at a time: the calibrators otherwise hold every batch's every activation (GBs for MiniLM).
    extra: dict[str, Any] = {"MatMulConstBOnly": cfg.linear_only, "CalibStridedMinMax": 1}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    if form not in ("qoperator", "qdq_symmetric", "qdq_float_output"):
        raise ValueError(f"unknown static int8 form {form!r}")
    symmetric = form == "qdq_symmetric"
    if symmetric:  # TensorRT takes symmetric int8 only (zero point 0) for both weights and activations
        extra |= {"ActivationSymmetric": True, "WeightSymmetric": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
    if form == "qdq_float_output":  # requantizing MatMul outputs costs accuracy QAT never trained for
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    with _ort_quiet():
        quantize_static(
            str(fp32_path), str(out_path), calibration_data_reader=FeedReader(feeds),
            quant_format=QuantFormat.QOperator if form == "qoperator" else QuantFormat.QDQ, op_types_to_quantize=list(cfg.op_types),
            per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude), calibrate_method=method, extra_options=extra, calibration_cache_path=str(cache),
        )  # fmt: skip


# --------------------------------------------------------------------------- local quantization error


def linear_matmuls(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """MatMul nodes with a constant weight: name -> (activation input name, weight (in, out))."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and node.input[0] not in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            if w.ndim == 2:
                out[node.name] = (node.input[0], w.astype(np.float32))
    return out


def collect_activations(model_path: Path, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run the fp32 model with ``names`` exposed as outputs; each one flattened to (rows, features)."""
    import onnxruntime as ort  # noqa: PLC0415

    model = onnx.load(str(model_path))
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        outs = sess.run(names, feed)
        mask = feed["attention_mask"].reshape(-1).astype(bool)
        for n, x in zip(names, outs, strict=True):
            x = x.reshape(-1, x.shape[-1])
            got[n].append(x[mask] if len(x) == len(mask) else x)  # padding rows say nothing about real inputs
    return {n: np.concatenate(v) for n, v in got.items()}


def _fake_quant_weight(w: np.ndarray, per_channel: bool, reduce_range: bool) -> np.ndarray:
    qmax = 63 if reduce_range else 127
    absmax = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.maximum(absmax, 1e-12) / qmax
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def _fake_quant_act(x: np.ndarray, symmetric: bool) -> np.ndarray:
    if symmetric:
        scale = max(float(np.abs(x).max()), 1e-12) / 127
        return np.clip(np.round(x / scale), -127, 127) * scale
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max(hi - lo, 1e-12) / 255
    zp = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    noise = float(np.sum((ref - approx) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref**2)) / noise)


def rank_matmuls(
    model_path: Path, feeds: list[dict[str, np.ndarray]], per_channel: bool, reduce_range: bool, symmetric_act: bool
) -> list[dict[str, Any]]:
    """Every constant-weight MatMul by local int8 error, worst (lowest SQNR) first.

    Local: each MatMul gets the fp32 model's own input, so an early layer's error does not
    inflate every later layer's score.
    """
    matmuls = linear_matmuls(onnx.load(str(model_path)))
    acts = collect_activations(model_path, sorted({x for x, _ in matmuls.values()}), feeds)
    ranked = []
    for name, (x_name, w) in matmuls.items():
        x = acts[x_name]
        ref = x @ w
        approx = _fake_quant_act(x, symmetric_act) @ _fake_quant_weight(w, per_channel, reduce_range)
        ranked.append({"node": name, "weight_shape": list(w.shape), "sqnr_db": round(sqnr_db(ref, approx), 2)})
    return sorted(ranked, key=lambda r: r["sqnr_db"])


def weight_only_int8(path: Path, nodes: list[str]) -> None:
    """Give the named float MatMuls int8 weights again (per output channel), activations staying float.

    A MatMul excluded from quantization loses its int8 *activations* (where the error was) but
    need not lose its int8 *weights*: ``DequantizeLinear(int8 W) -> MatMul`` keeps the file
    small (the size budget) at almost no accuracy cost. Rewrites ``path`` in place.
    """
    if not nodes:
        return
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    wanted, new_nodes = set(nodes), []
    for node in graph.node:
        if node.name in wanted and node.op_type == "MatMul" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # (in, out)
            scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / 127).astype(np.float32)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            base = f"{node.name}_woq"
            graph.initializer.extend([numpy_helper.from_array(q, f"{base}_w"), numpy_helper.from_array(scale, f"{base}_scale"),
                                      numpy_helper.from_array(np.zeros_like(q[0]), f"{base}_zero")])  # fmt: skip
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", [f"{base}_w", f"{base}_scale", f"{base}_zero"],
                                                   [f"{base}_dq"], name=f"{base}_DequantizeLinear", axis=1))  # fmt: skip
            if users[node.input[1]] == 1:
                graph.initializer.remove(inits[node.input[1]])
            node.input[1] = f"{base}_dq"
    # DequantizeLinear only reads initializers, so putting the new nodes first keeps the graph sorted.
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + old)
    onnx.save(model, str(path))


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


def _quantizer(kind: str, ctx: _Context) -> tuple[Callable[[list[str]], Path], Callable[[], list[dict[str, Any]]], dict]:
    """(quantize(excluded) -> path, rank() -> MatMuls worst first, settings) for one method."""
    out = ctx.tmp / f"{kind}.onnx"
    if kind == "dynamic":
        d = ctx.cfg.dynamic

        def quantize(exclude: list[str]) -> Path:
            quantize_dynamic(ctx.pre, out, d, exclude)
            weight_only_int8(out, exclude)
            return out

        settings = d.to_dict() | {"quantized_op_types": dynamic_op_types(ctx.pre, d.op_types)}
        return quantize, lambda: rank_matmuls(ctx.pre, ctx.probe_feeds, d.per_channel, d.reduce_range, False), settings
    s, form = ctx.cfg.static, QUANT_FORMATS[kind]

    def quantize_s(exclude: list[str]) -> Path:
        quantize_static(ctx.pre, out, s, form, ctx.calib, ctx.cache, exclude)
        weight_only_int8(out, exclude)
        return out

    symmetric = form == "qdq_symmetric"
    return quantize_s, lambda: rank_matmuls(ctx.pre, ctx.probe_feeds, s.per_channel, s.reduce_range, symmetric), s.to_dict()


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
                       [{"input_ids": b.input_ids, "attention_mask": b.attention_mask} for b in val[:: max(1, len(val) // 4)]],
                       cfg)  # fmt: skip
        shared_seconds = time.perf_counter() - t0
        for kind, out_dir in out_dirs.items():
            variant = out_dir.name
            if kind not in selected:
                _write_skipped(out_dir, source_dir, variant, f"quantize.ptq.method={cfg.method} leaves out {kind}")
                metrics[kind] = {"status": "skipped"}
                continue
            t0 = time.perf_counter()
            quantize, rank, settings = _quantizer(kind, ctx)
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
