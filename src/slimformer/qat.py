"""Quantization-aware training: fake-quant fine-tuning with KD, then an int8 ONNX model with the learned ranges.

Eager fake quantization in plain torch (no ``torch.ao``, no torchao):

- every encoder ``nn.Linear`` becomes a :class:`FakeQuantLinear`: its weight is fake-quantized
  symmetric int8 per output channel (as ORT will quantize it), its input uint8 per tensor
  with an observed range: min/max over calibration batches first, then an exponential moving
  average for ``observer_steps`` training steps, then frozen;
- the embedding tables are fake-quantized uint8 per tensor, as ORT stores an int8 Gather's table;
- gradients pass straight through (``torch.fake_quantize_*`` implement the STE).

Training is :func:`slimformer.training.fit` with the Hinton KD loss of
:mod:`slimformer.kd` (targets: the model's own fp32 logits, or the cached teacher logits).
Afterwards the fake-quant wrappers come off (the weights are plain fp32 again), the model is
saved, exported to fp32 ONNX, and statically quantized by ONNX Runtime with every MatMul
input range pinned to the range QAT learned (``TensorQuantOverrides``); weight scales are
max-abs per channel on both sides, and MatMul outputs stay float (QDQ form, fused by ORT
into ``MatMulIntegerToFloat``), so the int8 model computes what QAT trained. The PTQ
baseline is the same static quantization of the model before QAT, without learned ranges.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from slimformer.adapters import adapter_for
from slimformer.config import ExportConfig, QATConfig, StaticPTQConfig
from slimformer.data import load_split
from slimformer.engines import ENGINE_FILES, OrtRunner, runtime_versions
from slimformer.engines.gate import gate_inputs, seal_engine
from slimformer.errors import ConfigError
from slimformer.evaluate import labelled_batches, runner_metrics
from slimformer.io import atomic_dir, sha256_file
from slimformer.kd import KDLoss
from slimformer.logit_cache import load_teacher_logits
from slimformer.modeling import load_classifier, load_tokenizer, save_model
from slimformer.onnx_export import export_onnx
from slimformer.ort_quant import calibration_batches, linear_matmuls, preprocess, quantize_static
from slimformer.training import Encoded, collate, encode, evaluate, fit, predict_logits, run_fingerprint

VARIANT = "qat_int8_onnx"
# int8 inputs and weights, float MatMul outputs: what the fake quantization simulates. Measured on the
# 2-layer student: requantizing MatMul outputs too (QOperator) lost 0.9 test points of what QAT gained.
QAT_FORM = "qdq_float_output"


class FakeQuantLinear(nn.Module):
    """``nn.Linear`` computing with int8-simulated weight and input; (..., in) -> (..., out)."""

    def __init__(self, linear: nn.Linear, per_channel: bool, ema_decay: float, observer_steps: int) -> None:
        super().__init__()
        self.linear = linear
        self.per_channel = per_channel
        self.ema_decay = ema_decay
        self.observer_steps = observer_steps
        self.register_buffer("act_min", torch.zeros(()))
        self.register_buffer("act_max", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.long))  # batches seen by the observer
        self.calibrating = False  # True: plain min/max over calibration batches, no fake quant

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
        if self.observed == 0:
            self.act_min.copy_(lo)
            self.act_max.copy_(hi)
        elif self.calibrating:
            self.act_min.copy_(torch.minimum(self.act_min, lo))
            self.act_max.copy_(torch.maximum(self.act_max, hi))
        else:
            d = self.ema_decay
            self.act_min.mul_(d).add_((1 - d) * lo)
            self.act_max.mul_(d).add_((1 - d) * hi)
        self.observed += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self._observe(x)
            return self.linear(x)
        if self.training and self.observed < self.observer_steps:
            self._observe(x)
        if self.observed > 0:
            scale, zero = act_qparams(self.act_min, self.act_max)
            x = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)
        return F.linear(x, fake_quant_weight(self.linear.weight, self.per_channel), self.linear.bias)


def act_qparams(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 asymmetric (scale, zero point) for the range [lo, hi] (widened to hold 0), as ORT computes them."""
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-8).float().reshape(1)
    zero = torch.round(-lo / scale).clamp(0, 255).to(torch.int32).reshape(1)
    return scale, zero


def fake_quant_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric int8 in [-127, 127]: per output row of ``w`` (out, in), or one scale for the tensor."""
    if per_channel:
        scale = (w.detach().abs().amax(dim=1) / 127).clamp(min=1e-8)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)
    scale = (w.detach().abs().max() / 127).clamp(min=1e-8).reshape(1)
    return torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros(1, dtype=torch.int32), -127, 127)


class FakeQuantEmbedding(nn.Module):
    """``nn.Embedding`` whose table is fake-quantized as ORT stores a quantized Gather table:
    uint8, one asymmetric scale for the whole table (min/max of the table)."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, seq) ids -> (batch, seq, hidden)."""
        e = self.embedding
        scale, zero = act_qparams(e.weight.detach().min(), e.weight.detach().max())
        table = torch.fake_quantize_per_tensor_affine(e.weight, scale, zero, 0, 255)
        return F.embedding(ids, table, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)


def wrap(model: nn.Module, cfg: QATConfig) -> list[str]:
    """Swap the encoder's Linears (and the word embeddings) for fake-quant versions, in place; return their names."""
    names = []
    adapter = adapter_for(model)
    encoder = adapter.encoder(model)
    prefix = next(n for n, m in model.named_modules() if m is encoder) + "."
    for name, module in list(encoder.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, FakeQuantLinear(child, cfg.per_channel, cfg.ema_decay, cfg.observer_steps))
                names.append(prefix + (f"{name}." if name else "") + child_name)
    if cfg.quantize_embeddings:  # ORT's int8 Gather covers every embedding table
        emb = adapter.embeddings(model)
        for name, child in list(emb.named_children()):
            if type(child) is nn.Embedding:
                setattr(emb, name, FakeQuantEmbedding(child))
    return names


def unwrap(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Put the plain modules back, in place; return each Linear's learned input range (min, max)."""
    ranges = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, FakeQuantLinear):
                ranges[full] = (float(child.act_min), float(child.act_max))
                setattr(module, child_name, child.linear)
            elif isinstance(child, FakeQuantEmbedding):
                setattr(module, child_name, child.embedding)
    return ranges


@torch.no_grad()
def calibrate(model: nn.Module, data: Encoded, pad_id: int, batches: list[list[int]]) -> None:
    """Initial input ranges of every FakeQuantLinear: min/max over real training batches."""
    fq = [m for m in model.modules() if isinstance(m, FakeQuantLinear)]
    for m in fq:
        m.calibrating = True
    model.eval()
    for idx in batches:
        b = collate(data, idx, pad_id)
        model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    for m in fq:
        m.calibrating = False
        m.observed.fill_(1)  # the EMA continues from the calibrated range


def range_overrides(onnx_path: Path, model: nn.Module, ranges: dict[str, tuple[float, float]]) -> dict[str, list[dict]]:
    """TensorQuantOverrides pinning each MatMul input to the range QAT learned for its Linear.

    Linears are matched to ONNX MatMuls by their weights (the initializer is ``W.T``, bit for
    bit), which survives any renaming the exporter or optimiser does. Inputs shared by several
    Linears (query/key/value) get the union of their ranges.
    """
    by_weight = {}
    for name in ranges:
        w = model.get_submodule(name).weight.detach().numpy().T
        by_weight[hashlib.sha256(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()] = name
    out: dict[str, tuple[float, float]] = {}
    for node, (x_name, w) in linear_matmuls(onnx.load(str(onnx_path))).items():
        key = hashlib.sha256(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()
        if key in by_weight:
            lo, hi = ranges[by_weight.pop(key)]
            old = out.get(x_name, (lo, hi))
            out[x_name] = (min(lo, old[0]), max(hi, old[1]))
    if by_weight:
        raise ConfigError(f"{onnx_path}: no ONNX MatMul found for {len(by_weight)} QAT Linear(s): {sorted(by_weight.values())[:3]}")
    return {x: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for x, (lo, hi) in out.items()}


def _static_cfg(cfg: QATConfig) -> StaticPTQConfig:
    """The static quantization both QAT and its PTQ baseline use (same calibration batches)."""
    return StaticPTQConfig(calibration=cfg.calibration, num_batches=cfg.calibration_batches, batch_size=cfg.calibration_batch_size,
                           per_channel=cfg.per_channel, op_types=("MatMul", "Gather") if cfg.quantize_embeddings else ("MatMul",),
                           linear_only=True, seed=cfg.train.seed)  # fmt: skip


def _int8_onnx(
    model_dir: Path, export_cfg: ExportConfig, inputs, tmp: Path, scfg: StaticPTQConfig, calib: list, tag: str,
    overrides_for: Callable[[Path], dict] | None = None,
) -> Path:  # fmt: skip
    """fp32 ONNX of ``model_dir``, pre-processed, statically quantized in ``QAT_FORM``; returns the int8 path."""
    (tmp / tag).mkdir()
    export_onnx(model_dir, export_cfg, tmp / tag, inputs.probes)
    pre = tmp / tag / "pre.onnx"
    preprocess(tmp / tag / ENGINE_FILES["onnx"], pre)
    out = tmp / tag / "int8.onnx"
    overrides = overrides_for(pre) if overrides_for else None
    quantize_static(pre, out, scfg, QAT_FORM, calib, tmp / tag / "calibration.json", [], overrides)
    return out


def kd_targets(cfg: QATConfig, model: nn.Module, train: Encoded, pad: int, data_dir: Path,
               teacher_logits: str | Path | None) -> torch.Tensor:  # fmt: skip
    """KD targets (n_train, classes): the model's own fp32 logits, or the cached teacher logits."""
    if cfg.kd_source == "teacher":
        if teacher_logits is None:
            raise ConfigError("quantize.qat.kd_source=teacher needs the cached teacher logits (--teacher-logits)")
        return load_teacher_logits(teacher_logits, data_dir, cfg.train.max_length, "quantize.qat.train.max_length")["train"]
    # The model's own predictions: QAT should undo what quantization breaks, and change nothing else.
    return torch.from_numpy(predict_logits(model, train, cfg.train.eval_batch_size, pad))


def finetune(
    model: nn.Module, splits: dict[str, Encoded], cfg: QATConfig, pad: int, targets: torch.Tensor,
    ckpt_dir: str | Path, fingerprint: str, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[list[str], Any]:  # fmt: skip
    """Wrap ``model`` with fake quantization, calibrate its input ranges, fine-tune it with KD (in place).

    Returns the wrapped Linear names and the :class:`slimformer.training.FitResult`.
    """
    t = cfg.train
    linears = wrap(model, cfg)
    size = cfg.calibration_batch_size
    rows = np.random.default_rng(t.seed).permutation(len(splits["train"]))[: cfg.calibration_batches * size]
    calibrate(model, splits["train"], pad, [rows[i : i + size].tolist() for i in range(0, len(rows), size)])
    loss = KDLoss(teacher_logits=targets, alpha=cfg.alpha, temperature=cfg.temperature)
    result = fit(model, splits["train"], splits["val"], t, pad, ckpt_dir, fingerprint, loss_fn=loss, on_epoch=on_epoch, desc="qat")
    return linears, result


def qat(
    model_dir: str | Path,
    data_dir: str | Path,
    cfg: QATConfig,
    export_cfg: ExportConfig,
    out_model_dir: str | Path,
    engine_dir: str | Path,
    ckpt_dir: str | Path,
    teacher_logits: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """QAT-fine-tune the float model in ``model_dir``; write the fp32 QAT model and its int8 ONNX engine.

    Returns metrics: the float model before QAT, PTQ static of that same model (same int8
    form and calibration, no QAT), the QAT model under fake quantization (PyTorch), and the
    QAT int8 engine through ONNX Runtime.
    """
    model_dir, data_dir, out_model_dir, engine_dir = Path(model_dir), Path(data_dir), Path(out_model_dir), Path(engine_dir)
    t0, t = time.perf_counter(), cfg.train
    tokenizer = load_tokenizer(model_dir)
    pad = tokenizer.pad_token_id
    model = load_classifier(model_dir)
    splits = {s: encode(tokenizer, load_split(data_dir / f"{s}.jsonl"), t.max_length) for s in ("train", "val", "test")}
    targets = kd_targets(cfg, model, splits["train"], pad, data_dir, teacher_logits)
    before = {s: evaluate(model, splits[s], t.eval_batch_size, pad) for s in ("val", "test")}
    inputs = gate_inputs(tokenizer, data_dir, export_cfg)
    scfg = _static_cfg(cfg)
    calib = calibration_batches(tokenizer, load_split(data_dir / "train.jsonl"), scfg, t.max_length)
    evals = {s: labelled_batches(tokenizer, load_split(data_dir / f"{s}.jsonl"), t.max_length, t.eval_batch_size)
             for s in ("val", "test")}  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="qat.") as tmp_str:
        tmp = Path(tmp_str)
        ptq_runner = OrtRunner(_int8_onnx(model_dir, export_cfg, inputs, tmp, scfg, calib, "ptq"), t.num_threads)
        ptq_metrics = {s: runner_metrics(ptq_runner, b) for s, b in evals.items()}
        fingerprint = run_fingerprint(t, cfg.to_dict(), sha256_file(model_dir / "model.safetensors"),
                                      sha256_file(data_dir / "train.jsonl"))  # fmt: skip
        linears, result = finetune(model, splits, cfg, pad, targets, ckpt_dir, fingerprint, on_epoch)
        fake_quant = {s: evaluate(model, splits[s], t.eval_batch_size, pad) for s in ("val", "test")}
        ranges = unwrap(model)
        save_model(model, tokenizer, out_model_dir,
                   extra={"qat": {"source_model": str(model_dir), "linears": linears, "input_ranges": ranges,
                                  "per_channel": cfg.per_channel, "quantize_embeddings": cfg.quantize_embeddings}})  # fmt: skip
        qat_path = _int8_onnx(out_model_dir, export_cfg, inputs, tmp, scfg, calib, "qat",
                              overrides_for=lambda pre: range_overrides(pre, model, ranges))  # fmt: skip
        info = {"format": "onnx", "precision": "int8", "opset": export_cfg.opset, "quant_format": QAT_FORM,
                "quantization": {"tool": "onnxruntime.quantization + QAT input ranges", "settings": scfg.to_dict(),
                                 "pinned_ranges": len(ranges)},
                "build_seconds": round(time.perf_counter() - t0, 1), "runtime": runtime_versions("torch", "onnx", "onnxruntime")}  # fmt: skip
        with atomic_dir(engine_dir) as out:
            shutil.copy2(qat_path, out / ENGINE_FILES["onnx"])
            seal_engine(out, info, out_model_dir, VARIANT, export_cfg, inputs)
    int8 = OrtRunner(engine_dir / ENGINE_FILES["onnx"], t.num_threads)
    qat_int8 = {s: runner_metrics(int8, b) for s, b in evals.items()}

    def acc(m: dict[str, dict[str, float]]) -> dict[str, float]:
        return {f"{s}_accuracy": v["accuracy"] for s, v in m.items()}

    return {
        "float_before": acc(before),
        "ptq_static_int8": acc(ptq_metrics),
        "qat_fake_quant": acc(fake_quant),
        "qat_int8": acc(qat_int8) | {"onnx_bytes": (engine_dir / ENGINE_FILES["onnx"]).stat().st_size},
        "qat_vs_ptq_test_points": 100 * (qat_int8["test"]["accuracy"] - ptq_metrics["test"]["accuracy"]),
        "qat_vs_float_test_points": 100 * (qat_int8["test"]["accuracy"] - before["test"]["accuracy"]),
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
