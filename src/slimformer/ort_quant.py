"""ONNX Runtime quantization, called the way slimformer calls it: calibration feeds, pre-processing,
dynamic and static quantization, per-MatMul error ranking and weight-only fallback.

Shared by PTQ (:mod:`slimformer.quantize`) and QAT (:mod:`slimformer.qat`), which differ only in
where their ranges come from.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from slimformer.config import DynamicPTQConfig, StaticPTQConfig
from slimformer.contract import INPUT_NAMES
from slimformer.data import Example
from slimformer.errors import ConfigError
from slimformer.evaluate import labelled_batches

# ORT's fused BERT ops, and the plain op in ``op_types`` whose int8 each one stands for.
FUSED_OP_TYPES = {"Attention": "MatMul", "EmbedLayerNormalization": "Gather"}


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
        feeds.append(dict(zip(INPUT_NAMES, (ids, mask), strict=True)))
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
