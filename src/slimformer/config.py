"""Typed, validated views of ``params.yaml``.

Each params section loads into one frozen dataclass. Loading checks every key
before any work starts: an unknown key, a wrong type or an out-of-range value
raises :class:`ConfigError` naming the key (``teacher.epochs``) and what is
allowed. Configs round-trip through plain dicts (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from slimformer.errors import ConfigError

C = TypeVar("C", bound="Section")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of " + _type_name(typing.get_args(tp)[0])
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


# Integer fields bounded wherever they appear, by field name: a seed must be one numpy and
# torch accept (numpy refuses -1 and 2**32), and a thread count beyond any machine's cores
# is a typo that would otherwise reach torch.set_num_threads.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**32 - 1),
    "num_threads": (1, 1024),
}


def _check_int_bounds(key: str, value: int) -> int:
    bounds = INT_BOUNDS.get(key.rsplit(".", 1)[-1])
    if bounds is not None:
        lo, hi = bounds
        check(lo <= value <= hi, key, f"an integer in [{lo}, {hi}]", value)
    return value


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
    elif origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    elif tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return tp.from_dict(value, prefix=key)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_int_bounds(key, value)
    elif tp is float:
        # YAML reads "5e-5" as a string; accept it, as a user would expect.
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            check(math.isfinite(number), key, "a finite number (not .inf or .nan)", value)
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error, not a user error
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of every params section: strict dict loading and range checks."""

    @classmethod
    def from_dict(cls: type[C], raw: dict[str, Any] | None, prefix: str = "") -> C:
        raw = {} if raw is None else raw
        name = prefix or cls.__name__
        if not isinstance(raw, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {raw!r}")
        keys = [k for k in raw if not isinstance(k, str)]
        if keys:
            raise ConfigError(f"{_join(prefix, repr(keys[0]))}: keys must be strings, got {type(keys[0]).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            raise ConfigError(
                f"{_join(prefix, key)}: unknown key{hint}; allowed keys: {', '.join(sorted(fields))}"
            )
        values = {k: _coerce(_join(prefix, k), v, hints[k]) for k, v in raw.items()}
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{_join(prefix, str(e))}") from None
        except TypeError as e:  # missing required field
            raise ConfigError(f"{name}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, Section):
                return v.to_dict()
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _is_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def check(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise ``ConfigError('<key>: got <value>, allowed: <allowed>')`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, allowed: {allowed}")


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """``data``: where the corpus comes from and how it is split."""

    source: str = "rotten_tomatoes"  # the packaged corpus, or a path to a .csv/.jsonl file
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"  # of a user file (a UTF-8 byte-order mark is dropped); latin-1, cp1252, utf-16, ...
    labels: tuple[str, ...] = ("rotten", "fresh")  # index = class id
    split: tuple[float, ...] = (0.8, 0.1, 0.1)  # train, val, test
    min_rows_per_class: int = 10
    max_rows: int = 0  # 0 = all; >0 keeps a stratified sample (for quick trials and tests)
    seed: int = 0

    def __post_init__(self) -> None:
        check(len(self.split) == 3, "split", "three fractions [train, val, test]", list(self.split))
        check(all(0 < f < 1 for f in self.split), "split", "fractions strictly between 0 and 1", list(self.split))
        check(abs(sum(self.split) - 1) < 1e-6, "split", "fractions that sum to 1", list(self.split))
        check(len(self.labels) >= 2, "labels", "at least two label names", list(self.labels))
        check(len(set(self.labels)) == len(self.labels), "labels", "distinct label names", list(self.labels))
        check(self.min_rows_per_class >= 3, "min_rows_per_class", "an integer >= 3", self.min_rows_per_class)
        check(self.max_rows >= 0, "max_rows", "0 (all rows) or a positive integer", self.max_rows)
        check(_is_codec(self.encoding), "encoding", "a Python codec name (utf-8, latin-1, cp1252, utf-16, ...)", self.encoding)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation settings shared by every training stage."""

    epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 64
    group_by_length: bool = True  # batches of similar length: far less padding
    num_threads: int = 2
    nproc: int = 1  # >1 launches DistributedDataParallel workers through torchrun
    seed: int = 0
    min_epochs: ClassVar[int] = 1

    def __post_init__(self) -> None:
        low = self.min_epochs
        check(self.epochs >= low, "epochs", f"an integer >= {low}" + (" (0: no training)" if low == 0 else ""), self.epochs)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)
        check(0 < self.lr < 1, "lr", "a number in (0, 1)", self.lr)
        check(0 <= self.weight_decay < 1, "weight_decay", "a number in [0, 1)", self.weight_decay)
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "a number in [0, 1)", self.warmup_ratio)
        check(self.max_grad_norm > 0, "max_grad_norm", "a number > 0", self.max_grad_norm)
        check(8 <= self.max_length <= 512, "max_length", "an integer in [8, 512]", self.max_length)
        check(self.num_threads >= 1, "num_threads", "an integer >= 1", self.num_threads)
        check(1 <= self.nproc <= 64, "nproc", "an integer in [1, 64]", self.nproc)


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig(TrainConfig):
    """``teacher.train``: as :class:`TrainConfig`, and ``epochs: 0`` keeps the checkpoint's own head untrained."""

    min_epochs: ClassVar[int] = 0


@dataclasses.dataclass(frozen=True)
class TeacherConfig(Section):
    """``teacher``: which pretrained checkpoint to fine-tune, and how.

    ``train.epochs: 0`` uses an already fine-tuned checkpoint as it is: its own
    classification head, matched to ``data.labels`` by name.
    """

    checkpoint: str = "all-MiniLM-L6-v2"  # the packaged MiniLM, or a local directory of a supported family
    train: TeacherTrainConfig = TeacherTrainConfig()


# --- compression sections (distill, prune_structured, prune_dynamic) go here ---


def _check_kd(alpha: float, temperature: float) -> None:
    check(0 <= alpha <= 1, "alpha", "a number in [0, 1] (weight of the soft-target term)", alpha)
    check(0 < temperature <= 100, "temperature", "a number in (0, 100]", temperature)


@dataclasses.dataclass(frozen=True)
class AugmentConfig(Section):
    """``distill.augment``: perturbed copies of the training sentences, labelled by the teacher.

    Tang et al. 2019 ("Distilling task-specific knowledge from BERT into simple neural
    networks"): each word of a copy becomes ``[MASK]`` with ``mask_prob``; then, with
    ``ngram_prob``, the copy is cut to a random run of 1..``ngram_max`` words. The student
    learns the teacher's soft labels on them (no hard-label loss: they have no label).
    """

    copies: int = 0  # perturbed copies per training sentence; 0 = off
    mask_prob: float = 0.1
    ngram_prob: float = 0.25
    ngram_max: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check(0 <= self.copies <= 20, "copies", "an integer in [0, 20]", self.copies)
        check(0 <= self.mask_prob < 1, "mask_prob", "a number in [0, 1)", self.mask_prob)
        check(0 <= self.ngram_prob <= 1, "ngram_prob", "a number in [0, 1]", self.ngram_prob)
        check(self.ngram_max >= 1, "ngram_max", "an integer >= 1", self.ngram_max)
        check(
            self.copies == 0 or self.mask_prob > 0 or self.ngram_prob > 0, "copies",
            "0 unless mask_prob or ngram_prob is > 0 (unperturbed copies add nothing)", self.copies,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DistillConfig(Section):
    """``distill``: a compound-scaled student trained on the cached teacher logits (Hinton KD)."""

    depth_multiplier: float = 0.5  # student layers = round(teacher layers x this), at least 1
    width_multiplier: float = 1.0  # heads and FFN width scale by this; below 1 the student starts random
    ffn_multiplier: float = 0.52  # FFN neurons kept per layer; copied layers keep the teacher's strongest
    init_layers: tuple[int, ...] = (0, 3, 5)  # teacher layer copied into each student layer; [] = evenly spaced
    alpha: float = 0.7  # weight of the soft-target KL term; (1 - alpha) weighs label cross-entropy
    temperature: float = 2.0
    hidden_weight: float = 0.0  # > 0 adds hidden-state MSE to the mapped teacher layers (teacher runs live)
    trim_vocab: bool = True  # keep only token ids seen in the training corpus (plus special tokens)
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig(epochs=2, lr=5e-4, warmup_ratio=0.06)

    def __post_init__(self) -> None:
        check(0 < self.depth_multiplier <= 1, "depth_multiplier", "a number in (0, 1]", self.depth_multiplier)
        check(0 < self.width_multiplier <= 1, "width_multiplier", "a number in (0, 1]", self.width_multiplier)
        check(0 < self.ffn_multiplier <= 1, "ffn_multiplier", "a number in (0, 1]", self.ffn_multiplier)
        layers = list(self.init_layers)
        check(all(i >= 0 for i in layers), "init_layers", "teacher layer indices >= 0", layers)
        check(len(set(layers)) == len(layers), "init_layers", "distinct layer indices", layers)
        _check_kd(self.alpha, self.temperature)
        check(self.hidden_weight >= 0, "hidden_weight", "a number >= 0", self.hidden_weight)
        check(
            self.hidden_weight == 0 or self.width_multiplier == 1, "hidden_weight",
            "0 unless width_multiplier is 1 (hidden states of different widths cannot be compared)",
            self.hidden_weight,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PruneStructuredConfig(Section):
    """``prune_structured``: remove the least important heads and FFN neurons, then recover with KD."""

    head_importance: Literal["gradient", "entropy"] = "gradient"  # Michel et al. 2019, or attention entropy
    neuron_importance: Literal["taylor", "magnitude"] = "taylor"  # |activation x gradient|, or weight norms
    heads_fraction: float = 0.30  # of all heads, removed (ranked across layers unless heads_scope: per_layer)
    heads_scope: Literal["global", "per_layer"] = "global"
    neurons_fraction: float = 0.30  # of each layer's FFN neurons (the same count per layer: HF stores one size)
    importance_batches: int = 0  # validation batches used to score heads and neurons; 0 = all
    alpha: float = 0.7
    temperature: float = 2.0
    latency_rounds: int = 30  # timed forward passes of the same test batch, before and after
    train: TrainConfig = TrainConfig(epochs=1, lr=5e-5, warmup_ratio=0.06)

    def __post_init__(self) -> None:
        check(0 <= self.heads_fraction < 1, "heads_fraction", "a number in [0, 1)", self.heads_fraction)
        check(0 <= self.neurons_fraction < 1, "neurons_fraction", "a number in [0, 1)", self.neurons_fraction)
        n = self.importance_batches
        check(n >= 0, "importance_batches", "0 (all) or a positive integer", n)
        _check_kd(self.alpha, self.temperature)
        check(self.latency_rounds >= 1, "latency_rounds", "an integer >= 1", self.latency_rounds)


@dataclasses.dataclass(frozen=True)
class PruneDynamicConfig(Section):
    """``prune_dynamic``: gradual magnitude pruning (Zhu & Gupta 2017) during a KD fine-tune."""

    initial_sparsity: float = 0.0
    final_sparsity: float = 0.5  # of the prunable weights (encoder linear layers, plus what is opted in)
    begin_step: int = 0
    end_step: int = 0  # last sparsity update; 0 = 3/4 of the first epoch (leaves steps to recover)
    frequency: int = 10  # optimizer steps between mask updates
    ranking: Literal["global", "per_layer"] = "global"  # one magnitude threshold, or one per weight matrix
    prune_embeddings: bool = False
    prune_classifier: bool = False  # pooler and classifier
    alpha: float = 0.7
    temperature: float = 2.0
    train: TrainConfig = TrainConfig(epochs=1, lr=5e-5, warmup_ratio=0.06)

    def __post_init__(self) -> None:
        check(0 <= self.initial_sparsity < 1, "initial_sparsity", "a number in [0, 1)", self.initial_sparsity)
        check(0 < self.final_sparsity < 1, "final_sparsity", "a number in (0, 1)", self.final_sparsity)
        check(
            self.initial_sparsity <= self.final_sparsity, "initial_sparsity",
            f"a number <= final_sparsity ({self.final_sparsity})", self.initial_sparsity,
        )  # fmt: skip
        check(self.begin_step >= 0, "begin_step", "an integer >= 0", self.begin_step)
        check(
            self.end_step == 0 or self.end_step > self.begin_step, "end_step",
            f"0 (automatic) or an integer > begin_step ({self.begin_step})", self.end_step,
        )  # fmt: skip
        check(self.frequency >= 1, "frequency", "an integer >= 1", self.frequency)
        _check_kd(self.alpha, self.temperature)


# --- quantization and export sections (quantize_ptq, quantize_qat, export) go here ---

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


# --- benchmark and report sections (benchmark, report/select) go here ---


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


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "teacher": TeacherConfig,
    "distill": DistillConfig,
    "prune_structured": PruneStructuredConfig,
    "prune_dynamic": PruneDynamicConfig,
    "quantize": QuantizeConfig,
    "export": ExportConfig,
    "benchmark": BenchmarkConfig,
    "report": ReportConfig,
}


def _check_keys(node: yaml.Node, path: Path, prefix: str = "") -> None:
    """Refuse duplicate and non-string keys at any depth of a composed YAML document.

    PyYAML keeps the last of two equal keys without a word (DVC's ruamel parser refuses
    them), so a stage run by hand would train with ``epochs: 50`` where ``dvc repro`` stops.
    """
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_keys(item, path, f"{prefix}[{i}]")
        return
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": an override is what a merge is for
            continue
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
            shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else key_node.tag
            raise ConfigError(f"{path}: line {line}: {_join(prefix, str(shown))}: keys must be strings")
        key = _join(prefix, key_node.value)
        if key_node.value in seen:
            raise ConfigError(
                f"{path}: {key}: duplicate key, on line {seen[key_node.value]} and line {line}; keep one"
            )
        seen[key_node.value] = line
        _check_keys(value_node, path, key)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read ``params.yaml`` as a dict; a missing or malformed file, or a key written twice, is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_keys(node, path)
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - set(SECTIONS))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), SECTIONS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{unknown[0]}: unknown params section{hint}; allowed: {', '.join(SECTIONS)}")
    return raw


def load_section(name: str, path: str | Path = "params.yaml") -> Section:
    """Load and validate one section of ``params.yaml`` (the whole file is checked for unknown sections)."""
    raw = load_params(path)
    return SECTIONS[name].from_dict(raw.get(name), prefix=name)


def load_all(path: str | Path = "params.yaml") -> dict[str, Section]:
    """Validate every section of ``params.yaml`` at once; the first problem is a ConfigError."""
    raw = load_params(path)
    return {name: cls.from_dict(raw.get(name), prefix=name) for name, cls in SECTIONS.items()}
