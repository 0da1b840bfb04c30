"""Params sections of the deployment side: quantization (PTQ, QAT), export, TensorRT, benchmark, report."""

from __future__ import annotations

import dataclasses
from typing import Literal

from slimformer.config.base import Section, check

from slimformer.config.model import TrainConfig


QUANTIZABLE_OPS = ("MatMul", "Gather", "Attention", "EmbedLayerNormalization", "Add", "Mul", "Softmax", "Transpose", "Reshape")


def _check_op_types(key: str, ops: tuple[str, ...]) -> None:
    check(len(ops) >= 1, key, "at least one ONNX op type", list(ops))
    bad = [o for o in ops if o not in QUANTIZABLE_OPS]
    check(not bad, key, ", ".join(QUANTIZABLE_OPS), bad)


@dataclasses.dataclass(frozen=True)
class DynamicPTQConfig(Section):
    """``quantize.ptq.dynamic``: int8 weights, activations quantized at run time (ORT MatMulInteger)."""

    per_channel: bool = True  # one scale per output column: keeps accuracy, same speed on CPU
    reduce_range: bool = False  # 7-bit weights: only for CPUs without VNNI that saturate
    op_types: tuple[str, ...] = ("MatMul", "Gather")  # Gather = the embedding tables (most of the bytes)

    def __post_init__(self) -> None:
        _check_op_types("op_types", self.op_types)


@dataclasses.dataclass(frozen=True)
class StaticPTQConfig(Section):
    """``quantize.ptq.static``: int8 weights and activations with ranges calibrated on training batches."""

    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = 99.999  # only for calibration=percentile
    num_batches: int = 16  # calibration batches drawn from the training split
    batch_size: int = 16
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Gather")
    linear_only: bool = True  # quantize only MatMuls with constant weights (not the attention score products)
    seed: int = 0

    def __post_init__(self) -> None:
        check(0 < self.percentile <= 100, "percentile", "a number in (0, 100]", self.percentile)
        check(1 <= self.num_batches <= 10_000, "num_batches", "an integer in [1, 10000]", self.num_batches)
        check(1 <= self.batch_size <= 1024, "batch_size", "an integer in [1, 1024]", self.batch_size)
        _check_op_types("op_types", self.op_types)


@dataclasses.dataclass(frozen=True)
class PTQConfig(Section):
    """``quantize.ptq``: post-training int8 of the fp32 ONNX engine with ONNX Runtime."""

    method: Literal["both", "dynamic", "static"] = "both"  # engines of an unselected method are written as skipped
    max_length: int = 64  # tokenizer truncation, as in training
    max_accuracy_drop: float = 0.005  # val accuracy (fraction; 0.005 = half a point) an int8 model may lose vs fp32 ONNX
    max_excluded_nodes: int = 12  # accuracy fallback: at most this many MatMuls get float activations (weights stay int8)
    exclude_step: int = 2  # MatMuls moved to float activations per fallback round (largest local error first)
    eval_batch_size: int = 64
    num_threads: int = 2
    dynamic: DynamicPTQConfig = DynamicPTQConfig()
    static: StaticPTQConfig = StaticPTQConfig()

    def __post_init__(self) -> None:
        check(8 <= self.max_length <= 512, "max_length", "an integer in [8, 512]", self.max_length)
        check(0 <= self.max_accuracy_drop < 1, "max_accuracy_drop", "a fraction in [0, 1)", self.max_accuracy_drop)
        check(self.max_excluded_nodes >= 0, "max_excluded_nodes", "an integer >= 0", self.max_excluded_nodes)
        check(self.exclude_step >= 1, "exclude_step", "an integer >= 1", self.exclude_step)
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)
        check(self.num_threads >= 1, "num_threads", "an integer >= 1", self.num_threads)


@dataclasses.dataclass(frozen=True)
class QATConfig(Section):
    """``quantize.qat``: fake-quantization fine-tuning with knowledge distillation, then int8 ONNX."""

    kd_source: Literal["float", "teacher"] = "float"  # KD targets: the model's own fp32 logits, or the teacher's
    alpha: float = 0.5  # weight of the KD term; (1 - alpha) weighs cross-entropy on the labels
    temperature: float = 2.0
    observer_steps: int = 100  # steps of EMA range observation before activation ranges freeze
    ema_decay: float = 0.9
    per_channel: bool = True  # weight fake-quant (symmetric int8), as the ONNX weights will be quantized
    quantize_embeddings: bool = True  # fake-quant the embedding tables, as the int8 Gathers will be
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"  # ranges of the tensors QAT did not learn
    calibration_batches: int = 16  # ... over this many training batches (QAT's initial ranges and its PTQ-static baseline)
    calibration_batch_size: int = 16
    train: TrainConfig = TrainConfig(epochs=1, lr=1e-5, warmup_ratio=0.0)

    def __post_init__(self) -> None:
        check(0 <= self.alpha <= 1, "alpha", "a number in [0, 1]", self.alpha)
        check(self.temperature > 0, "temperature", "a number > 0", self.temperature)
        check(self.observer_steps >= 1, "observer_steps", "an integer >= 1", self.observer_steps)
        check(0 < self.ema_decay < 1, "ema_decay", "a number in (0, 1)", self.ema_decay)
        check(self.calibration_batches >= 1, "calibration_batches", "an integer >= 1", self.calibration_batches)
        check(1 <= self.calibration_batch_size <= 1024, "calibration_batch_size", "an integer in [1, 1024]", self.calibration_batch_size)
        check(self.train.nproc == 1, "train.nproc", "1 (QAT runs in one process)", self.train.nproc)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig(Section):
    """``quantize``: post-training (``ptq``) and quantization-aware (``qat``) int8."""

    ptq: PTQConfig = PTQConfig()
    qat: QATConfig = QATConfig()


def _check_shape(key: str, shape: tuple[int, ...]) -> None:
    check(len(shape) == 2 and all(d >= 1 for d in shape), key, "[batch, sequence], both >= 1", list(shape))


@dataclasses.dataclass(frozen=True)
class TensorRTConfig(Section):
    """``export.tensorrt``: the optimization profile (same for input_ids and attention_mask) and build limits."""

    min_shape: tuple[int, ...] = (1, 1)  # [batch, sequence]
    opt_shape: tuple[int, ...] = (8, 64)
    max_shape: tuple[int, ...] = (32, 64)
    workspace_mb: int = 1024
    device: int = 0  # CUDA device index

    def __post_init__(self) -> None:
        for key in ("min_shape", "opt_shape", "max_shape"):
            _check_shape(key, getattr(self, key))
        lo, opt, hi = self.min_shape, self.opt_shape, self.max_shape
        ordered = all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=False))
        check(ordered, "opt_shape", "min_shape <= opt_shape <= max_shape in each dimension", [list(lo), list(opt), list(hi)])
        check(self.workspace_mb >= 16, "workspace_mb", "an integer >= 16", self.workspace_mb)
        check(self.device >= 0, "device", "an integer >= 0", self.device)


@dataclasses.dataclass(frozen=True)
class ExportConfig(Section):
    """``export``: engine formats, and the parity gate every engine must pass."""

    opset: int = 18
    max_length: int = 64  # tokenizer truncation for the parity and agreement batches
    batch_sizes: tuple[int, ...] = (1, 8, 32)  # parity probes: every batch size x every length
    lengths: tuple[int, ...] = (8, 24, 64)
    atol: float = 1e-4  # fp32 engines: max |logit - PyTorch logit|
    atol_fp16: float = 5e-2
    min_agreement: float = 0.9  # int8 engines: argmax agreement with the float source on val (a floor against broken engines)
    agreement_rows: int = 0  # val rows for the agreement check; 0 = all
    num_threads: int = 2
    seed: int = 0
    tensorrt: TensorRTConfig = TensorRTConfig()

    def __post_init__(self) -> None:
        check(17 <= self.opset <= 21, "opset", "an integer in [17, 21]", self.opset)
        check(8 <= self.max_length <= 512, "max_length", "an integer in [8, 512]", self.max_length)
        check(len(self.batch_sizes) >= 1 and all(b >= 1 for b in self.batch_sizes), "batch_sizes", "integers >= 1", list(self.batch_sizes))
        ok = len(self.lengths) >= 1 and all(3 <= n <= self.max_length for n in self.lengths)
        check(ok, "lengths", f"integers in [3, max_length={self.max_length}]", list(self.lengths))
        check(0 < self.atol < 1, "atol", "a number in (0, 1)", self.atol)
        check(0 < self.atol_fp16 < 10, "atol_fp16", "a number in (0, 10)", self.atol_fp16)
        check(0 < self.min_agreement <= 1, "min_agreement", "a fraction in (0, 1]", self.min_agreement)
        check(self.agreement_rows >= 0, "agreement_rows", "0 (all) or a positive integer", self.agreement_rows)
        check(self.num_threads >= 1, "num_threads", "an integer >= 1", self.num_threads)
        check(self.tensorrt.max_shape[1] <= 512, "tensorrt.max_shape", "sequence <= 512", list(self.tensorrt.max_shape))


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig(Section):
    """``benchmark``: every engine measured alike (full-test accuracy, interleaved latency, size, memory)."""

    max_length: int = 64  # tokenizer truncation, as in training
    num_threads: int = 2  # intra-op threads of every runtime (fixed, so runs compare)
    batch1_samples: int = 200  # test sentences timed one at a time, every round
    large_batch: int = 32  # the second batch size timed
    large_batches: int = 16  # batches of large_batch random test sentences, every round
    repeats: int = 3  # each timed sentence and batch runs this many times per variant in total
    rounds: int = 80  # those calls spread over this many interleaved rounds (every variant in each, order rotated)
    warmup: int = 10  # untimed calls per variant before the rounds (large batches: a quarter, at least 1)
    eval_batch_size: int = 64  # accuracy pass over the full test split
    pin_threads: bool = True  # timing thread and ONNX Runtime workers each on their own core (Linux; see pin_plan)
    peak_rss: bool = True  # peak resident memory of each variant, in a fresh child process
    zip_level: int = 6  # DEFLATE level of the zip-compressed size
    onestep: Literal["optimum", "onnxruntime", "none"] = "optimum"  # how the one-step int8 baseline is built
    seed: int = 0  # which test sentences are timed, and the order of each round

    def __post_init__(self) -> None:
        check(8 <= self.max_length <= 512, "max_length", "an integer in [8, 512]", self.max_length)
        check(self.num_threads >= 1, "num_threads", "an integer >= 1", self.num_threads)
        check(1 <= self.batch1_samples <= 100_000, "batch1_samples", "an integer in [1, 100000]", self.batch1_samples)
        check(2 <= self.large_batch <= 4096, "large_batch", "an integer in [2, 4096]", self.large_batch)
        check(self.large_batches >= 1, "large_batches", "an integer >= 1", self.large_batches)
        check(1 <= self.repeats <= 1000, "repeats", "an integer in [1, 1000]", self.repeats)
        check(1 <= self.rounds <= 10_000, "rounds", "an integer in [1, 10000]", self.rounds)
        check(self.warmup >= 0, "warmup", "an integer >= 0", self.warmup)
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)
        check(0 <= self.zip_level <= 9, "zip_level", "an integer in [0, 9]", self.zip_level)


@dataclasses.dataclass(frozen=True)
class SelectConfig(Section):
    """``report.select``: which engine is deployed: the fastest within the accuracy budget."""

    max_accuracy_drop: float = 0.01  # absolute test accuracy (0.01 = 1 point) below the PyTorch teacher
    formats: tuple[str, ...] = ()  # deployable formats (onnx, torchscript, tensorrt); empty = any
    precisions: tuple[str, ...] = ()  # fp32, fp16, int8; empty = any
    include_baselines: bool = False  # may the one-step int8 baseline itself be selected?

    def __post_init__(self) -> None:
        check(0 <= self.max_accuracy_drop < 1, "max_accuracy_drop", "a fraction in [0, 1)", self.max_accuracy_drop)
        bad = [f for f in self.formats if f not in ("onnx", "torchscript", "tensorrt")]
        check(not bad, "formats", "onnx, torchscript, tensorrt (empty = any)", bad)
        bad = [p for p in self.precisions if p not in ("fp32", "fp16", "int8")]
        check(not bad, "precisions", "fp32, fp16, int8 (empty = any)", bad)


@dataclasses.dataclass(frozen=True)
class ReportConfig(Section):
    """``report``: the report, the Pareto plot, the final model's anatomy and the engine selection."""

    max_length: int = 64  # tokenizer truncation of the validation batches (attention entropy)
    entropy_batches: int = 4  # validation batches for per-head attention entropy; 0 = leave it out
    entropy_batch_size: int = 32
    select: SelectConfig = SelectConfig()

    def __post_init__(self) -> None:
        check(8 <= self.max_length <= 512, "max_length", "an integer in [8, 512]", self.max_length)
        check(self.entropy_batches >= 0, "entropy_batches", "0 (none) or a positive integer", self.entropy_batches)
        check(self.entropy_batch_size >= 1, "entropy_batch_size", "an integer >= 1", self.entropy_batch_size)
